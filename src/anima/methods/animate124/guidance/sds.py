"""Score distillation sampling (SDS) from any epsilon predictor, and the SD1.5 prior.

(Animate124 §3.2, Eq. 3; §3.3, Eq. 6-7; §3.4, Eq. 9; README, "Animate124": g = w(t)
(eps_hat - eps), w = 1 - alpha_bar_t, t uniform in a range, no annealing.)

A guidance never backpropagates through its diffusion model: it draws t and eps, noises the
latents of the rendered images, predicts eps_hat without gradient, and returns a loss whose
gradient with respect to the latents is the SDS gradient. The loss is the usual surrogate

    loss = weight * 0.5 * sum_{b, elements} (z_b - sg(z_b - g_b))^2 / B

(sg = stop-gradient, B = batch size), so d loss / d z_b = weight * g_b / B: the gradient is the
SDS gradient summed over a latent's elements and averaged over the batch, as the release does.
Its value, 0.5 |g|^2 / B, says how hard the prior pulls. The gradient then reaches the rendered
images (and the field behind them) through the VAE encoder, which runs with gradient.

The prior is an `EpsilonPredictor`: any ``predict(noisy_latents, timesteps, condition) -> eps``.
The diffusers-backed ones (`UNetEpsilon` here, `Zero123Epsilon`, `ControlNetEpsilon`) are
adapters implementing it, so a test or a user plugs in another prior (an oracle denoiser, a
different model) without touching the guidance. Classifier-free guidance is the guidance's
business: it calls the predictor with the condition and the unconditional one and combines them
(eps_u + s (eps_c - eps_u)); with scale 1 only the conditional call is made.

Nothing here imports diffusers: the adapters call the models they are given
(docs/architecture.md, "Models and weights").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from anima.models.schedules import SD_NOISE_SCHEDULE


class EpsilonPredictor(Protocol):
    """A diffusion prior's noise prediction: ``eps = predict(noisy_latents, timesteps,
    condition)``. ``timesteps`` is a (B,) long tensor; ``condition`` is whatever the prior
    reads (text embeddings, a `Zero123Condition`, a `TileCondition`)."""

    def __call__(self, noisy_latents: Tensor, timesteps: Tensor, condition: Any) -> Tensor: ...


#: Images (N, 3, H, W) in [0, 1] to latents (N, C, h, w), differentiable.
LatentEncoder = Callable[[Tensor], Tensor]

#: The noise schedule of SD1.5, Zero-1-to-3 and ModelScope (their ``scheduler_config.json``):
#: scaled-linear betas 0.00085-0.012 over 1000 steps.
DEFAULT_SCHEDULE: dict[str, Any] = SD_NOISE_SCHEDULE


def alphas_cumprod_from_config(config: Mapping[str, Any]) -> Tensor:
    """alpha_bar_t for t = 0..T-1 of a diffusers scheduler config (``linear`` or
    ``scaled_linear`` betas, or ``trained_betas``), float64."""
    steps = int(config.get("num_train_timesteps", 1000))
    trained = config.get("trained_betas")
    schedule = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float64)
    elif schedule == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    elif schedule == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    else:
        raise ValueError(f"unsupported beta_schedule {schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0)


def sds_weight(alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """w(t) = 1 - alpha_bar_t (README, "Animate124"), float32, on the timesteps' device."""
    return (1.0 - alphas_cumprod.to(timesteps.device)[timesteps]).float()


def draw_timesteps(
    t_range: tuple[int, int], count: int, generator: torch.Generator | None = None
) -> Tensor:
    """``count`` timesteps uniform in ``[t_min, t_max]`` (both included), drawn on the CPU."""
    low, high = t_range
    if not 0 <= low <= high:
        raise ValueError(f"bad timestep range {t_range}")
    return torch.randint(low, high + 1, (count,), generator=generator)


def draw_noise(
    shape: torch.Size, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Standard normal noise drawn on the CPU (docs/architecture.md, "Conventions") and moved."""
    return torch.randn(shape, generator=generator).to(device)


def guided_epsilon(
    predictor: EpsilonPredictor,
    noisy: Tensor,
    timesteps: Tensor,
    condition: Any,
    uncondition: Any,
    scale: float,
) -> Tensor:
    """Classifier-free guidance: eps_u + scale (eps_c - eps_u); with ``scale == 1`` (or no
    unconditional input) the conditional prediction alone, without the second call."""
    conditional = predictor(noisy, timesteps, condition).float()
    if scale == 1.0 or uncondition is None:
        return conditional
    unconditional = predictor(noisy, timesteps, uncondition).float()
    return unconditional + scale * (conditional - unconditional)


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """(B,) values shaped to broadcast over ``like`` (B, ...)."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


@dataclass
class SDSStep:
    """One score-distillation draw: what was drawn, predicted, and the gradient on the latents."""

    timesteps: Tensor
    noise: Tensor
    noisy: Tensor
    epsilon: Tensor  # eps_hat after classifier-free guidance
    gradient: Tensor  # w(t) (eps_hat - eps), clipped where asked
    predicted_x0: Tensor  # (z_t - sqrt(1 - alpha_bar) eps_hat) / sqrt(alpha_bar)


def score_distillation(
    latents: Tensor,
    predictor: EpsilonPredictor,
    condition: Any,
    uncondition: Any,
    alphas_cumprod: Tensor,
    guidance_scale: float,
    timesteps: Tensor,
    noise: Tensor,
    grad_clip: float | None = None,
) -> SDSStep:
    """Noise ``latents`` (B, ...) to ``timesteps`` with ``noise``, predict eps_hat without
    gradient, and form g = w(t) (eps_hat - eps) (Animate124 Eq. 3), value-clipped to
    ``[-grad_clip, grad_clip]`` when given, non-finite entries zeroed."""
    timesteps = timesteps.to(latents.device)
    alpha_bar = _per_sample(alphas_cumprod.to(latents.device)[timesteps].float(), latents)
    with torch.no_grad():
        clean = latents.detach().float()
        noisy = alpha_bar.sqrt() * clean + (1.0 - alpha_bar).sqrt() * noise
        epsilon = guided_epsilon(
            predictor, noisy, timesteps, condition, uncondition, guidance_scale
        )
        gradient = _per_sample(sds_weight(alphas_cumprod, timesteps), latents) * (epsilon - noise)
        if grad_clip is not None:
            gradient = gradient.clamp(-grad_clip, grad_clip)
        gradient = torch.nan_to_num(gradient, nan=0.0, posinf=0.0, neginf=0.0)
        predicted_x0 = (noisy - (1.0 - alpha_bar).sqrt() * epsilon) / alpha_bar.sqrt()
    return SDSStep(timesteps, noise, noisy, epsilon, gradient, predicted_x0)


def sds_loss(latents: Tensor, gradient: Tensor, weights: Tensor | float = 1.0) -> Tensor:
    """0.5 * sum_b weights_b |z_b - sg(z_b - g_b)|^2 / B: its gradient on ``latents`` (B, ...)
    is weights_b g_b / B (module docstring). ``weights`` is a number or (B,)."""
    latents = latents.float()
    target = (latents - gradient).detach()
    per_sample = (latents - target).pow(2).flatten(1).sum(dim=1)
    if isinstance(weights, Tensor):
        per_sample = per_sample * weights.to(per_sample)
    else:
        per_sample = per_sample * weights
    return 0.5 * per_sample.sum() / latents.shape[0]


def resize(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Images (N, C, H, W) bilinearly resized to ``size`` (a side, or (H, W)), as the release
    upsamples its 128 px renders for each prior (README, "Animate124")."""
    target = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == target:
        return images
    return F.interpolate(images, size=target, mode="bilinear", align_corners=False)


def batched(condition: Tensor, batch: int) -> Tensor:
    """A (1, ...) condition repeated to ``batch`` rows; a (batch, ...) one as it is."""
    if condition.shape[0] == batch:
        return condition
    if condition.shape[0] != 1:
        raise ValueError(f"condition has {condition.shape[0]} rows for a batch of {batch}")
    return condition.expand(batch, *condition.shape[1:])


class VaeEncoder:
    """`LatentEncoder` of an SD-style `AutoencoderKL`: images in [0, 1] to the posterior mean
    (the release samples; the SD VAE's posterior spread is negligible and the mean keeps a
    draw's randomness in t and eps alone) times the scaling factor, with gradient."""

    def __init__(self, vae: Any, scaled: bool = True) -> None:
        self.vae = vae
        self.scale = float(vae.config.scaling_factor) if scaled else 1.0

    def __call__(self, images: Tensor) -> Tensor:
        pixels = images.to(self.vae.dtype) * 2.0 - 1.0
        return self.vae.encode(pixels).latent_dist.mean.float() * self.scale


class UNetEpsilon:
    """`EpsilonPredictor` of a text-conditioned diffusers UNet (`UNet2DConditionModel` on
    (B, 4, h, w), `UNet3DConditionModel` on (B, 4, F, h, w)): ``condition`` is its
    ``encoder_hidden_states``."""

    def __init__(self, unet: Any) -> None:
        self.unet = unet

    def __call__(self, noisy_latents: Tensor, timesteps: Tensor, condition: Tensor) -> Tensor:
        dtype = self.unet.dtype
        out = self.unet(
            noisy_latents.to(dtype), timesteps, encoder_hidden_states=condition.to(dtype)
        )
        return out.sample.float()


def encode_text(tokenizer: Any, text_encoder: Any, prompts: str | list[str]) -> Tensor:
    """CLIP text embeddings (N, 77, D) of ``prompts`` as SD1.5 and ModelScope read them (padded
    to the tokenizer's length), without gradient, on the encoder's device."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    tokens = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(text_encoder.device))[0]


@dataclass(frozen=True, kw_only=True)
class StableDiffusionSDSOptions:
    """SD1.5 SDS of the static stage (README, "Animate124"; Animate124 §3.2)."""

    guidance_scale: float = 100.0
    t_range: tuple[int, int] = (200, 600)
    size: int = 512  # renders upsampled to this side before the VAE
    grad_clip: float | None = None  # the dynamic stages clip at 1
    weight: float = 1.0


class ScoreDistillation:
    """What every guidance is made of: an epsilon predictor, the encoder of renders into its
    latents, its alpha_bar schedule and options (``t_range``, ``guidance_scale``,
    ``grad_clip``, ``weight``; the subclass's options class by default). `from_latents` is the
    loss of a text-conditioned prior; priors with other conditions override it."""

    name: ClassVar[str]
    options_class: ClassVar[type]

    def __init__(
        self,
        predictor: EpsilonPredictor,
        encoder: LatentEncoder,
        alphas_cumprod: Tensor,
        options: Any = None,
    ) -> None:
        self.predictor = predictor
        self.encoder = encoder
        self.alphas_cumprod = alphas_cumprod
        self.options = options or self.options_class()

    @classmethod
    def from_components(cls, components: Mapping[str, Any], options: Any = None) -> Any:
        """A text-conditioned prior from its diffusers components (``unet``, ``vae``,
        ``scheduler_config``: SD1.5's, `loading`; ModelScope's, `anima.models.modelscope`)."""
        return cls(
            UNetEpsilon(components["unet"]),
            VaeEncoder(components["vae"]),
            alphas_cumprod_from_config(components.get("scheduler_config", DEFAULT_SCHEDULE)),
            options,
        )

    def from_latents(
        self,
        latents: Tensor,
        text: Tensor,
        negative: Tensor | None,
        *,
        generator: torch.Generator | None = None,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The loss on latents (B, C, ...) directly (an already encoded render), conditioned
        on ``text`` (1 or B rows), CFG against ``negative`` when given."""
        options = self.options
        batch = latents.shape[0]
        if timesteps is None:
            timesteps = draw_timesteps(options.t_range, batch, generator)
        if noise is None:
            noise = draw_noise(latents.shape, generator, latents.device)
        uncondition = batched(negative, batch) if negative is not None else None
        step = score_distillation(
            latents,
            self.predictor,
            batched(text, batch),
            uncondition,
            self.alphas_cumprod,
            options.guidance_scale,
            timesteps,
            noise,
            options.grad_clip,
        )
        return {self.name: sds_loss(latents, step.gradient, options.weight)}


class StableDiffusionSDS(ScoreDistillation):
    """SDS from a text-to-image prior (SD1.5): Animate124 Eq. 3's 2D term.

    ``guidance(images, text, negative)`` with renders (N, 3, H, W) in [0, 1] and text
    embeddings (1 or N, 77, D) returns ``{"sds_sd15": loss}``."""

    name = "sds_sd15"
    options_class = StableDiffusionSDSOptions

    def __call__(
        self,
        images: Tensor,
        text: Tensor,
        negative: Tensor | None,
        *,
        generator: torch.Generator | None = None,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The loss for renders ``images`` (N, 3, H, W) in [0, 1]; ``negative`` is the
        unconditional (empty-prompt) embedding. ``timesteps`` (N,) and ``noise`` override the
        draws."""
        latents = self.encoder(resize(images, self.options.size))
        return self.from_latents(
            latents, text, negative, generator=generator, timesteps=timesteps, noise=noise
        )
