"""ControlNet-Tile SDS: the semantic refinement prior (SD1.5 + ControlNet Tile v1.1).

(Animate124 §3.4, Eq. 9, SDS-R; README, "Animate124": CFG 7.5, t in [200, 800], 2 of the
16 frames at 1024, conditioned on a frozen copy of the stage-2 field's renders, the textual-
inversion token in the prompt, "gradient from the predicted x0".)

Each picked frame is scored on its own by SD1.5 with a Tile ControlNet reading the frozen
coarse field's render of the same camera and time (given by the caller, in [0, 1], as
diffusers' ControlNet pipelines feed it). The prompt's embeddings come precomputed from the
caller, who owns the learned token (textual inversion); the ControlNet may read other
embeddings than the UNet (``controlnet_text``), as the release allows.

The gradient (``target="x0"``, the default, the release's refinement setting): the loss pulls
the latent toward the prior's predicted clean latent,

    loss = weight * 0.5 * sum_b |z_b - sg(x0_hat_b)|^2 / B,
    x0_hat = (z_t - sqrt(1 - alpha_bar) eps_hat) / sqrt(alpha_bar),

in latent space, so its gradient on z is z - x0_hat = sqrt((1 - alpha_bar) / alpha_bar)
(eps_hat - eps): SDS with that weight instead of w(t). We chose latent space (not a loss between
the render and the decoded x0) because it is what the release computes and it needs no VAE
decode at 1024. ``target="eps"`` gives Eq. 9 as written, g = w(t) (eps_hat - eps).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from anima.methods.animate124.guidance.sds import (
    DEFAULT_SCHEDULE,
    ScoreDistillation,
    VaeEncoder,
    alphas_cumprod_from_config,
    batched,
    draw_noise,
    draw_timesteps,
    resize,
    score_distillation,
    sds_loss,
)


@dataclass
class TileCondition:
    """What `ControlNetEpsilon` reads: text embeddings (B, 77, D), the control images
    (B, 3, H, W) in [0, 1], and optionally other embeddings for the ControlNet."""

    text: Tensor
    image: Tensor
    controlnet_text: Tensor | None = None


class ControlNetEpsilon:
    """`EpsilonPredictor` of an SD UNet with a diffusers `ControlNetModel` adding its residuals
    at ``conditioning_scale``."""

    def __init__(self, unet: Any, controlnet: Any, conditioning_scale: float = 1.0) -> None:
        self.unet = unet
        self.controlnet = controlnet
        self.conditioning_scale = conditioning_scale

    def __call__(
        self, noisy_latents: Tensor, timesteps: Tensor, condition: TileCondition
    ) -> Tensor:
        dtype = self.unet.dtype
        noisy = noisy_latents.to(dtype)
        text = condition.text.to(dtype)
        control_text = text if condition.controlnet_text is None else condition.controlnet_text
        down, mid = self.controlnet(
            noisy.to(self.controlnet.dtype),
            timesteps,
            encoder_hidden_states=control_text.to(self.controlnet.dtype),
            controlnet_cond=condition.image.to(self.controlnet.dtype),
            conditioning_scale=self.conditioning_scale,
            return_dict=False,
        )
        out = self.unet(
            noisy,
            timesteps,
            encoder_hidden_states=text,
            down_block_additional_residuals=[residual.to(dtype) for residual in down],
            mid_block_additional_residual=mid.to(dtype),
        )
        return out.sample.float()


@dataclass(frozen=True, kw_only=True)
class TileOptions:
    """ControlNet-Tile SDS (README, "Animate124"; Animate124 §3.4, lambda_R = 1)."""

    guidance_scale: float = 7.5
    t_range: tuple[int, int] = (200, 800)
    size: int = 1024
    frames: int = 2  # frames of the clip scored each step
    conditioning_scale: float = 1.0
    target: Literal["x0", "eps"] = "x0"
    grad_clip: float | None = None
    weight: float = 1.0


class ControlNetTileSDS(ScoreDistillation):
    """SDS from SD1.5 + ControlNet Tile on a few frames of a clip (Animate124 Eq. 9).

    ``guidance(frames, control, text, negative)`` with renders (N, 3, H, W) in [0, 1], the
    frozen field's renders of the same views (N, 3, H', W') and text embeddings (1 or N, 77, D)
    scores ``options.frames`` of the N frames (random, or ``indices``) at ``options.size`` and
    returns ``{"sds_tile": loss}``."""

    name = "sds_tile"
    options_class = TileOptions

    @classmethod
    def from_components(
        cls,
        components: Mapping[str, Any],
        controlnet: Any,
        options: TileOptions | None = None,
    ) -> ControlNetTileSDS:
        """From SD1.5 components (``unet``, ``vae``, ``scheduler_config``: `loading`) and the
        Tile ``controlnet``."""
        options = options or TileOptions()
        return cls(
            ControlNetEpsilon(components["unet"], controlnet, options.conditioning_scale),
            VaeEncoder(components["vae"]),
            alphas_cumprod_from_config(components.get("scheduler_config", DEFAULT_SCHEDULE)),
            options,
        )

    def pick(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """Which ``options.frames`` of ``count`` frames are scored (sorted; all when fewer)."""
        if count <= self.options.frames:
            return torch.arange(count)
        return torch.randperm(count, generator=generator)[: self.options.frames].sort().values

    def __call__(
        self,
        frames: Tensor,
        control: Tensor,
        text: Tensor,
        negative: Tensor | None,
        *,
        controlnet_text: Tensor | None = None,
        indices: Tensor | None = None,
        generator: torch.Generator | None = None,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The loss for renders ``frames`` (N, 3, H, W) against ``control`` (N, 3, H', W')."""
        if frames.shape[0] != control.shape[0]:
            raise ValueError(f"{frames.shape[0]} frames but {control.shape[0]} control images")
        if indices is None:
            indices = self.pick(frames.shape[0], generator)
        indices = indices.to(frames.device)
        size = self.options.size
        latents = self.encoder(resize(frames[indices], size))
        image = resize(control[indices].detach().float(), size)

        def rows(embeddings: Tensor | None) -> Tensor | None:
            if embeddings is None:
                return None
            if embeddings.shape[0] == frames.shape[0] and frames.shape[0] != 1:
                return embeddings[indices]
            return batched(embeddings, len(indices))

        return self.from_latents(
            latents,
            image,
            rows(text),
            rows(negative),
            controlnet_text=rows(controlnet_text),
            generator=generator,
            timesteps=timesteps,
            noise=noise,
        )

    def from_latents(
        self,
        latents: Tensor,
        image: Tensor,
        text: Tensor,
        negative: Tensor | None,
        *,
        controlnet_text: Tensor | None = None,
        generator: torch.Generator | None = None,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The loss on latents (B, 4, h, w) with their control images (B, 3, H, W)."""
        options = self.options
        batch = latents.shape[0]
        if timesteps is None:
            timesteps = draw_timesteps(options.t_range, batch, generator)
        if noise is None:
            noise = draw_noise(latents.shape, generator, latents.device)
        control_text = batched(controlnet_text, batch) if controlnet_text is not None else None
        condition = TileCondition(batched(text, batch), image, control_text)
        uncondition = None
        if negative is not None:
            # diffusers' ControlNet pipelines run the ControlNet on both halves of CFG with the
            # same control image; its text is the negative prompt there too.
            uncondition = TileCondition(batched(negative, batch), image, None)
        step = score_distillation(
            latents,
            self.predictor,
            condition,
            uncondition,
            self.alphas_cumprod,
            options.guidance_scale,
            timesteps,
            noise,
            options.grad_clip if options.target == "eps" else None,
        )
        gradient = step.gradient
        if options.target == "x0":
            gradient = latents.detach().float() - step.predicted_x0
            if options.grad_clip is not None:
                gradient = gradient.clamp(-options.grad_clip, options.grad_clip)
            gradient = torch.nan_to_num(gradient, nan=0.0, posinf=0.0, neginf=0.0)
        return {self.name: sds_loss(latents, gradient, options.weight)}
