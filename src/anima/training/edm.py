"""The EDM training objective of Stable Video Diffusion models, shared by the trainers of SVD
networks (LeviTor's ControlNet, the toy SVD base).

SVD is an EDM model (Karras et al., "Elucidating the Design Space of Diffusion-Based Generative
Models", NeurIPS 2022) with the v-prediction preconditioning diffusers' `EulerDiscreteScheduler`
implements for it (``prediction_type="v_prediction"``, ``timestep_type="continuous"``); the
terms below are the scheduler's, with EDM's ``sigma_data = 1`` (EDM Table 1):

- noise levels ``sigma = exp(P_mean + P_std * n)``, ``n ~ N(0, 1)`` (EDM's log-normal training
  distribution);
- the network sees ``c_in * x`` with ``c_in = 1 / sqrt(sigma^2 + 1)`` and the timestep
  ``c_noise = 0.25 ln sigma``;
- its output ``F`` is a v-prediction; the denoised estimate is
  ``D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * F``.

`epsilon_loss` is LeviTor's Eq. 6 (LeviTor §3.2) in this parameterisation, optionally with
EDM's ``lambda(sigma)`` weighting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

#: How the epsilon loss's per-sample terms are weighted over sigma (`epsilon_loss`).
LossWeighting = Literal["epsilon", "edm"]


def edm_input_scale(sigma: Tensor) -> Tensor:
    """``c_in = 1 / sqrt(sigma^2 + 1)`` (the scheduler's ``scale_model_input``)."""
    return 1.0 / torch.sqrt(sigma**2 + 1.0)


def edm_timestep(sigma: Tensor) -> Tensor:
    """``c_noise = 0.25 ln sigma`` (the scheduler's continuous timesteps)."""
    return 0.25 * torch.log(sigma)


def v_prediction_denoised(sample: Tensor, model_output: Tensor, sigma: Tensor) -> Tensor:
    """``D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * F`` (the scheduler's x0)."""
    return sample / (sigma**2 + 1.0) - sigma / torch.sqrt(sigma**2 + 1.0) * model_output


def epsilon_loss(
    sample: Tensor,
    noise: Tensor,
    model_output: Tensor,
    sigma: Tensor,
    weighting: LossWeighting = "epsilon",
    pixel_weight: Tensor | None = None,
) -> Tensor:
    """LeviTor's Eq. 6 (§3.2): ``mean((eps - (x - D) / sigma)^2)`` with D from the
    v-prediction ``F``.

    ``weighting="edm"`` multiplies each sample's term by ``sigma^2 + 1``: EDM's
    ``lambda(sigma) ||D - z0||^2`` (with ``sigma_data = 1``), i.e. weight 1 on the v-error. The
    plain epsilon loss weights the v-error by ``1 / (sigma^2 + 1)``, so the high noise levels,
    where the layout and hence the motion is decided, barely teach anything.
    ``pixel_weight`` (broadcast against the latents) scales each latent pixel's term."""
    eps_hat = (sample - v_prediction_denoised(sample, model_output, sigma)) / sigma
    squared = (noise - eps_hat) ** 2
    if weighting == "edm":
        squared = squared * (sigma**2 + 1.0)
    if pixel_weight is not None:
        squared = squared * pixel_weight
    return torch.mean(squared)


@dataclass
class StepNoise:
    """The random draws of one loss evaluation besides the data.

    Attributes:
        sigma: (B,) EDM noise levels.
        noise: (B, F, C, h, w) the eps of the epsilon loss.
        latent_noise: (B, F, C, h, w) standard normal draws that sample the VAE posterior.
        aug_noise: (B, 3, H, W) noise augmentation of the conditioning frame (before scaling by
            ``noise_aug_strength``).
    """

    sigma: Tensor
    noise: Tensor
    latent_noise: Tensor
    aug_noise: Tensor

    @classmethod
    def draw(
        cls,
        generator: torch.Generator,
        batch: int,
        frames: int,
        latent_channels: int,
        size: tuple[int, int],
        p_mean: float,
        p_std: float,
        vae_scale: int = 8,
    ) -> StepNoise:
        """All draws of a batch from ``generator``, in a fixed order."""
        h, w = size[0] // vae_scale, size[1] // vae_scale
        sigma = (p_mean + p_std * torch.randn(batch, generator=generator)).exp()
        shape = (batch, frames, latent_channels, h, w)
        noise = torch.randn(shape, generator=generator)
        latent_noise = torch.randn(shape, generator=generator)
        aug_noise = torch.randn((batch, 3, *size), generator=generator)
        return cls(sigma, noise, latent_noise, aug_noise)


@torch.no_grad()
def encode_latents(vae: Any, frames: Tensor, latent_noise: Tensor | None, chunk: int = 8) -> Tensor:
    """``z0``: (B, F, 3, H, W) frames in [0, 1] -> (B, F, C, h, w) latents times the scaling
    factor; the posterior is sampled with ``latent_noise`` (its mean when None)."""
    batch, frames_count = frames.shape[:2]
    flat = frames.flatten(0, 1).to(device=vae.device, dtype=vae.dtype) * 2.0 - 1.0
    latents = []
    for i in range(0, flat.shape[0], chunk):
        dist = vae.encode(flat[i : i + chunk]).latent_dist
        if latent_noise is None:
            latents.append(dist.mean)
        else:
            eps = latent_noise.flatten(0, 1)[i : i + chunk].to(dist.mean.device, dist.mean.dtype)
            latents.append(dist.mean + dist.std * eps)
    z0 = torch.cat(latents).float() * vae.config.scaling_factor
    return z0.reshape(batch, frames_count, *z0.shape[1:])
