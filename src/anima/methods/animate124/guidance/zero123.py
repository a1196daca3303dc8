"""Zero-1-to-3 XL SDS: the 3D-view prior conditioned on the reference image and relative pose.

(Animate124 §3.2, Eq. 3's 3D term with lambda_3D = 40; §3.3, Eq. 7 on frame 0; REFERENCE
"Animate124": CFG 5, t in [200, 600], renders at 256, pose [d_polar rad, sin(-d_az),
cos(d_az), d_r], loss weight 40 x angle / 180 between the current and the reference view.)

Zero-1-to-3 in diffusers layout (`anima.methods.animate124.loading`): an 8-input-channel
`UNet2DConditionModel` reading [noisy latent, reference latent] (the reference latent is the
VAE posterior's mode, unscaled, as Zero-1-to-3 was trained), a CLIP image encoder whose image
embedding, concatenated with the pose vector, goes through ``cc_projection``
(Linear(768 + 4 -> 768)) to the UNet's one cross-attention token. The unconditional branch of
classifier-free guidance has both the projected token and the reference latent zeroed, as
Zero-1-to-3 was trained to drop them.

Cameras are spherical, in degrees: polar from the up axis (90 is the horizon, the reference
view's), azimuth around it (the reference view's is 0), and radius. The geodesic angle between
two views' directions weighs the loss: the release's ``angle_between`` on the unit sphere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from anima.methods.animate124.guidance.sds import (
    DEFAULT_SCHEDULE,
    ScoreDistillation,
    VaeEncoder,
    alphas_cumprod_from_config,
    draw_noise,
    draw_timesteps,
    resize,
    score_distillation,
    sds_loss,
)

#: The reference view of the release: on the horizon, azimuth 0, radius 1.8.
REFERENCE_POLAR = 90.0
REFERENCE_AZIMUTH = 0.0
REFERENCE_RADIUS = 1.8
#: CLIP's image preprocessing (ViT-L/14: 224 px, its mean and std).
CLIP_PREPROCESS: dict[str, Any] = {
    "size": 224,
    "mean": (0.48145466, 0.4578275, 0.40821073),
    "std": (0.26862954, 0.26130258, 0.27577711),
}


def _as_tensor(value: Tensor | float, like: Tensor | None = None) -> Tensor:
    if isinstance(value, Tensor):
        return value.float()
    device = like.device if like is not None else None
    return torch.tensor(float(value), device=device)


def wrap_degrees(angle: Tensor) -> Tensor:
    """An angle in degrees brought into [-180, 180)."""
    return torch.remainder(angle + 180.0, 360.0) - 180.0


def zero123_pose(
    polar: Tensor | float,
    azimuth: Tensor | float,
    radius: Tensor | float,
    reference_polar: Tensor | float = REFERENCE_POLAR,
    reference_azimuth: Tensor | float = REFERENCE_AZIMUTH,
    reference_radius: Tensor | float = REFERENCE_RADIUS,
) -> Tensor:
    """Zero-1-to-3's relative pose (..., 4) of a view against the reference view, exactly as
    the release computes it: [d_polar in radians, sin(-d_az), cos(d_az), d_radius], with
    d = current - reference, angles in degrees (d_az wrapped to [-180, 180))."""
    polar = _as_tensor(polar)
    azimuth = _as_tensor(azimuth, polar)
    radius = _as_tensor(radius, polar)
    d_polar = torch.deg2rad(polar - _as_tensor(reference_polar, polar))
    d_azimuth = torch.deg2rad(wrap_degrees(azimuth - _as_tensor(reference_azimuth, polar)))
    d_radius = radius - _as_tensor(reference_radius, polar)
    d_polar, d_azimuth, d_radius = torch.broadcast_tensors(d_polar, d_azimuth, d_radius)
    return torch.stack([d_polar, torch.sin(-d_azimuth), torch.cos(d_azimuth), d_radius], dim=-1)


def view_direction(polar: Tensor, azimuth: Tensor) -> Tensor:
    """Unit vectors (..., 3) of spherical directions in degrees (polar from the up axis)."""
    theta, phi = torch.deg2rad(polar), torch.deg2rad(azimuth)
    return torch.stack(
        [torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta)],
        dim=-1,
    )


def view_angle(
    polar: Tensor | float,
    azimuth: Tensor | float,
    reference_polar: Tensor | float = REFERENCE_POLAR,
    reference_azimuth: Tensor | float = REFERENCE_AZIMUTH,
) -> Tensor:
    """The angle in degrees, in [0, 180], between a view's direction and the reference view's."""
    polar = _as_tensor(polar)
    azimuth = _as_tensor(azimuth, polar)
    current = view_direction(*torch.broadcast_tensors(polar, azimuth))
    reference = view_direction(
        _as_tensor(reference_polar, polar), _as_tensor(reference_azimuth, polar)
    )
    cosine = (current * reference).sum(dim=-1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosine))


@dataclass
class Zero123Reference:
    """The reference view Zero-1-to-3 is conditioned on: its CLIP image embedding (1, D), its
    VAE latent (1, 4, h, w; unscaled posterior mode) and its camera."""

    embedding: Tensor
    latents: Tensor
    polar: float = REFERENCE_POLAR
    azimuth: float = REFERENCE_AZIMUTH
    radius: float = REFERENCE_RADIUS


@dataclass
class Zero123Condition:
    """What `Zero123Epsilon` reads per sample: CLIP image embeddings (B, D), relative poses
    (B, 4) and reference latents (B, 4, h, w). ``null`` is classifier-free guidance's
    unconditional branch (projected token and reference latent zero)."""

    embedding: Tensor
    pose: Tensor
    latents: Tensor
    null: bool = False


class Zero123Epsilon:
    """`EpsilonPredictor` of Zero-1-to-3 in diffusers layout: ``cc_projection([embedding,
    pose])`` is the UNet's cross-attention token, the reference latent is concatenated to the
    noisy latent on channels (8 input channels)."""

    def __init__(self, unet: Any, cc_projection: Any) -> None:
        self.unet = unet
        self.cc_projection = cc_projection

    def __call__(
        self, noisy_latents: Tensor, timesteps: Tensor, condition: Zero123Condition
    ) -> Tensor:
        dtype = self.unet.dtype
        joint = torch.cat([condition.embedding, condition.pose.to(condition.embedding)], dim=-1)
        projection_dtype = next(self.cc_projection.parameters()).dtype
        token = self.cc_projection(joint.to(projection_dtype)[:, None, :])
        concat = condition.latents
        if condition.null:
            token, concat = torch.zeros_like(token), torch.zeros_like(concat)
        sample = torch.cat([noisy_latents.to(dtype), concat.to(dtype)], dim=1)
        out = self.unet(sample, timesteps, encoder_hidden_states=token.to(dtype))
        return out.sample.float()


def encode_reference(
    components: Mapping[str, Any],
    image: Tensor,
    polar: float = REFERENCE_POLAR,
    azimuth: float = REFERENCE_AZIMUTH,
    radius: float = REFERENCE_RADIUS,
    size: int = 256,
) -> Zero123Reference:
    """The `Zero123Reference` of ``image`` (3, H, W) or (1, 3, H, W) in [0, 1] (the object on
    white, square) with Zero-1-to-3 components (``image_encoder``, ``vae``, optional
    ``clip_preprocess``: `loading`): the CLIP embedding of the image at CLIP's resolution and
    the unscaled VAE mode at ``size``."""
    image = image[None] if image.dim() == 3 else image
    encoder = components["image_encoder"]
    preprocess = {**CLIP_PREPROCESS, **components.get("clip_preprocess", {})}
    with torch.no_grad():
        pixels = clip_normalise(image, preprocess["size"], preprocess["mean"], preprocess["std"])
        embedding = encoder(pixel_values=pixels.to(encoder.device, encoder.dtype)).image_embeds
        latents = VaeEncoder(components["vae"], scaled=False)(
            resize(image, size).to(components["vae"].device)
        )
    return Zero123Reference(embedding.float(), latents, polar, azimuth, radius)


def clip_normalise(
    images: Tensor,
    size: int = 224,
    mean: tuple[float, ...] = CLIP_PREPROCESS["mean"],
    std: tuple[float, ...] = CLIP_PREPROCESS["std"],
) -> Tensor:
    """Images (N, 3, H, W) in [0, 1] as a CLIP vision tower reads them: bicubically resized to
    ``size`` (for a square image the processor's resize and centre crop are one resize) and
    normalised with ``mean`` and ``std``."""
    resized = F.interpolate(
        images.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (resized - mean_t) / std_t


@dataclass(frozen=True, kw_only=True)
class Zero123Options:
    """Zero-1-to-3 XL SDS (README, "Animate124"; Animate124 §3.2, lambda_3D = 40)."""

    guidance_scale: float = 5.0
    t_range: tuple[int, int] = (200, 600)
    size: int = 256
    grad_clip: float | None = None  # the dynamic stages clip at 1
    weight: float = 40.0
    #: Scale each sample's loss by angle / 180 (its view against the reference view).
    angle_weighting: bool = True


class Zero123SDS(ScoreDistillation):
    """SDS from Zero-1-to-3 XL (Animate124 Eq. 3's 3D term, Eq. 7).

    ``guidance(images, polar, azimuth, radius, reference)`` with renders (N, 3, H, W) in
    [0, 1] and each render's camera (numbers or (N,) tensors, degrees) returns
    ``{"sds_zero123": loss}``, each sample weighted by ``weight`` x angle / 180."""

    name = "sds_zero123"
    options_class = Zero123Options

    @classmethod
    def from_components(
        cls, components: Mapping[str, Any], options: Zero123Options | None = None
    ) -> Zero123SDS:
        """From Zero-1-to-3 components (``unet``, ``cc_projection``, ``vae``,
        ``scheduler_config``: `loading`)."""
        return cls(
            Zero123Epsilon(components["unet"], components["cc_projection"]),
            VaeEncoder(components["vae"]),
            alphas_cumprod_from_config(components.get("scheduler_config", DEFAULT_SCHEDULE)),
            options,
        )

    def weights(self, polar: Tensor, azimuth: Tensor, reference: Zero123Reference) -> Tensor:
        """Each sample's loss weight: ``weight`` x angle / 180 (or ``weight``)."""
        if not self.options.angle_weighting:
            return torch.full_like(polar, self.options.weight)
        angle = view_angle(polar, azimuth, reference.polar, reference.azimuth)
        return self.options.weight * angle / 180.0

    def __call__(
        self,
        images: Tensor,
        polar: Tensor | float,
        azimuth: Tensor | float,
        radius: Tensor | float,
        reference: Zero123Reference,
        *,
        generator: torch.Generator | None = None,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The loss for renders ``images`` (N, 3, H, W) seen from (polar, azimuth, radius)."""
        latents = self.encoder(resize(images, self.options.size))
        return self.from_latents(
            latents,
            polar,
            azimuth,
            radius,
            reference,
            generator=generator,
            timesteps=timesteps,
            noise=noise,
        )

    def from_latents(
        self,
        latents: Tensor,
        polar: Tensor | float,
        azimuth: Tensor | float,
        radius: Tensor | float,
        reference: Zero123Reference,
        *,
        generator: torch.Generator | None = None,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The loss on latents (N, 4, h, w) directly."""
        options = self.options
        batch, device = latents.shape[0], latents.device
        polar, azimuth, radius = (
            torch.broadcast_to(_as_tensor(value).to(device), (batch,))
            for value in (polar, azimuth, radius)
        )
        if timesteps is None:
            timesteps = draw_timesteps(options.t_range, batch, generator)
        if noise is None:
            noise = draw_noise(latents.shape, generator, device)
        pose = zero123_pose(
            polar, azimuth, radius, reference.polar, reference.azimuth, reference.radius
        )
        condition = Zero123Condition(
            reference.embedding.to(device).expand(batch, -1),
            pose,
            reference.latents.to(device).expand(batch, -1, -1, -1),
        )
        step = score_distillation(
            latents,
            self.predictor,
            condition,
            replace(condition, null=True),
            self.alphas_cumprod,
            options.guidance_scale,
            timesteps,
            noise,
            options.grad_clip,
        )
        weights = self.weights(polar, azimuth, reference)
        return {self.name: sds_loss(latents, step.gradient, weights)}
