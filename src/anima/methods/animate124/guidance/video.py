"""Text-to-video SDS (ModelScope): the motion prior of the dynamic stages.

(Animate124 §3.3, Eq. 6, SDS-T; README, "Animate124": ModelScope text-to-video on 16 frames
at 256, CFG 100, t in [20, 980], gradient values clipped at 1 in the dynamic stages.)

The rendered clip (B, F, 3, H, W) is resized frame by frame, encoded by the VAE frame by frame
(with gradient), and scored as one video latent (B, 4, F, h, w) by a `UNet3DConditionModel`
(`anima.models.modelscope`), whose temporal convolutions and attention make each frame's
gradient depend on the other frames. One t a clip. How many frames are rendered (16 in the
release) is the caller's choice: nothing here fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from anima.methods.animate124.guidance.sds import (
    LatentEncoder,
    ScoreDistillation,
    resize,
)


@dataclass(frozen=True, kw_only=True)
class VideoSDSOptions:
    """ModelScope text-to-video SDS (README, "Animate124"; Animate124 §3.3)."""

    guidance_scale: float = 100.0
    t_range: tuple[int, int] = (20, 980)
    size: int = 256
    grad_clip: float | None = 1.0
    weight: float = 1.0


def encode_video(encoder: LatentEncoder, video: Tensor, size: int) -> Tensor:
    """A clip (B, F, 3, H, W) in [0, 1] to the video latent (B, C, F, h, w) a
    `UNet3DConditionModel` reads, frames resized to ``size`` and encoded one by one."""
    batch, frames = video.shape[:2]
    latents = encoder(resize(video.flatten(0, 1), size))
    latents = latents.unflatten(0, (batch, frames))
    return latents.permute(0, 2, 1, 3, 4)


class VideoSDS(ScoreDistillation):
    """SDS from a text-to-video prior (Animate124 Eq. 6).

    ``guidance(video, text, negative)`` with a rendered clip (B, F, 3, H, W) in [0, 1] and
    text embeddings (1 or B, 77, D) returns ``{"sds_video": loss}``."""

    name = "sds_video"
    options_class = VideoSDSOptions

    def __call__(
        self,
        video: Tensor,
        text: Tensor,
        negative: Tensor | None,
        *,
        generator: torch.Generator | None = None,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The loss for the rendered clip ``video`` (B, F, 3, H, W)."""
        latents = encode_video(self.encoder, video, self.options.size)
        return self.from_latents(
            latents, text, negative, generator=generator, timesteps=timesteps, noise=noise
        )
