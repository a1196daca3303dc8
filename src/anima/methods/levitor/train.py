"""Training the LeviTor ControlNet (paper 003, §3.2, Eq. 6).

Only the ControlNet trains; the SVD UNet, VAE and CLIP image encoder are frozen (``eval()``,
``requires_grad_(False)``). The ControlNet starts as a copy of the UNet's encoder with zero
output convs (`SVDControlNetModel.from_unet`), or from ``init`` (an existing ControlNet).

Loss. The paper's Eq. 6 is epsilon matching,
``L = E ||eps - eps_theta(z_t; t, z^0, c_traj)||^2``. SVD is an EDM model (Karras et al.,
"Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022) with the
v-prediction preconditioning diffusers' `EulerDiscreteScheduler` implements for it
(``prediction_type="v_prediction"``, ``timestep_type="continuous"``). Per sample (one sigma for
all frames):

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
of `control_signal` (raw 0..255), at ControlNet scale 1. The defaults are the pipeline's: fps 6
(the release's demo passes fps=6 to a pipeline that subtracts 1, so the model receives 5; the
training code was not released), motion bucket 100, noise augmentation 0.02.

Reproducibility and resume. Every random draw of a step comes from fresh generators seeded by
``(seed, index, process index, stream)``, with ``index = step * accumulation + micro-batch``:
the data (clip, start, K-means seed) in one stream, sigma and the noises in another. The model
and optimizer state are saved every ``checkpoint_every`` steps in ``out/checkpoint-<step>/``
(``accelerator.save_state``; the ControlNet itself as ``controlnet/`` via ``save_pretrained``,
the layout of the official LeviTor release, plus ``training_state.json``). Resuming at step k
therefore reproduces an uninterrupted run bit-exactly on the same hardware and process count.

Outputs: ``out/controlnet/`` (safetensors), ``out/train_config.json``, ``out/log.jsonl`` (one
line per logged step: ``step``, ``loss`` = mean loss over the steps since the previous line,
``lr``, ``seconds`` = mean wall-clock seconds per step over the same steps), written by the main
process. The same code runs on CPU and under ``accelerate launch`` on many GPUs.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torch.nn import functional as F
from tqdm.auto import tqdm

from anima.errors import InputError
from anima.io import atomic_dir, atomic_path
from anima.methods.levitor.dataset import (
    DEFAULT_FOV,
    DEFAULT_MOVE_THRESHOLD,
    LevitorBatch,
    LevitorDataset,
)
from anima.models.svd_controlnet import SVDControlNetModel
from anima.models.tiny import vae_scale_factor
from anima.models.unet_residuals import unet_residuals
from anima.training import (
    CHECKPOINT_PREFIX,
    CONFIG_FILE,
    LOG_FILE,
    STATE_FILE,
    TrainingSize,
    checked_checkpoint,
    make_accelerator,
    prune_checkpoints,
    save_checkpoint,
    warmup_lr,
    write_json,
)
from anima.weights import DEPTH_ANYTHING, SVD, Weights

CONTROLNET_DIR = "controlnet"
#: Streams of the per-step generators.
DATA_STREAM, NOISE_STREAM = 0, 1

ProgressCallback = Callable[[int, int, float], None]
#: How Eq. 6's per-sample terms are weighted over sigma (`epsilon_loss`).
LossWeighting = Literal["epsilon", "edm"]


class TrainConfig(BaseModel):
    """Settings of a LeviTor ControlNet training run (defaults: the paper's and the release's)."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description="Dataset directory (anima.methods.levitor.dataset).")
    out: Path = Field(description="Output directory: checkpoints, log, final ControlNet.")
    steps: int = Field(1000, ge=1, description="Optimizer steps in all (paper: 200k).")
    batch_size: int = Field(1, ge=1, description="Clips per process and micro-batch.")
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (paper: 1e-5).")
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warm-up from 0, in steps.")
    lr_min: float | None = Field(
        None,
        gt=0,
        description="Cosine decay to this learning rate at the last step (else constant).",
    )
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_weight_decay: float = Field(1e-2, ge=0)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; None: off.")
    size: TrainingSize = Field((288, 512), description="(H, W), multiples of 8.")
    num_frames: int = Field(16, ge=1)
    fps: int = Field(
        6, ge=1, description="Conditioning fps, as LeviTorPipeline's (the model receives fps-1)."
    )
    motion_bucket_id: int = Field(100, ge=0)
    noise_aug_strength: float = Field(0.02, ge=0)
    p_mean: float = Field(0.7, description="EDM log-normal sigma: mean of ln sigma.")
    p_std: float = Field(1.6, gt=0, description="EDM log-normal sigma: std of ln sigma.")
    loss_weighting: LossWeighting = Field(
        "epsilon", description="Eq. 6 as written ('epsilon') or EDM's lambda(sigma) ('edm')."
    )
    moving_weight: float = Field(
        1.0,
        ge=1,
        description="Weight of Eq. 6 on latent pixels a moved object covers or uncovers (1: the "
        "paper's uniform loss).",
    )
    vae_sample: bool = Field(True, description="Sample the VAE posterior (else its mean).")
    vae_encode_chunk: int = Field(8, ge=1, description="Frames the VAE encodes at a time.")
    points_scale: float = Field(1.0, gt=0)
    variant: Literal["full", "single_point", "no_depth", "no_instance"] = Field(
        "full", description="Control signal: the full one or a paper ablation (Tab. 2, S1)."
    )
    move_threshold: float = Field(DEFAULT_MOVE_THRESHOLD, ge=0)
    fov: float = Field(DEFAULT_FOV, gt=1, lt=179, description="Ground-plane depth fallback.")
    init: Path | None = Field(None, description="ControlNet to start from (else from the UNet).")
    checkpoint_every: int = Field(500, ge=1)
    checkpoints_total_limit: int | None = Field(None, ge=1, description="Keep the newest N.")
    resume: str | None = Field(None, description="Checkpoint directory, 'latest', or None.")
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    seed: int = Field(0, ge=0, lt=2**63)
    log_every: int = Field(10, ge=1)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    quiet: bool = False


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


# ------------------------------------------------------------------------------------------
# Randomness
# ------------------------------------------------------------------------------------------


def step_generator(seed: int, index: int, process: int, stream: int) -> torch.Generator:
    """A CPU generator determined by ``(seed, index, process, stream)`` alone."""
    state = np.random.SeedSequence([seed, index, process, stream]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


@dataclass
class StepNoise:
    """The random draws of one loss evaluation besides the data.

    Attributes:
        sigma: (B,) EDM noise levels.
        noise: (B, F, C, h, w) the eps of Eq. 6.
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
        h, w = size[0] // vae_scale, size[1] // vae_scale
        sigma = (p_mean + p_std * torch.randn(batch, generator=generator)).exp()
        shape = (batch, frames, latent_channels, h, w)
        noise = torch.randn(shape, generator=generator)
        latent_noise = torch.randn(shape, generator=generator)
        aug_noise = torch.randn((batch, 3, *size), generator=generator)
        return cls(sigma, noise, latent_noise, aug_noise)


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``index`` is the batch of micro-step ``index``, drawn from
    ``step_generator(seed, index, process, DATA_STREAM)`` (so it can be prefetched by workers
    and is the same whatever the worker count)."""

    def __init__(self, dataset: LevitorDataset, seed: int, process: int, batch_size: int) -> None:
        self.dataset, self.seed, self.process, self.batch_size = dataset, seed, process, batch_size

    def __len__(self) -> int:  # only the sampler decides what is read
        return sys.maxsize

    def __getitem__(self, index: int) -> LevitorBatch:
        generator = step_generator(self.seed, index, self.process, DATA_STREAM)
        return self.dataset.sample_batch(generator, self.batch_size)


def _keep(batch: LevitorBatch) -> LevitorBatch:
    return batch


# ------------------------------------------------------------------------------------------
# EDM / v-prediction (diffusers' EulerDiscreteScheduler for SVD)
# ------------------------------------------------------------------------------------------


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
    """Eq. 6: ``mean((eps - (x - D) / sigma)^2)`` with D from the v-prediction ``F``.

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
    """Eq. 6 on one batch with the given random draws (see the module docstring), weighted by
    ``moving_weight`` on the moved objects' latent pixels (`moving_pixel_weight`).

    ``pipe`` holds the frozen models (a `LeviTorPipeline`); ``controlnet`` is the model being
    trained (possibly wrapped by accelerate). Returns a float32 scalar.
    """
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
) -> SVDControlNetModel:
    """``init`` (a ControlNet directory, or an accelerate state dir holding ``controlnet/``),
    else `SVDControlNetModel.from_unet` (stem initialised from ``seed``, downsampling control
    images by the VAE's ``vae_scale``), recording the control ``variant`` it is trained on.
    fp32."""
    if init is None:
        from anima.models.tiny import seeded, stem_channels

        with seeded(seed):
            return SVDControlNetModel.from_unet(
                unet,
                conditioning_embedding_out_channels=stem_channels(vae_scale),
                control_variant=variant,
            ).float()
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
# Checkpoints and logs
# ------------------------------------------------------------------------------------------


def checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in ``out``, oldest first."""
    if not out.is_dir():
        return []
    found = [
        (step, p)
        for p in out.iterdir()
        if (step := checkpoint_step(p)) is not None and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, out: Path) -> Path | None:
    """The checkpoint to resume from: a path, the newest in ``out`` for 'latest' (None if there
    is none yet), or None."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(out)
        return found[-1] if found else None
    return checked_checkpoint(resume)


def _trim_log(path: Path, last_step: int) -> None:
    """Drop log lines after ``last_step`` (a resumed run rewrites them)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= last_step
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


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
    )
    resume_dir = resolve_resume(config.resume, out)
    if resume_dir is None and config.resume is None and list_checkpoints(out):
        raise InputError(
            "the output directory already holds checkpoints; pass --resume latest or choose "
            "another --out",
            str(out),
        )

    accelerator = make_accelerator(out, config.mixed_precision)
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    components = load_frozen_models(weights)
    controlnet = initial_controlnet(
        components["unet"],
        config.init,
        weights.allow_pickle,
        config.seed,
        config.variant,
        vae_scale_factor(components["vae"]),
    )
    controlnet.train()
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

    optimizer = torch.optim.AdamW(
        [p for p in controlnet.parameters() if p.requires_grad],
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    controlnet, optimizer = accelerator.prepare(controlnet, optimizer)
    _register_state_hooks(accelerator)

    start = 0
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        state = json.loads((resume_dir / STATE_FILE).read_text())
        start = int(state["step"])
        if int(state.get("num_processes", accelerator.num_processes)) != accelerator.num_processes:
            accelerator.print(
                "warning: resuming with a different number of processes; the data order "
                "differs from an uninterrupted run"
            )
    is_main = accelerator.is_main_process
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG_FILE, config.model_dump(mode="json"))
        if start == 0:
            (out / LOG_FILE).unlink(missing_ok=True)
        else:
            _trim_log(out / LOG_FILE, start)

    accumulation = config.gradient_accumulation_steps
    process = accelerator.process_index
    loader = torch.utils.data.DataLoader(
        StepBatches(dataset, config.seed, process, config.batch_size),
        sampler=range(start * accumulation, config.steps * accumulation),
        batch_size=None,
        collate_fn=_keep,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
    )
    latent_channels = components["vae"].config.latent_channels
    vae_scale = vae_scale_factor(components["vae"])

    quiet = config.quiet or not sys.stderr.isatty() or not accelerator.is_local_main_process
    progress = tqdm(total=config.steps, initial=start, disable=quiet, desc="levitor", unit="step")
    losses: list[float] = []
    checkpoints: list[Path] = []
    interval_losses: list[float] = []
    began = interval_start = time.perf_counter()
    step = start
    micro_losses: list[Tensor] = []
    for index, batch in enumerate(loader, start=start * accumulation):
        micro = index % accumulation
        lr = warmup_lr(config.lr, config.lr_warmup_steps, step + 1, config.steps, config.lr_min)
        draws = StepNoise.draw(
            step_generator(config.seed, index, process, NOISE_STREAM),
            config.batch_size,
            config.num_frames,
            latent_channels,
            config.size,
            config.p_mean,
            config.p_std,
            vae_scale,
        )
        sync = micro == accumulation - 1
        context = contextlib.nullcontext() if sync else accelerator.no_sync(controlnet)
        with context:
            # No global autocast: the frozen models run in their own dtypes exactly as at
            # inference; accelerate autocasts the prepared ControlNet's forward.
            loss = levitor_loss(
                pipe,
                controlnet,
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
            accelerator.backward(loss / accumulation)
        micro_losses.append(loss.detach())
        if not sync:
            continue

        for group in optimizer.param_groups:
            group["lr"] = lr
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(controlnet.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        step_loss = accelerator.reduce(torch.stack(micro_losses).mean(), reduction="mean")
        micro_losses = []
        value = float(step_loss)
        losses.append(value)
        interval_losses.append(value)
        progress.update()
        progress.set_postfix(loss=f"{value:.4f}")
        if is_main and on_progress is not None:
            on_progress(step, config.steps, value)

        if step % config.log_every == 0 or step == config.steps:
            now = time.perf_counter()
            if is_main:
                line = {
                    "step": step,
                    "loss": sum(interval_losses) / len(interval_losses),
                    "lr": lr,
                    "seconds": (now - interval_start) / len(interval_losses),
                }
                with open(out / LOG_FILE, "a") as log:
                    log.write(json.dumps(line) + "\n")
            interval_losses, interval_start = [], now
        if step % config.checkpoint_every == 0:
            checkpoints.append(_save_checkpoint(accelerator, out, step, config))
    progress.close()
    seconds = time.perf_counter() - began

    accelerator.wait_for_everyone()
    final = out / CONTROLNET_DIR
    if is_main:
        with atomic_dir(final) as tmp:
            accelerator.unwrap_model(controlnet).save_pretrained(tmp, safe_serialization=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(start, step, losses, final, checkpoints, seconds)


def _register_state_hooks(accelerator: Any) -> None:
    """Checkpoints hold the ControlNet as ``controlnet/`` (``save_pretrained``) instead of
    accelerate's ``model.safetensors``; loading reads it back."""

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        if accelerator.is_main_process:
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(
                    Path(output_dir) / CONTROLNET_DIR, safe_serialization=True
                )
        weights.clear()

    def load_hook(models: list, input_dir: str) -> None:
        from anima.models.loading import load_svd_controlnet

        while models:
            model = accelerator.unwrap_model(models.pop())
            saved = load_svd_controlnet(Path(input_dir) / CONTROLNET_DIR, False, torch.float32)
            model.load_state_dict(saved.state_dict())

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _save_checkpoint(accelerator: Any, out: Path, step: int, config: TrainConfig) -> Path:
    """``out/checkpoint-<step>`` (the ControlNet goes in by the save hook)."""
    final = save_checkpoint(
        accelerator, out / f"{CHECKPOINT_PREFIX}{step}", {"step": step, "seed": config.seed}
    )
    if accelerator.is_main_process:
        prune_checkpoints(list_checkpoints(out), config.checkpoints_total_limit)
    return final
