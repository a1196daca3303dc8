"""Training the LeviTor ControlNet (LeviTor §3.2, Eq. 6).

Only the ControlNet trains; the SVD UNet, VAE and CLIP image encoder are frozen (``eval()``,
``requires_grad_(False)``). The ControlNet starts as a copy of the UNet's encoder with zero
output convs (`SVDControlNetModel.from_unet`), or from ``init`` (an existing ControlNet).

Loss. The paper's Eq. 6 is epsilon matching,
``L = E ||eps - eps_theta(z_t; t, z^0, c_traj)||^2``. SVD is an EDM model (Karras et al.,
"Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022) with the
v-prediction preconditioning diffusers' `EulerDiscreteScheduler` implements for it
(`anima.training.edm`). Per sample (one sigma for all frames):

- ``sigma = exp(P_mean + P_std * n)``, ``n ~ N(0, 1)`` (EDM's log-normal training distribution;
  ``P_mean = 0.7, P_std = 1.6`` are the values open SVD fine-tuning code uses, shifted towards
  more noise than EDM's image defaults -1.2 / 1.2 as the SVD paper, Blattmann et al. 2023, does
  for video fine-tuning);
- ``x = z0 + sigma * eps`` with ``z0 = vae.encode(frames).latent_dist`` sampled (or its mean with
  ``vae_sample=False``) times ``vae.config.scaling_factor``;
- the UNet (and the ControlNet) see ``c_in * x`` with ``c_in = 1 / sqrt(sigma^2 + 1)``
  (`EulerDiscreteScheduler.scale_model_input`) concatenated on channels with the conditioning
  latent, and the timestep ``c_noise = 0.25 ln sigma`` (the scheduler's continuous timesteps);
- the network output ``F`` is a v-prediction; the denoised estimate is exactly the scheduler's
  ``D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * F``;
- ``eps_hat = (x - D) / sigma`` and ``loss = mean((eps - eps_hat)^2)``: Eq. 6.

Algebraically ``eps - eps_hat = (F_target - F) / sqrt(sigma^2 + 1)`` with
``F_target = (eps - sigma z0) / sqrt(sigma^2 + 1)``, so Eq. 6 is EDM's v-loss weighted by
``1 / (sigma^2 + 1)`` (EDM's own weighting is ``lambda = (sigma^2 + 1) / sigma^2`` on the
x0-error, i.e. weight 1 on the v-error): the paper's loss, written in SVD's parameterisation.
Two departures from it are options, off by default: ``loss_weighting="edm"`` (EDM's lambda) and
``moving_weight`` (a larger weight on the latent pixels moved objects cover or uncover,
`moving_pixel_weight`), both for small models that must learn control in few steps.

Conditioning is exactly inference's (`LeviTorPipeline`): the CLIP embedding of the first frame
(224 px antialiased resize, CLIP normalisation; the pipeline's ``encode_image_embedding``), the
first frame's VAE latent after noise augmentation (``latent_dist.mode()``, NOT scaled by the
scaling factor, repeated over frames; the pipeline's ``_encode_vae_image``), added time ids
``[fps - 1, motion_bucket_id, noise_aug_strength]`` (``_get_add_time_ids``) and the control maps
of `control_signal` (raw 0..255) in the run's control-map convention (``control_convention``:
ours by default, or the release's), at ControlNet scale 1. The defaults are the pipeline's: fps 6
(the release's demo passes fps=6 to a pipeline that subtracts 1, so the model receives 5; the
training code was not released), motion bucket 100, noise augmentation 0.02.

Training runs on `anima.training.train_loop` (`LevitorTrainer`). Every random draw of a
micro-batch comes from `step_generator` seeded by ``(seed, index, process, stream)``, with
``index = step * accumulation + micro-batch``: the data (clip, start, K-means seed) in one
stream, sigma and the noises in another. Checkpoints (``out/checkpoint-<step>/``, every
``checkpoint_every`` steps) hold the ControlNet as ``controlnet/`` (``save_pretrained``, the
layout of the official LeviTor release) beside accelerate's state, so resuming at step k
reproduces an uninterrupted run bit-exactly on the same hardware and process count.

Outputs: ``out/controlnet/`` (safetensors; its config records the control variant and the
control-map convention it was trained on), ``out/train_config.json``, ``out/log.jsonl`` (one
line per logged step: ``step``, ``loss`` = mean loss over the steps since the previous line,
``lr``, ``seconds`` = mean wall-clock seconds per step over the same steps), written by the main
process. The same code runs on CPU and under ``accelerate launch`` on many GPUs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from anima.errors import InputError
from anima.io import atomic_dir
from anima.methods.levitor.dataset import (
    DEFAULT_FOV,
    DEFAULT_MOVE_THRESHOLD,
    LevitorBatch,
    LevitorDataset,
)
from anima.training import (
    SIZE_FLAG,
    Flag,
    LoopConfig,
    ProgressCallback,
    RunConfig,
    Trainer,
    TrainingSize,
    make_accelerator,
    precision_dtype,
    resume_or_fresh,
    start_run,
    step_generator,
    train_loop,
)
from anima.training.edm import (
    LossWeighting,
    StepNoise,
    edm_input_scale,
    edm_timestep,
    encode_latents,
    epsilon_loss,
)
from anima.weights import DEPTH_ANYTHING, SVD, Weights

if TYPE_CHECKING:
    from anima.models.svd_controlnet import SVDControlNetModel

CONTROLNET_DIR = "controlnet"
#: Streams of the per-micro-batch generators.
DATA_STREAM, NOISE_STREAM = 0, 1

__all__ = [
    "CONTROLNET_DIR",
    "LevitorTrainer",
    "LossWeighting",
    "ProgressCallback",
    "StepNoise",
    "TrainConfig",
    "TrainResult",
    "build_pipeline",
    "edm_input_scale",
    "edm_timestep",
    "encode_latents",
    "epsilon_loss",
    "initial_controlnet",
    "levitor_loss",
    "load_frozen_models",
    "moving_pixel_weight",
    "step_generator",
    "svd_conditioning",
    "train_levitor",
]


class TrainConfig(RunConfig):
    """Settings of a LeviTor ControlNet training run (defaults: the paper's and the release's).
    Fields with a `Flag` are ``anima train levitor`` options."""

    data: Annotated[Path, Flag()] = Field(description="Dataset directory (clip folders).")
    out: Annotated[Path, Flag()] = Field(
        description="Output directory: checkpoints, log, final ControlNet."
    )
    init: Annotated[Path | None, Flag()] = Field(
        None, description="Start from this ControlNet (else from the UNet)."
    )
    steps: Annotated[int, Flag()] = Field(
        1000, ge=1, description="Optimizer steps in all (paper: 200k)."
    )
    batch_size: Annotated[int, Flag()] = Field(
        1, ge=1, description="Clips per process and micro-batch."
    )
    gradient_accumulation_steps: Annotated[int, Flag()] = Field(
        1, ge=1, description="Micro-batches a step."
    )
    lr: Annotated[float, Flag()] = Field(
        1e-5, gt=0, description="AdamW learning rate (paper: 1e-5)."
    )
    lr_warmup_steps: Annotated[int, Flag()] = Field(
        0, ge=0, description="Linear warm-up from 0, in steps."
    )
    lr_min: Annotated[float | None, Flag()] = Field(
        None, gt=0, description="Cosine decay to this learning rate (else constant)."
    )
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    size: Annotated[TrainingSize, SIZE_FLAG] = Field(
        (288, 512), description="Training size (multiples of 8)."
    )
    num_frames: Annotated[int, Flag("--frames")] = Field(
        16, ge=1, description="Frames per clip sample."
    )
    fps: int = Field(
        6, ge=1, description="Conditioning fps, as LeviTorPipeline's (the model receives fps-1)."
    )
    motion_bucket_id: int = Field(100, ge=0)
    noise_aug_strength: float = Field(0.02, ge=0)
    p_mean: Annotated[float, Flag()] = Field(
        0.7, description="Mean of ln sigma, EDM's log-normal noise levels."
    )
    p_std: float = Field(1.6, gt=0, description="EDM log-normal sigma: std of ln sigma.")
    loss_weighting: Annotated[LossWeighting, Flag()] = Field(
        "epsilon", description="Eq. 6 as written (epsilon) or EDM's lambda(sigma) weighting (edm)."
    )
    moving_weight: Annotated[float, Flag()] = Field(
        1.0,
        ge=1,
        description="Loss weight on latent pixels moved objects cover or uncover (1: the "
        "paper's uniform loss).",
    )
    vae_sample: bool = Field(True, description="Sample the VAE posterior (else its mean).")
    vae_encode_chunk: int = Field(8, ge=1, description="Frames the VAE encodes at a time.")
    points_scale: float = Field(1.0, gt=0)
    variant: Annotated[Literal["full", "single_point", "no_depth", "no_instance"], Flag()] = Field(
        "full", description="full, or an ablation (Tab. 2): single_point, no_depth, no_instance."
    )
    control_convention: Annotated[Literal["anima", "release"], Flag()] = Field(
        "anima",
        description="Control maps placed and drawn our way (anima) or as LeviTor's release "
        "draws them (release); recorded in the ControlNet's config.",
    )
    move_threshold: float = Field(DEFAULT_MOVE_THRESHOLD, ge=0)
    fov: float = Field(DEFAULT_FOV, gt=1, lt=179, description="Ground-plane depth fallback.")
    mixed_precision: Annotated[Literal["no", "fp16", "bf16"], Flag()] = Field(
        "no", description="no, fp16 or bf16."
    )
    gradient_checkpointing: Annotated[bool, Flag()] = Field(
        False, description="Recompute activations in the backward pass (less memory)."
    )
    num_workers: Annotated[int, Flag()] = Field(
        0, ge=0, description="Data loader worker processes."
    )


@dataclass
class TrainResult:
    """What a `train_levitor` call did.

    Attributes:
        start_step: the step training resumed from (0 for a fresh run).
        step: the last step completed.
        losses: loss of every step this call ran (mean over processes and micro-batches),
            ``losses[i]`` being step ``start_step + i + 1``.
        controlnet_dir: the final ControlNet (``out/controlnet``).
        checkpoints: checkpoint directories written by this call.
        seconds: wall-clock time of the training loop.
    """

    start_step: int
    step: int
    losses: list[float]
    controlnet_dir: Path
    checkpoints: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def moving_pixel_weight(moving: Tensor, latent_size: tuple[int, int], weight: float) -> Tensor:
    """(B, F, 1, h, w) loss weights: ``weight`` on latent pixels that touch a moving pixel
    (``moving``: (B, F, H, W) bool, max-pooled to the latent grid), 1 elsewhere.

    Moved objects cover a few percent of a toy frame, so under the uniform Eq. 6 the gradient
    that teaches the ControlNet to place them is drowned by the background's."""
    b, f = moving.shape[:2]
    pooled = F.adaptive_max_pool2d(moving.flatten(0, 1)[:, None].float(), latent_size)
    return (1.0 + (weight - 1.0) * pooled).reshape(b, f, 1, *latent_size)


# ------------------------------------------------------------------------------------------
# Conditioning (the inference pipeline's own code paths)
# ------------------------------------------------------------------------------------------


@dataclass
class Conditioning:
    """SVD conditioning of a batch: embedding (B, 1, D), image latents (B, F, C, h, w),
    added time ids (B, 3)."""

    embedding: Tensor
    image_latents: Tensor
    time_ids: Tensor


@torch.no_grad()
def svd_conditioning(
    pipe: Any,
    first_frames: Tensor,
    aug_noise: Tensor,
    num_frames: int,
    fps: int,
    motion_bucket_id: int,
    noise_aug_strength: float,
) -> Conditioning:
    """Image embedding, noise-augmented first-frame latent and added time ids, built with the
    methods `LeviTorPipeline.__call__` uses (``first_frames``: (B, 3, H, W) in [0, 1]).

    ``aug_noise`` is the standard normal draw the pipeline takes from its generator."""
    embedding, image_latents, time_ids = pipe.prepare_conditioning(
        first_frames.float(),
        aug_noise,
        num_frames,
        fps,
        motion_bucket_id,
        noise_aug_strength,
        False,
    )
    return Conditioning(embedding, image_latents, time_ids)


def levitor_loss(
    pipe: Any,
    controlnet: torch.nn.Module,
    batch: LevitorBatch,
    draws: StepNoise,
    fps: int = 6,
    motion_bucket_id: int = 100,
    noise_aug_strength: float = 0.02,
    vae_sample: bool = True,
    vae_encode_chunk: int = 8,
    loss_weighting: LossWeighting = "epsilon",
    moving_weight: float = 1.0,
) -> Tensor:
    """Eq. 6 (LeviTor §3.2) on one batch with the given random draws (see the module
    docstring), weighted by ``moving_weight`` on the moved objects' latent pixels
    (`moving_pixel_weight`).

    ``pipe`` holds the frozen models (a `LeviTorPipeline`); ``controlnet`` is the model being
    trained (possibly wrapped by accelerate). Returns a float32 scalar.
    """
    from anima.models.unet_residuals import unet_residuals

    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    frames = batch.frames.to(device)
    num_frames = frames.shape[1]
    z0 = encode_latents(
        pipe.vae, frames, draws.latent_noise if vae_sample else None, vae_encode_chunk
    )
    cond = svd_conditioning(
        pipe, frames[:, 0], draws.aug_noise, num_frames, fps, motion_bucket_id, noise_aug_strength
    )
    sigma = draws.sigma.to(device=device, dtype=torch.float32).reshape(-1, 1, 1, 1, 1)
    noise = draws.noise.to(device=device, dtype=torch.float32)
    noisy = z0 + sigma * noise
    sample = torch.cat([(edm_input_scale(sigma) * noisy).to(dtype), cond.image_latents], dim=2)
    timestep = edm_timestep(sigma.flatten())
    down, mid = controlnet(
        sample,
        timestep,
        encoder_hidden_states=cond.embedding,
        added_time_ids=cond.time_ids,
        controlnet_cond=batch.control.to(device),
        conditioning_scale=1.0,
    )
    down = [residual.to(dtype) for residual in down]
    with unet_residuals(unet, down, mid.to(dtype)):
        output = unet(
            sample,
            timestep,
            encoder_hidden_states=cond.embedding,
            added_time_ids=cond.time_ids,
            return_dict=False,
        )[0]
    pixel_weight = None
    if moving_weight != 1.0:
        latent_size = tuple(z0.shape[-2:])
        pixel_weight = moving_pixel_weight(batch.moving, latent_size, moving_weight).to(device)
    return epsilon_loss(noisy, noise, output.float(), sigma, loss_weighting, pixel_weight)


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------


def load_frozen_models(weights: Weights) -> dict[str, Any]:
    """The `StableVideoDiffusionPipeline` components (fp32): ``DIR/svd`` or tiny random ones."""
    if weights.builtin == "tiny":
        from anima.models.tiny import tiny_svd_components

        return tiny_svd_components(seed=0)
    if weights.root is None:
        raise InputError(
            f"LeviTor training needs SVD weights; built-in '{weights.builtin}' has none "
            "(use --weights DIR with svd/, or tiny)",
            "--weights",
        )
    from anima.models.loading import load_svd_components

    folder = weights.require(SVD, "levitor training")
    return load_svd_components(folder, weights.allow_pickle, torch.float32)


def initial_controlnet(
    unet: Any,
    init: Path | None,
    allow_pickle: bool,
    seed: int,
    variant: str = "full",
    vae_scale: int = 8,
    convention: str = "anima",
) -> SVDControlNetModel:
    """``init`` (a ControlNet directory, or an accelerate state dir holding ``controlnet/``),
    else `SVDControlNetModel.from_unet` (stem initialised from ``seed``, downsampling control
    images by the VAE's ``vae_scale``), recording the control ``variant`` and the control-map
    ``convention`` it is trained on; an ``init`` that records others is an `InputError`.
    fp32."""
    from anima.models.svd_controlnet import SVDControlNetModel

    if init is None:
        from anima.models.seeding import seeded
        from anima.models.svd import stem_channels

        with seeded(seed):
            controlnet = SVDControlNetModel.from_unet(
                unet,
                conditioning_embedding_out_channels=stem_channels(vae_scale),
                control_variant=variant,
            ).float()
        controlnet.register_to_config(control_convention=convention)
        return controlnet
    from anima.methods.levitor.loading import folder_convention
    from anima.models.loading import load_svd_controlnet

    init = Path(init)
    if not (init / "config.json").is_file() and (init / CONTROLNET_DIR / "config.json").is_file():
        init = init / CONTROLNET_DIR
    controlnet = load_svd_controlnet(init, allow_pickle, torch.float32)
    mismatched = [
        key
        for key in ARCHITECTURE_KEYS
        if _as_tuple(controlnet.config.get(key)) != _as_tuple(unet.config.get(key))
    ]
    if mismatched:
        raise InputError(
            f"the ControlNet does not match the SVD UNet ({', '.join(mismatched)} differ)",
            str(init),
        )
    if controlnet.config.control_variant != variant:
        raise InputError(
            f"the ControlNet was trained on the '{controlnet.config.control_variant}' control "
            f"signal, not '{variant}' (--variant)",
            str(init),
        )
    recorded = folder_convention(init)
    if recorded != convention:
        raise InputError(
            f"the ControlNet was trained on '{recorded}' control maps, not '{convention}' "
            f"(pass --control-convention {recorded})",
            str(init),
        )
    controlnet.register_to_config(control_convention=recorded)
    return controlnet


#: UNet config entries a ControlNet made from it shares (its encoder's architecture).
ARCHITECTURE_KEYS = (
    "in_channels",
    "down_block_types",
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "num_attention_heads",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
)


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def build_pipeline(components: dict[str, Any], controlnet: SVDControlNetModel) -> Any:
    """A `LeviTorPipeline` around the frozen components (used for its conditioning code)."""
    from anima.methods.levitor.pipeline import LeviTorPipeline

    return LeviTorPipeline(**components, controlnet=controlnet)


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


class LevitorTrainer(Trainer):
    """The ControlNet, its micro-batches and Eq. 6, for `anima.training.train_loop`.

    Micro-batch ``i`` is ``batch_size`` clip samples drawn from ``step_generator(seed, i,
    process, DATA_STREAM)``; its noises come from the ``NOISE_STREAM`` generator. Checkpoints
    hold the ControlNet as ``controlnet/`` (``save_pretrained``)."""

    def __init__(
        self,
        config: TrainConfig,
        dataset: LevitorDataset,
        pipe: Any,
        controlnet: SVDControlNetModel,
        latent_channels: int,
        vae_scale: int,
    ) -> None:
        self.config, self.dataset, self.pipe, self.controlnet = config, dataset, pipe, controlnet
        self.latent_channels, self.vae_scale = latent_channels, vae_scale

    def modules(self) -> dict[str, nn.Module]:
        return {"controlnet": self.controlnet}

    def batch(self, index: int, process: int) -> LevitorBatch:
        generator = step_generator(self.config.seed, index, process, DATA_STREAM)
        return self.dataset.sample_batch(generator, self.config.batch_size)

    def loss(
        self, modules: Mapping[str, nn.Module], batch: LevitorBatch, index: int, process: int
    ) -> Tensor:
        config = self.config
        draws = StepNoise.draw(
            step_generator(config.seed, index, process, NOISE_STREAM),
            config.batch_size,
            config.num_frames,
            self.latent_channels,
            config.size,
            config.p_mean,
            config.p_std,
            self.vae_scale,
        )
        # No global autocast: the frozen models run in their own dtypes exactly as at
        # inference; the loop autocasts the ControlNet's forward under mixed precision.
        return levitor_loss(
            self.pipe,
            modules["controlnet"],
            batch,
            draws,
            fps=config.fps,
            motion_bucket_id=config.motion_bucket_id,
            noise_aug_strength=config.noise_aug_strength,
            vae_sample=config.vae_sample,
            vae_encode_chunk=config.vae_encode_chunk,
            loss_weighting=config.loss_weighting,
            moving_weight=config.moving_weight,
        )

    def save_modules(self, modules: Mapping[str, nn.Module], folder: Path) -> bool:
        modules["controlnet"].save_pretrained(folder / CONTROLNET_DIR, safe_serialization=True)
        return True

    def load_modules(self, modules: Mapping[str, nn.Module], folder: Path) -> bool:
        from anima.models.loading import load_svd_controlnet

        saved = load_svd_controlnet(folder / CONTROLNET_DIR, False, torch.float32)
        modules["controlnet"].load_state_dict(saved.state_dict())
        return True


def train_levitor(
    config: TrainConfig,
    weights: Weights | None = None,
    on_progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train the LeviTor ControlNet; see the module docstring.

    Args:
        config: the run's settings.
        weights: where the SVD (and optional Depth Anything) weights are; ``Weights(builtin=
            "tiny")`` trains on tiny random models.
        on_progress: called on the main process after every step as ``(step, steps, loss)``.
    """
    from anima.models.svd import vae_scale_factor

    weights = weights or Weights()
    out = Path(config.out)
    dataset = LevitorDataset(
        config.data,
        config.num_frames,
        config.size,
        depth_anything_dir=weights.component_dir(DEPTH_ANYTHING),
        move_threshold=config.move_threshold,
        points_scale=config.points_scale,
        fov=config.fov,
        variant=config.variant,
        convention=config.control_convention,
    )
    resume_dir = resume_or_fresh(config.resume, out)

    accelerator = make_accelerator(out, config.mixed_precision)
    device = accelerator.device
    weight_dtype = precision_dtype(accelerator)
    components = load_frozen_models(weights)
    vae_scale = vae_scale_factor(components["vae"])
    controlnet = initial_controlnet(
        components["unet"],
        config.init,
        weights.allow_pickle,
        config.seed,
        config.variant,
        vae_scale,
        config.control_convention,
    )
    for name in ("vae", "image_encoder", "unet"):
        model = components[name]
        model.requires_grad_(False)
        model.eval()
        # The VAE stays fp32 (SVD's VAE asks for upcasting); UNet and CLIP run in weight dtype.
        target = torch.float32 if name == "vae" else weight_dtype
        model.to(device)
        if model.dtype != target:  # diffusers warns about any dtype cast, even a no-op
            model.to(dtype=target)
    if config.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        components["unet"].enable_gradient_checkpointing()
    pipe = build_pipeline(components, controlnet)
    pipe.set_progress_bar_config(disable=True)
    if accelerator.is_main_process:
        start_run(out, config.model_dump(mode="json"), fresh=resume_dir is None)

    trainer = LevitorTrainer(
        config, dataset, pipe, controlnet, components["vae"].config.latent_channels, vae_scale
    )
    loop = LoopConfig(
        **config.loop_settings(),
        steps=config.steps,
        lr=config.lr,
        lr_warmup_steps=config.lr_warmup_steps,
        lr_min=config.lr_min,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_epsilon,
        num_workers=config.num_workers,
        desc="levitor",
    )
    result = train_loop(accelerator, trainer, loop, resume_dir, on_progress)

    final = out / CONTROLNET_DIR
    if accelerator.is_main_process:
        with atomic_dir(final) as tmp:
            controlnet.save_pretrained(tmp, safe_serialization=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(
        result.start_step, result.step, result.losses, final, result.checkpoints, result.seconds
    )
