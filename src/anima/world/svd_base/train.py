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
   the epsilon weighting of LeviTor's Eq. 6 (`anima.training.edm`: `edm_input_scale`,
   `edm_timestep`, `epsilon_loss`, the `StepNoise` draws, `encode_latents`), without a
   ControlNet (`svd_loss`). Conditioning is `SVDControlNetPipeline.prepare_conditioning`, the code
   inference runs: CLIP embedding of the first frame, its noise-augmented VAE latent, added
   time ids with fps 6, motion bucket 100, noise augmentation 0.02 (the defaults of
   ``anima animate --method levitor``). The CLIP image encoder is **trainable** (a random frozen
   tower would pass on little of the first frame; trained, the embedding learns to carry what
   the UNet needs). With probability ``cond_dropout`` a sample's embedding and image latent
   are both zeroed, exactly the unconditional branch the pipeline's classifier-free guidance
   uses, so guidance has a trained unconditional model to push against.

Each stage runs on `anima.training.train_loop` (`VaeTrainer`, `UnetTrainer`): every random draw
of a step comes from `step_generator` seeded by ``(seed, step, process, stream)`` (one stream
pair per stage), and ``out/checkpoint-<stage>-<step>/`` (``vae`` or ``unet``) is written every
``checkpoint_every`` steps; stage-2 checkpoints also hold the frozen ``vae/``. Resuming
(``latest`` or a path) reproduces an uninterrupted run bit-exactly on the same hardware and
process count. A finished stage 1 (``out/vae/``) is not redone.

Outputs: ``out/svd/`` (diffusers SVD layout, safetensors; `anima.models.loading.
load_svd_components` loads it, ``anima train levitor --weights DIR`` reads ``DIR/svd/``),
``out/train_config.json``, ``out/log.jsonl`` (``stage``, ``step``, mean ``loss`` since the last
line, ``lr``, ``seconds`` per step; the VAE stage adds ``rec`` and ``kl``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from anima.clips import FRAMES_DIR, crop_resize_rgb
from anima.errors import InputError
from anima.io import FRAME_SUFFIXES, atomic_dir, read_image
from anima.training import (
    CHECKPOINT_PREFIX,
    SIZE_FLAG,
    STATE_FILE,
    Flag,
    LoopConfig,
    RunConfig,
    Trainer,
    TrainingSize,
    checked_checkpoint,
    checkpoint_state,
    make_accelerator,
    start_run,
    step_generator,
    train_loop,
    trim_log,
    write_json,
)
from anima.training.edm import (
    LossWeighting,
    StepNoise,
    edm_input_scale,
    edm_timestep,
    encode_latents,
    epsilon_loss,
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


class BaseTrainConfig(RunConfig):
    """Settings of a tiny SVD base-model training run. Fields with a `Flag` are
    ``anima train svd-base`` options."""

    data: Annotated[Path, Flag()] = Field(description="Clip directory (DATA/<clip>/frames/).")
    out: Annotated[Path, Flag()] = Field(description="Output directory (svd/, log, checkpoints).")
    steps_vae: Annotated[int, Flag()] = Field(1000, ge=0, description="Stage 1 (VAE) steps.")
    steps_unet: Annotated[int, Flag()] = Field(
        2000, ge=0, description="Stage 2 (UNet + image encoder) steps."
    )
    lr_vae: Annotated[float, Flag()] = Field(1e-3, gt=0, description="Stage 1 AdamW learning rate.")
    lr_unet: Annotated[float, Flag()] = Field(
        3e-4, gt=0, description="Stage 2 AdamW learning rate."
    )
    lr_warmup_steps: Annotated[int, Flag()] = Field(
        20, ge=0, description="Linear warm-up steps a stage."
    )
    batch_size: Annotated[int, Flag()] = Field(
        4, ge=1, description="Stage 2: clips per process and step."
    )
    num_frames: Annotated[int, Flag("--frames")] = Field(
        8, ge=1, description="Stage 2: frames per clip sample."
    )
    vae_batch_size: Annotated[int, Flag()] = Field(
        16, ge=1, description="Stage 1: clips per process and step."
    )
    vae_frames: Annotated[int, Flag()] = Field(
        2, ge=1, description="Stage 1: frames per clip sample."
    )
    size: Annotated[TrainingSize, SIZE_FLAG] = Field(
        (64, 64), description="Training size (multiples of 8)."
    )
    kl_weight: Annotated[float, Flag()] = Field(
        1e-4, ge=0, description="VAE KL weight (per-element mean)."
    )
    scale_samples: int = Field(32, ge=1, description="Clips the scaling factor is measured on.")
    fps: int = Field(6, ge=1, description="Conditioning fps (the model receives fps - 1).")
    motion_bucket_id: int = Field(100, ge=0)
    noise_aug_strength: float = Field(0.02, ge=0)
    cond_dropout: float = Field(0.1, ge=0, le=1, description="P(zero conditioning) for CFG.")
    p_mean: float = Field(0.7, description="EDM log-normal sigma: mean of ln sigma.")
    p_std: float = Field(1.6, gt=0, description="EDM log-normal sigma: std of ln sigma.")
    loss_weighting: Annotated[LossWeighting, Flag()] = Field(
        "epsilon", description="Stage 2: epsilon (Eq. 6 as written) or edm (lambda(sigma))."
    )
    vae_channels: tuple[int, ...] = Field(
        (32, 32, 32), description="VAE block_out_channels; n levels downsample 2^(n-1)x."
    )
    unet_channels: tuple[int, ...] = Field((32, 64), description="UNet block_out_channels.")

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
    """An `SVDControlNetPipeline` around the models (its conditioning code; the ControlNet slot
    is a zero ControlNet that is never called in training)."""
    from anima.models.svd import (
        clip_feature_extractor,
        stem_channels,
        svd_scheduler,
        vae_scale_factor,
    )
    from anima.models.svd_controlnet import SVDControlNetModel
    from anima.models.svd_pipeline import SVDControlNetPipeline

    with torch.random.fork_rng(devices=[]):
        controlnet = SVDControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=stem_channels(vae_scale_factor(vae))
        )
    pipe = SVDControlNetPipeline(
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
    """Stage-2 loss: LeviTor's Eq. 6 (§3.2) without a ControlNet (`anima.training.edm`: EDM,
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
# The two stages' trainers
# ------------------------------------------------------------------------------------------


class VaeTrainer(Trainer):
    """Stage 1 for `anima.training.train_loop`: the VAE on ``vae_batch_size`` clip samples of
    ``vae_frames`` frames (data and posterior noise from the stage's generator streams); logs
    the reconstruction (``rec``) and ``kl`` terms beside the loss."""

    #: diffusers' temporal decoder never calls its mid-block attention.
    find_unused_parameters = True

    def __init__(self, config: BaseTrainConfig, dataset: FramesDataset, vae: Any) -> None:
        self.config, self.dataset, self.vae = config, dataset, vae

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.vae}

    def batch(self, index: int, process: int) -> Tensor:
        config = self.config
        data = step_generator(config.seed, index, process, STREAMS["vae"][0])
        return self.dataset.sample_batch(data, config.vae_batch_size, config.vae_frames)

    def loss(
        self, modules: Mapping[str, nn.Module], batch: Tensor, index: int, process: int
    ) -> dict[str, Tensor]:
        from anima.models.svd import vae_scale_factor

        config, vae = self.config, modules["vae"]
        scale = vae_scale_factor(vae)
        shape = (
            config.vae_batch_size,
            config.vae_frames,
            vae.config.latent_channels,
            config.size[0] // scale,
            config.size[1] // scale,
        )
        generator = step_generator(config.seed, index, process, STREAMS["vae"][1])
        device = next(vae.parameters()).device
        noise = torch.randn(shape, generator=generator).to(device)
        terms = vae_loss(vae, batch.to(device), noise, config.kl_weight)
        return {"loss": terms.loss, "rec": terms.rec, "kl": terms.kl}


class UnetTrainer(Trainer):
    """Stage 2 for `anima.training.train_loop`: the UNet and the CLIP image encoder on the
    frozen VAE (`svd_loss`); checkpoints also hold the frozen ``vae/``."""

    def __init__(
        self, config: BaseTrainConfig, dataset: FramesDataset, pipe: Any, vae: Any
    ) -> None:
        self.config, self.dataset, self.pipe, self.vae = config, dataset, pipe, vae

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.pipe.unet, "image_encoder": self.pipe.image_encoder}

    def batch(self, index: int, process: int) -> Tensor:
        data = step_generator(self.config.seed, index, process, STREAMS["unet"][0])
        return self.dataset.sample_batch(data, self.config.batch_size)

    def loss(
        self, modules: Mapping[str, nn.Module], batch: Tensor, index: int, process: int
    ) -> Tensor:
        from anima.models.svd import vae_scale_factor

        config = self.config
        generator = step_generator(config.seed, index, process, STREAMS["unet"][1])
        draws = StepNoise.draw(
            generator, config.batch_size, config.num_frames, self.vae.config.latent_channels,
            config.size, config.p_mean, config.p_std, vae_scale_factor(self.vae),
        )  # fmt: skip
        drop = torch.rand(config.batch_size, generator=generator) < config.cond_dropout
        return svd_loss(
            self.pipe, modules["unet"], batch, draws, drop, config.fps, config.motion_bucket_id,
            config.noise_aug_strength, config.loss_weighting,
        )  # fmt: skip

    def write_checkpoint(self, folder: Path) -> None:
        self.vae.save_pretrained(folder / VAE_DIR, safe_serialization=True)


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


def _not_after(stage: str, step: int) -> Callable[[dict[str, Any]], bool]:
    """Whether a log line comes no later than ``(stage, step)`` (a resumed run rewrites the
    later ones)."""
    limit = (STAGES.index(stage), step)
    return lambda line: (STAGES.index(line.get("stage", "vae")), line.get("step", 0)) <= limit


def _load_vae(folder: Path) -> Any:
    from diffusers import AutoencoderKLTemporalDecoder

    from anima.models.loading import load_model

    return load_model(AutoencoderKLTemporalDecoder, folder, "SVD VAE", False, torch.float32)


def _stage_loop(
    stage: Stage,
    config: BaseTrainConfig,
    steps: int,
    lr: float,
    stop_after: tuple[str, int] | None,
) -> LoopConfig:
    return LoopConfig(
        **config.loop_settings(),
        steps=steps,
        lr=lr,
        lr_warmup_steps=config.lr_warmup_steps,
        checkpoint_prefix=f"{CHECKPOINT_PREFIX}{stage}-",
        checkpoints=list_checkpoints,
        log_fields={"stage": stage},
        desc=f"svd-base {stage}",
        stop_after=stop_after[1] if stop_after is not None and stop_after[0] == stage else None,
    )


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


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
        state = checkpoint_state(resume_dir)
        resume_stage, resume_step = state.get("stage", "vae"), int(state["step"])
        if resume_stage not in STAGES:
            raise InputError("not a svd-base checkpoint", str(resume_dir))
    elif config.resume is not None and _stage1_done(out):
        resume_stage = "unet"

    def progress(stage: str) -> Callable[[int, int, float], None] | None:
        if on_progress is None:
            return None
        return lambda step, steps, loss: on_progress(stage, step, steps, loss)

    accelerator = make_accelerator(out)
    device = accelerator.device
    if accelerator.is_main_process:
        fresh = resume_dir is None and resume_stage == "vae"
        start_run(out, config.model_dump(mode="json"), fresh)
        if not fresh:
            trim_log(out, _not_after(resume_stage, resume_step))
    result = BaseTrainResult(out / SVD_DIR, {}, {}, 1.0)
    began = time.perf_counter()

    # Stage 1: the VAE.
    if resume_stage == "vae":
        vae = initial_vae(config.seed, config.vae_channels).to(device)
        result.start["vae"] = resume_step if resume_dir is not None else 0
        if config.steps_vae > 0:
            stage_loop = _stage_loop("vae", config, config.steps_vae, config.lr_vae, stop_after)
            trainer = VaeTrainer(config, dataset, vae)
            run = train_loop(accelerator, trainer, stage_loop, resume_dir, progress("vae"))
            result.losses["vae"] = run.losses
            result.checkpoints += run.checkpoints
            if run.stopped:
                accelerator.end_training()
                return None
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
        stage_loop = _stage_loop("unet", config, config.steps_unet, config.lr_unet, stop_after)
        trainer = UnetTrainer(config, dataset, pipe, vae)
        run = train_loop(accelerator, trainer, stage_loop, resume_dir, progress("unet"))
        result.losses["unet"] = run.losses
        result.checkpoints += run.checkpoints
        if run.stopped:
            accelerator.end_training()
            return None
    result.seconds = time.perf_counter() - began

    if accelerator.is_main_process:
        from diffusers import StableVideoDiffusionPipeline

        from anima.models.svd import clip_feature_extractor, svd_scheduler

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
