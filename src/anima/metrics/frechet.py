"""The Frechet distance between two Gaussians fitted to feature sets: FID, FVD and their variants.

(README, "Evaluation"; docs/architecture.md, "Package layout")

Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium" (NeurIPS 2017), §3 defines FID as the Frechet (2-Wasserstein) distance between
Gaussians fitted to Inception features of two image sets::

    d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

Unterthiner et al., "Towards Accurate Generative Models of Video: A New Metric & Challenges"
(2018), §3 uses the same distance over I3D features of clips (FVD); LeviTor §4 reports FID and
FVD, X-Dyna §4.1 FID, FVD, content-debiased FVD (Ge et al., "On the Content Bias in Frechet
Video Distance", CVPR 2024, §4: VideoMAE features) and DTFVD. Every one of them is
`frechet_from_features` over a different extractor (:mod:`anima.metrics.features`).

The statistics are float64: the mean and the unbiased (``N - 1``) covariance, as pytorch-fid
(``np.cov(rowvar=False)``) and torchmetrics compute them. The matrix square root is scipy's
``sqrtm`` and the handling of its failures follows pytorch-fid: a product with a non-finite
square root (a singular product, fewer samples than feature dimensions) is retried with
``eps * I`` added to both covariances, and an imaginary part, numerical noise of the
square root of a nearly singular product, is dropped when the diagonal's is below ``1e-3``
and is an error otherwise.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch

#: The offset added to both covariances' diagonals when their product has no finite square
#: root (pytorch-fid's default).
SQRTM_EPS = 1e-6
#: The largest imaginary part of the square root's diagonal treated as numerical noise.
IMAGINARY_ATOL = 1e-3


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64 numpy) of ``features`` [N, D].

    At least two samples are needed for a covariance."""
    array = _as_float64(features)
    if array.ndim != 2:
        raise ValueError(f"expected features (N, D), got shape {array.shape}")
    if array.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {array.shape[0]}")
    mu = array.mean(axis=0)
    sigma = np.cov(array, rowvar=False)
    return mu, np.atleast_2d(sigma)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = SQRTM_EPS,
) -> float:
    """The squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al.
    2017, §3), with pytorch-fid's handling of a singular product and of imaginary parts
    (module docstring)."""
    mu1, mu2 = np.atleast_1d(_as_float64(mu1)), np.atleast_1d(_as_float64(mu2))
    sigma1, sigma2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    if mu1.shape != mu2.shape:
        raise ValueError(f"means differ in shape: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"covariances {sigma1.shape} and {sigma2.shape} do not match the means {mu1.shape}"
        )
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > IMAGINARY_ATOL:
            raise ValueError(f"the covariances' square root has an imaginary part {imaginary:g}")
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(value)


def frechet_from_features(
    a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, eps: float = SQRTM_EPS
) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets [N, D] and [M, D]."""
    mu1, sigma1 = feature_statistics(a)
    mu2, sigma2 = feature_statistics(b)
    return frechet_distance(mu1, sigma1, mu2, sigma2, eps=eps)


def _as_float64(value: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """scipy's principal square root; a singular matrix's warning is not the user's concern
    (the caller checks the result and retries with an offset)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return scipy.linalg.sqrtm(matrix)
