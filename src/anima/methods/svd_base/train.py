"""Training a tiny Stable Video Diffusion image-to-video base model from scratch on toy clips.

The architecture is SVD's (diffusers `StableVideoDiffusionPipeline`) at the sizes of
`anima.models.tiny`: `AutoencoderKLTemporalDecoder` (image encoder + temporal decoder; 4x
down with the default three ``vae_channels`` levels), `UNetSpatioTemporalConditionModel` and a
CLIP vision tower with projection. Two stages:

1. **VAE** (``steps_vae``): the autoencoder alone, on ``vae_batch_size`` clip samples of
   ``vae_frames`` frames a step (many short samples: more distinct scenes per step, which
   trains faster than few long ones at the same cost). Frames in [-1, 1] are encoded one by
   one, the posterior is sampled (``mean + std * eps``, eps from the per-step generator) and
   decoded with ``vae_frames`` so the decoder's temporal layers see clips. Loss:
   ``mean|x - x_hat| + kl_weight * KL`` with the KL to N(0, I) averaged per latent element
   (default weight 1e-4: enough to keep the posterior well-conditioned and the latents near
   unit scale, small enough not to blur the reconstructions; the KL is logged). After the stage
   ``vae.config.scaling_factor`` is set from the data as Stable Diffusion did: ``1 / std`` of
   the posterior means of ``scale_samples`` clips (drawn from a dedicated generator stream), and
   the VAE is written to ``out/vae/`` (config holding the factor).
2. **UNet + image encoder** (``steps_unet``), VAE frozen. SVD's EDM v-prediction objective with
   the epsilon weighting of `anima.methods.levitor.train` (same helpers `edm_input_scale`,
   `edm_timestep`, `epsilon_loss`, same `StepNoise` draws, same `encode_latents`), without a
   ControlNet (`svd_loss`). Conditioning is `LeviTorPipeline.prepare_conditioning`, the code
   inference runs: CLIP embedding of the first frame, its noise-augmented VAE latent, added
   time ids with fps 6, motion bucket 100, noise augmentation 0.02 (the defaults of
   ``anima animate --method levitor``). The CLIP image encoder is **trainable** (a random frozen
   tower would pass on little of the first frame; trained, the embedding learns to carry what
   the UNet needs). With probability ``cond_dropout`` a sample's embedding and image latent
   are both zeroed, exactly the unconditional branch the pipeline's classifier-free guidance
   uses, so guidance has a trained unconditional model to push against.

Reproducibility and resume as in LeviTor training: every random draw of a step comes from
`step_generator` seeded by ``(seed, step, process, stream)`` (one stream pair per stage), and
``accelerator.save_state`` writes ``out/checkpoint-<stage>-<step>/`` (``vae`` or ``unet``) every
``checkpoint_every`` steps, plus ``training_state.json``; stage-2 checkpoints also hold the
frozen ``vae/``. Resuming (``latest`` or a path) reproduces an uninterrupted run bit-exactly on
the same hardware and process count. A finished stage 1 (``out/vae/``) is not redone.

Outputs: ``out/svd/`` (diffusers SVD layout, safetensors; `anima.models.loading.
load_svd_components` loads it, ``anima train levitor --weights DIR`` reads ``DIR/svd/``),
``out/train_config.json``, ``out/log.jsonl`` (``stage``, ``step``, mean ``loss`` since the last
line, ``lr``, ``seconds`` per step; the VAE stage adds ``rec`` and ``kl``).

Several processes (``accelerate launch``) run the same code, but the image encoder is called
through the pipeline unwrapped, so its gradients are averaged by hand (`_sync_grads`).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor
from tqdm.auto import tqdm

from anima.errors import InputError
from anima.io import FRAME_SUFFIXES, atomic_dir, atomic_path, read_image
from anima.methods.levitor.dataset import FRAMES_DIR, crop_resize_rgb
from anima.methods.levitor.train import (
    LossWeighting,
    StepNoise,
    edm_input_scale,
    edm_timestep,
    encode_latents,
    epsilon_loss,
    step_generator,
)
from anima.models.tiny import vae_scale_factor
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

Stage = Literal["vae", "unet"]
STAGES: tuple[Stage, ...] = ("vae", "unet")
SVD_DIR = "svd"
VAE_DIR = "vae"
#: Generator streams: (data, noise) of each stage, and the scaling-factor estimate.
STREAMS = {"vae": (0, 1), "unet": (10, 11)}
SCALE_STREAM = 20

#: ``on_progress(stage, step, steps, loss)``, called on the main process after every step.
ProgressCallback = Callable[[str, int, int, float], None]


class BaseTrainConfig(BaseModel):
    """Settings of a tiny SVD base-model training run."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description="Clip directory: DATA/<clip>/frames/*.png.")
    out: Path = Field(description="Output directory: checkpoints, log, svd/.")
    steps_vae: int = Field(1000, ge=0, description="Stage 1 optimizer steps (VAE).")
    steps_unet: int = Field(2000, ge=0, description="Stage 2 optimizer steps (UNet + CLIP).")
    lr_vae: float = Field(1e-3, gt=0, description="AdamW learning rate of stage 1.")
    lr_unet: float = Field(3e-4, gt=0, description="AdamW learning rate of stage 2.")
    lr_warmup_steps: int = Field(20, ge=0, description="Linear warm-up of each stage, in steps.")
    adam_weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; None: off.")
    batch_size: int = Field(4, ge=1, description="Stage 2: clips per process and step.")
    num_frames: int = Field(8, ge=1, description="Stage 2: frames per clip sample.")
    vae_batch_size: int = Field(16, ge=1, description="Stage 1: clips per process and step.")
    vae_frames: int = Field(2, ge=1, description="Stage 1: frames per clip sample.")
    size: TrainingSize = Field((64, 64), description="(H, W), multiples of 8.")
    kl_weight: float = Field(1e-4, ge=0, description="Weight of the per-element mean KL.")
    scale_samples: int = Field(32, ge=1, description="Clips the scaling factor is measured on.")
    fps: int = Field(6, ge=1, description="Conditioning fps (the model receives fps - 1).")
    motion_bucket_id: int = Field(100, ge=0)
    noise_aug_strength: float = Field(0.02, ge=0)
    cond_dropout: float = Field(0.1, ge=0, le=1, description="P(zero conditioning) for CFG.")
    p_mean: float = Field(0.7, description="EDM log-normal sigma: mean of ln sigma.")
    p_std: float = Field(1.6, gt=0, description="EDM log-normal sigma: std of ln sigma.")
    loss_weighting: LossWeighting = Field(
        "epsilon", description="Stage 2: epsilon loss as written, or EDM's lambda(sigma)."
    )
    vae_channels: tuple[int, ...] = Field(
        (32, 32, 32), description="VAE block_out_channels; n levels downsample 2^(n-1)x."
    )
    unet_channels: tuple[int, ...] = Field((32, 64), description="UNet block_out_channels.")
    checkpoint_every: int = Field(500, ge=1)
    checkpoints_total_limit: int | None = Field(None, ge=1, description="Keep the newest N.")
    resume: str | None = Field(None, description="Checkpoint directory, 'latest', or None.")
    seed: int = Field(0, ge=0, lt=2**63)
    log_every: int = Field(10, ge=1)
    quiet: bool = False

    @field_validator("vae_channels", "unet_channels")
    @classmethod
    def _multiple_of_32(cls, channels: tuple[int, ...]) -> tuple[int, ...]:
        if not channels or any(c <= 0 or c % 32 for c in channels):
            raise ValueError(f"channels must be positive multiples of 32, got {channels}")
        return channels

    @model_validator(mode="after")
    def _size_fits_vae(self) -> BaseTrainConfig:
        scale = 2 ** (len(self.vae_channels) - 1)
        if self.size[0] % scale or self.size[1] % scale:
            raise ValueError(f"size {self.size} is not a multiple of the VAE's {scale}x down")
        return self


@dataclass
class BaseTrainResult:
    """What a `train_svd_base` call did: per stage, the step it started from and the losses of
    the steps it ran (``losses[stage][i]`` is step ``start[stage] + i + 1``)."""

    svd_dir: Path
    start: dict[str, int]
    losses: dict[str, list[float]]
    scaling_factor: float
    checkpoints: list[Path] = field(default_factory=list)
    seconds: float = 0.0


class _Interrupted(Exception):
    """Internal: stops after a step (tests, ``stop_after``)."""


# ------------------------------------------------------------------------------------------
# Data: frames only
# ------------------------------------------------------------------------------------------


class FramesDataset:
    """RGB clips ``DATA/<clip>/frames/*`` (the layout of `anima.world` and LeviTor datasets;
    other sub-folders are ignored), centre-cropped and resized to ``size`` like
    `LevitorDataset`, kept in memory once read."""

    def __init__(self, root: Path, num_frames: int, size: tuple[int, int]) -> None:
        root = Path(root)
        if not root.is_dir():
            raise InputError("dataset directory not found", str(root))
        self.num_frames, self.size = num_frames, tuple(size)
        self.clips: list[list[Path]] = []
        self.names: list[str] = []
        for clip in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            folder = clip / FRAMES_DIR
            if not folder.is_dir():
                continue
            files = sorted(
                (f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in FRAME_SUFFIXES),
                key=lambda f: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", f.stem)],
            )
            if len(files) < num_frames:
                raise InputError(
                    f"clip has {len(files)} frames, fewer than --frames {num_frames}", str(clip)
                )
            self.clips.append(files)
            self.names.append(clip.name)
        if not self.clips:
            raise InputError(f"no clips with a {FRAMES_DIR}/ folder", str(root))
        self._cache: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def frames(self, index: int) -> Tensor:
        """All frames of clip ``index``: (F, 3, H, W) in [0, 1]."""
        if index not in self._cache:
            where = str(self.clips[index][0].parent.parent)
            images = [read_image(f, where=where) for f in self.clips[index]]
            if len({tuple(i.shape) for i in images}) != 1:
                raise InputError("frames differ in size", where)
            self._cache[index] = crop_resize_rgb(torch.stack(images), self.size)
        return self._cache[index]

    def sample_batch(
        self, generator: torch.Generator, batch_size: int, num_frames: int | None = None
    ) -> Tensor:
        """(B, F, 3, H, W): random clips, random start frames; F = ``num_frames`` (default:
        the dataset's)."""
        length = num_frames or self.num_frames
        samples = []
        for _ in range(batch_size):
            index = int(torch.randint(len(self.clips), (1,), generator=generator))
            frames = self.frames(index)
            start = int(torch.randint(frames.shape[0] - length + 1, (1,), generator=generator))
            samples.append(frames[start : start + length])
        return torch.stack(samples)


# ------------------------------------------------------------------------------------------
# Models and losses
# ------------------------------------------------------------------------------------------


def initial_vae(seed: int, channels: Sequence[int] = (32, 32, 32)) -> Any:
    """The random stage-1 VAE. Its last layer, the temporal decoder's 3x1x1 ``time_conv_out``,
    starts as the identity (centre tap 1, others 0): the output then begins frame by frame and
    colour by colour instead of as a random mix of neighbouring frames' channels, and learns
    what temporal smoothing it needs (measured: +0.6 dB after 100 steps)."""
    from anima.models.tiny import tiny_svd_vae

    vae = tiny_svd_vae(seed, tuple(channels))
    conv = vae.decoder.time_conv_out
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[:, :, conv.kernel_size[0] // 2, 0, 0] = torch.eye(conv.out_channels)
    return vae


def initial_unet_and_encoder(seed: int, unet_channels: Sequence[int] = (32, 64)) -> tuple:
    """The random stage-2 models: (UNet, CLIP image encoder)."""
    from anima.models.tiny import tiny_clip_image_encoder, tiny_svd_unet

    return tiny_svd_unet(seed, tuple(unet_channels)), tiny_clip_image_encoder(seed + 1)


def build_pipeline(vae: Any, image_encoder: Any, unet: Any) -> Any:
    """A `LeviTorPipeline` around the models (its conditioning code; the ControlNet slot is a
    zero ControlNet that is never called in training)."""
    from anima.methods.levitor.pipeline import LeviTorPipeline
    from anima.models.svd_controlnet import SVDControlNetModel
    from anima.models.tiny import clip_feature_extractor, stem_channels, svd_scheduler

    with torch.random.fork_rng(devices=[]):
        controlnet = SVDControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=stem_channels(vae_scale_factor(vae))
        )
    pipe = LeviTorPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=svd_scheduler(),
        feature_extractor=clip_feature_extractor(),
        controlnet=controlnet,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class VaeLoss:
    loss: Tensor
    rec: Tensor
    kl: Tensor


def vae_loss(vae: Any, frames: Tensor, latent_noise: Tensor | None, kl_weight: float) -> VaeLoss:
    """Stage-1 loss of (B, F, 3, H, W) frames in [0, 1]: L1 reconstruction in [-1, 1] through
    the temporal decoder plus ``kl_weight`` times the per-element mean KL to N(0, I).
    ``latent_noise`` (B, F, C, h, w) samples the posterior (its mean when None)."""
    batch, num_frames = frames.shape[:2]
    x = frames.flatten(0, 1) * 2.0 - 1.0
    dist = vae.encode(x).latent_dist
    z = dist.mean if latent_noise is None else dist.mean + dist.std * latent_noise.flatten(0, 1)
    decoded = vae.decode(z, num_frames=num_frames).sample
    rec = (decoded - x).abs().mean()
    kl = 0.5 * (dist.mean**2 + dist.var - 1.0 - dist.logvar).mean()
    return VaeLoss(rec + kl_weight * kl, rec, kl)


def svd_loss(
    pipe: Any,
    unet: Any,
    frames: Tensor,
    draws: StepNoise,
    drop: Tensor | None = None,
    fps: int = 6,
    motion_bucket_id: int = 100,
    noise_aug_strength: float = 0.02,
    loss_weighting: LossWeighting = "epsilon",
) -> Tensor:
    """Stage-2 loss: `anima.methods.levitor.train.levitor_loss` without a ControlNet (EDM,
    v-prediction, weighted as ``loss_weighting`` says), conditioning by
    ``pipe.prepare_conditioning`` with gradients to the image encoder. ``unet`` is the model
    being trained (possibly wrapped by accelerate); ``drop`` (B,) bool zeroes the conditioning
    of those samples. The VAE posterior is sampled with ``draws.latent_noise``."""
    device = pipe.vae.device
    frames = frames.to(device)
    num_frames = frames.shape[1]
    z0 = encode_latents(pipe.vae, frames, draws.latent_noise)
    embedding, image_latents, time_ids = pipe.prepare_conditioning(
        frames[:, 0].float(),
        draws.aug_noise,
        num_frames,
        fps,
        motion_bucket_id,
        noise_aug_strength,
        False,
    )
    if drop is not None and bool(drop.any()):
        keep = (~drop).to(device=device, dtype=embedding.dtype)
        embedding = embedding * keep.reshape(-1, 1, 1)
        image_latents = image_latents * keep.reshape(-1, 1, 1, 1, 1)
    sigma = draws.sigma.to(device=device, dtype=torch.float32).reshape(-1, 1, 1, 1, 1)
    noise = draws.noise.to(device=device, dtype=torch.float32)
    noisy = z0 + sigma * noise
    sample = torch.cat([edm_input_scale(sigma) * noisy, image_latents], dim=2)
    output = unet(
        sample,
        edm_timestep(sigma.flatten()),
        encoder_hidden_states=embedding,
        added_time_ids=time_ids,
        return_dict=False,
    )[0]
    return epsilon_loss(noisy, noise, output.float(), sigma, loss_weighting)


@torch.no_grad()
def measure_scaling_factor(vae: Any, dataset: FramesDataset, config: BaseTrainConfig) -> float:
    """``1 / std`` of the posterior means of ``scale_samples`` clips (Stable Diffusion's rule)."""
    generator = step_generator(config.seed, 0, 0, SCALE_STREAM)
    latents = []
    for start in range(0, config.scale_samples, config.batch_size):
        count = min(config.batch_size, config.scale_samples - start)
        frames = dataset.sample_batch(generator, count).to(vae.device)
        latents.append(vae.encode(frames.flatten(0, 1) * 2.0 - 1.0).latent_dist.mean.float())
    std = float(torch.cat(latents).std())
    return 1.0 / max(std, 1e-6)


# ------------------------------------------------------------------------------------------
# Checkpoints and logs
# ------------------------------------------------------------------------------------------


def checkpoint_key(path: Path) -> tuple[int, int] | None:
    """(stage index, step) of ``checkpoint-<stage>-<step>``, None for anything else."""
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(vae|unet)-(\d+)", path.name)
    return (STAGES.index(match.group(1)), int(match.group(2))) if match else None


def list_checkpoints(out: Path, stage: str | None = None) -> list[Path]:
    """Complete checkpoints in ``out`` (of ``stage`` if given), oldest first."""
    if not Path(out).is_dir():
        return []
    found = [
        (key, p)
        for p in Path(out).iterdir()
        if (key := checkpoint_key(p)) is not None
        and (p / STATE_FILE).is_file()
        and (stage is None or STAGES[key[0]] == stage)
    ]
    return [p for _, p in sorted(found)]


def _stage1_done(out: Path) -> bool:
    return (out / VAE_DIR / STATE_FILE).is_file()


def resolve_resume(resume: str | None, out: Path) -> Path | None:
    """The checkpoint to resume from (None: start the next unfinished stage from scratch).

    ``latest``: the newest UNet checkpoint; else, when stage 1 is not finished, the newest VAE
    checkpoint."""
    if resume is None:
        return None
    if resume == "latest":
        unet = list_checkpoints(out, "unet")
        if unet:
            return unet[-1]
        vae = [] if _stage1_done(out) else list_checkpoints(out, "vae")
        return vae[-1] if vae else None
    return checked_checkpoint(resume)


def _trim_log(path: Path, stage: str, last_step: int) -> None:
    """Drop log lines after ``(stage, last_step)`` (a resumed run rewrites them)."""
    if not path.is_file():
        return
    limit = (STAGES.index(stage), last_step)
    kept = []
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            if (STAGES.index(entry.get("stage", "vae")), entry.get("step", 0)) <= limit:
                kept.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


def _save_checkpoint(
    accelerator: Any,
    out: Path,
    stage: str,
    step: int,
    config: BaseTrainConfig,
    vae: Any | None,
) -> Path:
    """``out/checkpoint-<stage>-<step>``: accelerate state (+ frozen ``vae/`` in stage 2)."""

    def write_vae(folder: Path) -> None:
        if vae is not None:
            vae.save_pretrained(folder / VAE_DIR, safe_serialization=True)

    final = save_checkpoint(
        accelerator,
        out / f"{CHECKPOINT_PREFIX}{stage}-{step}",
        {"stage": stage, "step": step, "seed": config.seed},
        write_vae,
    )
    if accelerator.is_main_process:
        prune_checkpoints(list_checkpoints(out), config.checkpoints_total_limit)
    return final


def _load_vae(folder: Path) -> Any:
    from diffusers import AutoencoderKLTemporalDecoder

    from anima.models.loading import load_model

    return load_model(AutoencoderKLTemporalDecoder, folder, "SVD VAE", False, torch.float32)


def _sync_grads(accelerator: Any, params: Sequence[Tensor]) -> None:
    """Average gradients of parameters used outside a DDP wrapper over processes."""
    if accelerator.num_processes <= 1:
        return
    for p in params:
        if p.grad is not None:
            p.grad = accelerator.reduce(p.grad, reduction="mean")


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


def _run_stage(
    stage: Stage,
    config: BaseTrainConfig,
    accelerator: Any,
    models: list[Any],
    loss_fn: Callable[[int, int], tuple[Tensor, dict[str, float]]],
    steps: int,
    lr: float,
    start: int,
    resume_dir: Path | None,
    frozen_vae: Any | None,
    on_progress: ProgressCallback | None,
    stop_after: tuple[str, int] | None,
    result: BaseTrainResult,
) -> None:
    """The optimisation loop shared by both stages. ``models`` are trained with AdamW;
    ``loss_fn(step_index, process)`` returns the loss and extra log values."""
    out = Path(config.out)
    params = [p for m in models for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.adam_weight_decay)
    prepared = accelerator.prepare(*models, optimizer)
    wrapped, optimizer = list(prepared[:-1]), prepared[-1]
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
    for model in wrapped:
        model.train()

    is_main = accelerator.is_main_process
    quiet = config.quiet or not sys.stderr.isatty() or not accelerator.is_local_main_process
    progress = tqdm(
        total=steps, initial=start, disable=quiet, desc=f"svd-base {stage}", unit="step"
    )
    interval: list[float] = []
    extras: dict[str, list[float]] = {}
    interval_start = time.perf_counter()
    losses = result.losses.setdefault(stage, [])
    for step in range(start, steps):
        current_lr = warmup_lr(lr, config.lr_warmup_steps, step + 1)
        loss, extra = loss_fn(step, accelerator.process_index, wrapped)
        accelerator.backward(loss)
        _sync_grads(accelerator, params)
        for group in optimizer.param_groups:
            group["lr"] = current_lr
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        value = float(accelerator.reduce(loss.detach(), reduction="mean"))
        losses.append(value)
        interval.append(value)
        for key, v in extra.items():
            extras.setdefault(key, []).append(v)
        progress.update()
        progress.set_postfix(loss=f"{value:.4f}")
        if is_main and on_progress is not None:
            on_progress(stage, done, steps, value)
        if done % config.log_every == 0 or done == steps:
            now = time.perf_counter()
            if is_main:
                line = {
                    "stage": stage,
                    "step": done,
                    "loss": sum(interval) / len(interval),
                    "lr": current_lr,
                    "seconds": (now - interval_start) / len(interval),
                } | {key: sum(v) / len(v) for key, v in extras.items()}
                with open(out / LOG_FILE, "a") as log:
                    log.write(json.dumps(line) + "\n")
            interval, extras, interval_start = [], {}, now
        if done % config.checkpoint_every == 0:
            result.checkpoints.append(
                _save_checkpoint(accelerator, out, stage, done, config, frozen_vae)
            )
        if stop_after is not None and stop_after == (stage, done):
            progress.close()
            raise _Interrupted
    progress.close()
    accelerator.wait_for_everyone()


def train_svd_base(
    config: BaseTrainConfig,
    on_progress: ProgressCallback | None = None,
    stop_after: tuple[str, int] | None = None,
) -> BaseTrainResult | None:
    """Train the tiny SVD base model; see the module docstring.

    ``stop_after=(stage, step)`` ends the run after that step (as if killed; returns None) —
    for testing resume."""
    out = Path(config.out)
    dataset = FramesDataset(config.data, config.num_frames, config.size)
    resume_dir = resolve_resume(config.resume, out)
    if config.resume is None and (list_checkpoints(out) or _stage1_done(out)):
        raise InputError(
            "the output directory already holds a training run; pass --resume latest or "
            "choose another --out",
            str(out),
        )
    resume_stage, resume_step = "vae", 0
    if resume_dir is not None:
        state = json.loads((resume_dir / STATE_FILE).read_text())
        resume_stage, resume_step = state.get("stage", "vae"), int(state["step"])
        if resume_stage not in STAGES:
            raise InputError("not a svd-base checkpoint", str(resume_dir))
    elif config.resume is not None and _stage1_done(out):
        resume_stage = "unet"

    accelerator = make_accelerator(out)
    device = accelerator.device
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG_FILE, config.model_dump(mode="json"))
        if resume_dir is None and resume_stage == "vae":
            (out / LOG_FILE).unlink(missing_ok=True)
        else:
            _trim_log(out / LOG_FILE, resume_stage, resume_step)
    result = BaseTrainResult(out / SVD_DIR, {}, {}, 1.0)
    began = time.perf_counter()

    # Stage 1: the VAE.
    if resume_stage == "vae":
        vae = initial_vae(config.seed, config.vae_channels).to(device)
        start = resume_step if resume_dir is not None else 0
        result.start["vae"] = start
        if config.steps_vae > 0:
            vae_noise = STREAMS["vae"]
            latent_channels = vae.config.latent_channels
            scale = vae_scale_factor(vae)
            h, w = config.size[0] // scale, config.size[1] // scale

            def vae_step(step: int, process: int, models: list[Any]) -> tuple:
                data = step_generator(config.seed, step, process, vae_noise[0])
                frames = dataset.sample_batch(data, config.vae_batch_size, config.vae_frames)
                frames = frames.to(device)
                noise = torch.randn(
                    (config.vae_batch_size, config.vae_frames, latent_channels, h, w),
                    generator=step_generator(config.seed, step, process, vae_noise[1]),
                ).to(device)
                terms = vae_loss(
                    accelerator.unwrap_model(models[0]), frames, noise, config.kl_weight
                )
                return terms.loss, {
                    "rec": float(terms.rec.detach()),
                    "kl": float(terms.kl.detach()),
                }

            try:
                _run_stage(
                    "vae", config, accelerator, [vae], vae_step, config.steps_vae,
                    config.lr_vae, start, resume_dir, None, on_progress, stop_after, result,
                )  # fmt: skip
            except _Interrupted:
                accelerator.end_training()
                return None
            vae = accelerator.unwrap_model(vae)
        vae.eval()
        factor = measure_scaling_factor(vae, dataset, config)
        vae.register_to_config(scaling_factor=factor)
        if accelerator.is_main_process:
            with atomic_dir(out / VAE_DIR) as tmp:
                vae.save_pretrained(tmp, safe_serialization=True)
                write_json(tmp / STATE_FILE, {"stage": "vae", "step": config.steps_vae})
        accelerator.wait_for_everyone()
        accelerator.free_memory()
        accelerator = make_accelerator(out)
        resume_dir, resume_step = None, 0

    # Stage 2: UNet + image encoder on the frozen VAE.
    vae_dir = resume_dir / VAE_DIR if resume_dir is not None else out / VAE_DIR
    vae = _load_vae(vae_dir).to(device)
    vae.requires_grad_(False)
    vae.eval()
    result.scaling_factor = float(vae.config.scaling_factor)
    unet, encoder = initial_unet_and_encoder(config.seed, config.unet_channels)
    unet.to(device)
    encoder.to(device)
    pipe = build_pipeline(vae, encoder, unet)
    result.start["unet"] = resume_step
    if config.steps_unet > 0:
        noise_streams = STREAMS["unet"]
        latent_channels = vae.config.latent_channels

        def unet_step(step: int, process: int, models: list[Any]) -> tuple:
            data = step_generator(config.seed, step, process, noise_streams[0])
            frames = dataset.sample_batch(data, config.batch_size).to(device)
            generator = step_generator(config.seed, step, process, noise_streams[1])
            draws = StepNoise.draw(
                generator, config.batch_size, config.num_frames, latent_channels, config.size,
                config.p_mean, config.p_std, vae_scale_factor(vae),
            )  # fmt: skip
            drop = torch.rand(config.batch_size, generator=generator) < config.cond_dropout
            loss = svd_loss(
                pipe, models[0], frames, draws, drop, config.fps, config.motion_bucket_id,
                config.noise_aug_strength, config.loss_weighting,
            )  # fmt: skip
            return loss, {}

        try:
            _run_stage(
                "unet", config, accelerator, [unet, encoder], unet_step, config.steps_unet,
                config.lr_unet, resume_step, resume_dir, vae, on_progress, stop_after, result,
            )  # fmt: skip
        except _Interrupted:
            accelerator.end_training()
            return None
        unet = accelerator.unwrap_model(unet)
        encoder = accelerator.unwrap_model(encoder)
    result.seconds = time.perf_counter() - began

    if accelerator.is_main_process:
        from diffusers import StableVideoDiffusionPipeline

        from anima.models.tiny import clip_feature_extractor, svd_scheduler

        svd = StableVideoDiffusionPipeline(
            vae=vae,
            image_encoder=encoder,
            unet=unet,
            scheduler=svd_scheduler(),
            feature_extractor=clip_feature_extractor(),
        )
        with atomic_dir(result.svd_dir) as tmp:
            svd.save_pretrained(tmp, safe_serialization=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result
