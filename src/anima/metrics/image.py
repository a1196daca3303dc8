"""Full-reference image metrics of a generated video against its ground truth: PSNR and SSIM.

- **PSNR** (peak signal-to-noise ratio), ``10 log10(data_range^2 / MSE)``, with the MSE pooled
  over every frame, channel and pixel of the video (optionally only under a mask), as reported
  per video by I2V3D (Table 1) and the video-generation literature.
- **SSIM** (structural similarity), Wang, Bovik, Sheikh and Simoncelli, "Image quality
  assessment: from error visibility to structural similarity", IEEE TIP 13(4), 2004: an 11x11
  Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample) statistics, the
  SSIM map averaged over the pixels whose window lies inside the image (no padding). This is the
  paper's definition and what scikit-image's ``structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1.0)`` computes; it is written in torch here
  (a separable conv2d, vectorised over frames) because scikit-image is not a runtime dependency.
  Computed on luma (ITU-R BT.601 Y', as Wang et al. evaluate grey-scale images) or as the mean
  over the RGB channels; the video's SSIM is the mean of its per-frame SSIMs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() != 4:
        raise ValueError(f"expected a video (F, C, H, W), got shape {tuple(a.shape)}")


def psnr(
    a: torch.Tensor,
    b: torch.Tensor,
    mask: torch.Tensor | None = None,
    data_range: float = 1.0,
    max_db: float | None = None,
) -> float:
    """PSNR in dB of video ``a`` against ``b`` (both (F, C, H, W)), MSE pooled over the video.

    ``mask`` ((F, H, W), (H, W) or (F, 1, H, W), bool or 0/1) restricts the MSE to the pixels it
    selects, all channels counted. Identical videos (MSE 0) give ``math.inf`` unless ``max_db``
    caps the value; an empty mask gives ``nan``.
    """
    _check_pair(a, b)
    sq = (a.double() - b.double()).square()
    if mask is None:
        mse = float(sq.mean())
    else:
        m = mask.to(torch.float64)
        if m.dim() == 2:
            m = m[None, None]
        elif m.dim() == 3:
            m = m[:, None]
        m = m.expand_as(sq)
        total = float(m.sum())
        if total == 0:
            return math.nan
        mse = float((sq * m).sum()) / total
    value = math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)
    return min(value, max_db) if max_db is not None else value


def _gaussian_kernel(window: int, sigma: float) -> torch.Tensor:
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _to_channels(video: torch.Tensor, channels: Literal["luma", "rgb"]) -> torch.Tensor:
    video = video.double()
    if channels == "luma":
        if video.shape[1] != 3:
            raise ValueError("luma SSIM needs RGB frames (F, 3, H, W)")
        weights = torch.tensor(_LUMA, dtype=torch.float64).view(1, 3, 1, 1)
        return (video * weights).sum(dim=1, keepdim=True)
    if channels == "rgb":
        return video
    raise ValueError(f"channels must be 'luma' or 'rgb', got {channels!r}")


def ssim_per_frame(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float = 1.0,
    channels: Literal["luma", "rgb"] = "luma",
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> torch.Tensor:
    """Per-frame mean SSIM (F,) of video ``a`` against ``b`` (Wang et al. 2004; see module doc)."""
    _check_pair(a, b)
    if min(a.shape[-2:]) < window:
        raise ValueError(f"frames {tuple(a.shape[-2:])} are smaller than the SSIM window {window}")
    x = _to_channels(a, channels)
    y = _to_channels(b, channels)
    frames, chans = x.shape[:2]
    g = _gaussian_kernel(window, sigma)
    # All five local statistics of every channel of every frame in one separable pass each way.
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1).reshape(-1, 1, *x.shape[-2:])
    stack = F.conv2d(stack, g.view(1, 1, 1, -1))
    stack = F.conv2d(stack, g.view(1, 1, -1, 1))
    mu_x, mu_y, e_xx, e_yy, e_xy = stack.reshape(frames, 5, chans, *stack.shape[-2:]).unbind(1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (num / den).mean(dim=(1, 2, 3)).float()


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float = 1.0,
    channels: Literal["luma", "rgb"] = "luma",
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> float:
    """Mean SSIM of video ``a`` against ``b`` over frames (1.0 for identical videos)."""
    return float(ssim_per_frame(a, b, data_range, channels, window, sigma).mean())
