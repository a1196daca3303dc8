"""Training X-Dyna (paper 004, §3.4) with accelerate: ``anima train xdyna``.

Two stages, as the paper trains them:

- ``motion`` (stage 1): the Dynamics-Adapter, the pose ControlNet and the motion module learn
  together, on human clips (skeleton conditions) mixed with scene clips whose conditions are
  blank (harmonic data fusion, `anima.methods.xdyna.dataset`); the face ControlNet is unused;
- ``face`` (stage 2): only the S-Face ControlNet learns, on top of a stage-1 result (``init``).

Everything else stays frozen (SD1.5 spatial UNet, VAE, text encoder). The loss is SD's
epsilon-prediction MSE on the generated frames, ``t ~ U{0..999}`` with the sampler's training
betas (DDIM config: linear 0.00085-0.012), one timestep a sample; the UNet pass is the
sampler's own (`XDynaPipeline.predict_noise`): the clean reference latent as frame 0 with the
same timestep, skipped by the motion modules, zero ControlNet residuals for it. The prompt is
empty, as in the release. Latents are posterior samples times the VAE scaling factor.

Randomness and resume follow `anima.methods.levitor.train`: every draw of a step comes from
generators seeded by ``(seed, step, process, stream)``, so resuming from ``checkpoint-k``
continues bit-exactly. The output is a weights directory the ``xdyna`` method loads:
``out/xdyna/adapter``, ``out/xdyna/pose_controlnet``, ``out/motion-adapter`` (stage 1) and
``out/xdyna/face_controlnet`` (stage 2), plus ``train_config.json`` and ``log.jsonl``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from anima.errors import InputError
from anima.io import atomic_dir
from anima.methods.levitor.train import list_checkpoints, resolve_resume, step_generator
from anima.methods.xdyna.adapter import DynamicsAdapter
from anima.methods.xdyna.dataset import XDynaBatch, XDynaDataset
from anima.methods.xdyna.pipeline import XDynaPipeline
from anima.methods.xdyna.reference_frame import motion_modules
from anima.training import (
    CHECKPOINT_PREFIX,
    CONFIG_FILE,
    LOG_FILE,
    STATE_FILE,
    TrainingSize,
    make_accelerator,
    prune_checkpoints,
    save_checkpoint,
    warmup_lr,
    write_json,
)
from anima.weights import Weights

DATA_STREAM, NOISE_STREAM = 0, 1
Stage = Literal["motion", "face"]
ProgressCallback = Callable[[int, int, float], None]


class XDynaTrainConfig(BaseModel):
    """Settings of an X-Dyna training stage (defaults: the paper's where it gives them)."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description="Toy-world style dataset directory.")
    out: Path = Field(description="Output: a weights directory, checkpoints, log.")
    stage: Stage = Field("motion", description="motion (stage 1) or face (stage 2).")
    init: Path | None = Field(None, description="Start from this weights directory (stage 2).")
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(1, ge=1)
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (paper: 1e-5).")
    lr_warmup_steps: int = Field(0, ge=0)
    adam_weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    size: TrainingSize = Field((896, 512), description="(H, W), multiples of 8.")
    num_frames: int = Field(16, ge=1, description="Generated frames a sample (paper: 16).")
    scene_prob: float = Field(
        0.5, ge=0, le=1, description="Share of scene clips with blank conditions (fusion)."
    )
    checkpoint_every: int = Field(500, ge=1)
    checkpoints_total_limit: int | None = Field(None, ge=1)
    resume: str | None = Field(None, description="Checkpoint directory, 'latest', or None.")
    seed: int = Field(0, ge=0, lt=2**63)
    log_every: int = Field(10, ge=1)
    quiet: bool = False


@dataclass
class XDynaTrainResult:
    start_step: int
    step: int
    losses: list[float]
    out: Path
    checkpoints: list[Path] = field(default_factory=list)
    seconds: float = 0.0


class Trainables(nn.Module):
    """The modules a stage trains, under one module for accelerate (shared, not copied)."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(modules)


def load_components(weights: Weights, init: Path | None, stage: Stage) -> dict[str, Any]:
    """Frozen SD parts plus the X-Dyna parts to train: from ``init`` (a weights directory, e.g.
    a stage-1 output) or the weights directory where present, else fresh: the adapter from the
    UNet (§3.2), ControlNets made from the SD UNet with zero convs (pose: 3 input channels,
    face: 6). With ``tiny`` the parts start fresh (not the smoke test's random ones)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from anima.methods.xdyna.loading import (
        check_adapter_layers,
        load_sd_components,
        load_xdyna_parts,
        tiny_xdyna_components,
    )
    from anima.methods.xdyna.method import SD15
    from anima.models.loading import load_model
    from anima.models.tiny_sd import tiny_sd_unet

    none = {"adapter": None, "pose_controlnet": None, "face_controlnet": None}
    if weights.builtin == "tiny":
        components = tiny_xdyna_components(seed=0) | none
    else:
        components = load_sd_components(weights, torch.float32)
        components |= load_xdyna_parts(weights, torch.float32, required=False)
    if init is not None:
        source = Weights(root=Path(init), allow_pickle=weights.allow_pickle)
        trained = load_xdyna_parts(source, torch.float32, required=False)
        components.update({k: v for k, v in trained.items() if v is not None})
    if stage == "face" and components["adapter"] is None:
        raise InputError("stage 'face' starts from a stage-1 result (xdyna/adapter)", "--init")
    unet = components["unet"]
    if components["adapter"] is None:
        components["adapter"] = DynamicsAdapter.from_unet(unet)
    missing = [k for k in ("pose_controlnet", "face_controlnet") if components[k] is None]
    if missing:
        if weights.builtin == "tiny":
            spatial = tiny_sd_unet(seed=0)
        else:
            folder = weights.require(SD15, "xdyna training") / "unet"
            spatial = load_model(UNet2DConditionModel, folder, "SD1.5 UNet", weights.allow_pickle)
        for key in missing:
            channels = 3 if key == "pose_controlnet" else 6
            components[key] = ControlNetModel.from_unet(spatial, conditioning_channels=channels)
    check_adapter_layers(components["adapter"], unet, "--init")
    return components


def xdyna_loss(
    pipe: XDynaPipeline,
    batch: XDynaBatch,
    text: Tensor,
    generator: torch.Generator,
    use_face: bool,
) -> Tensor:
    """Epsilon MSE of one batch (see the module docstring); random draws from ``generator``."""
    vae, scheduler = pipe.vae, pipe.scheduler
    frames = batch.frames
    b, f = frames.shape[:2]
    with torch.no_grad():
        flat = torch.cat([batch.reference, frames.flatten(0, 1)]) * 2.0 - 1.0
        dist = vae.encode(flat.to(vae.dtype)).latent_dist
        eps_post = torch.randn(dist.mean.shape, generator=generator)
        latents = (dist.mean + dist.std * eps_post) * vae.config.scaling_factor
    reference = latents[:b]
    z0 = latents[b:].reshape(b, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4)
    t = torch.randint(scheduler.config.num_train_timesteps, (b,), generator=generator)
    noise = torch.randn(z0.shape, generator=generator)
    noisy = scheduler.add_noise(z0, noise, t)
    prediction = pipe.predict_noise(
        noisy,
        reference,
        t,
        text.expand(b, -1, -1),
        batch.pose,
        batch.face if use_face else None,
    )
    return torch.mean((prediction.float() - noise) ** 2)


def _write_outputs(pipe: XDynaPipeline, out: Path, stage: Stage) -> None:
    """The trained parts in the weights-directory layout (atomically, part by part)."""
    parts: dict[str, Callable[[Path], None]]
    if stage == "motion":
        parts = {
            "xdyna/adapter": lambda p: pipe.adapter.save_pretrained(p),
            "xdyna/pose_controlnet": lambda p: pipe.pose_controlnet.save_pretrained(p),
            "motion-adapter": lambda p: pipe.unet.save_motion_modules(p),
        }
    else:
        parts = {"xdyna/face_controlnet": lambda p: pipe.face_controlnet.save_pretrained(p)}
    for name, save in parts.items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(target) as tmp:
            save(tmp)


def train_xdyna(
    config: XDynaTrainConfig,
    weights: Weights,
    on_progress: ProgressCallback | None = None,
) -> XDynaTrainResult:
    """Run one training stage; see the module docstring."""
    out = Path(config.out)
    dataset = XDynaDataset(config.data, config.num_frames, config.size)
    resume_dir = resolve_resume(config.resume, out)
    if resume_dir is None and config.resume is None and list_checkpoints(out):
        raise InputError(
            "the output directory already holds checkpoints; pass --resume latest or choose "
            "another --out",
            str(out),
        )
    accelerator = make_accelerator(out)
    components = load_components(weights, config.init, config.stage)
    pipe = XDynaPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    for model in (pipe.vae, pipe.text_encoder, pipe.unet, pipe.adapter, pipe.pose_controlnet):
        model.requires_grad_(False)
    if pipe.face_controlnet is not None:
        pipe.face_controlnet.requires_grad_(False)
    if config.stage == "motion":
        trained = {
            "adapter": pipe.adapter,
            "pose_controlnet": pipe.pose_controlnet,
            "motion_modules": nn.ModuleList(motion_modules(pipe.unet)),
        }
    else:
        trained = {"face_controlnet": pipe.face_controlnet}
    trainables = Trainables(trained)
    trainables.requires_grad_(True)
    trainables.train()
    params = [p for p in trainables.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.adam_weight_decay)
    # Prepared so that checkpoints hold the trained parts; the loss runs through the pipeline.
    _, optimizer = accelerator.prepare(trainables, optimizer)
    start = 0
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        start = int(json.loads((resume_dir / STATE_FILE).read_text())["step"])
    is_main = accelerator.is_main_process
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG_FILE, config.model_dump(mode="json"))
        if start == 0:
            (out / LOG_FILE).unlink(missing_ok=True)
    with torch.no_grad():
        text = pipe.encode_prompt([""])

    process = accelerator.process_index
    quiet = config.quiet or not sys.stderr.isatty() or not accelerator.is_local_main_process
    progress = tqdm(total=config.steps, initial=start, disable=quiet, desc="xdyna", unit="step")
    losses: list[float] = []
    checkpoints: list[Path] = []
    interval: list[float] = []
    began = interval_start = time.perf_counter()
    with pipe.adapter_context():
        for step in range(start + 1, config.steps + 1):
            batch = dataset.sample_batch(
                step_generator(config.seed, step, process, DATA_STREAM),
                config.batch_size,
                config.scene_prob,
            )
            generator = step_generator(config.seed, step, process, NOISE_STREAM)
            loss = xdyna_loss(pipe, batch, text, generator, use_face=config.stage == "face")
            accelerator.backward(loss)
            if accelerator.num_processes > 1:  # the loss ran outside the DDP wrapper
                for p in params:
                    if p.grad is not None:
                        p.grad = accelerator.reduce(p.grad, reduction="mean")
            lr = warmup_lr(config.lr, config.lr_warmup_steps, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(accelerator.reduce(loss.detach(), reduction="mean"))
            losses.append(value)
            interval.append(value)
            progress.update()
            progress.set_postfix(loss=f"{value:.4f}")
            if is_main and on_progress is not None:
                on_progress(step, config.steps, value)
            if step % config.log_every == 0 or step == config.steps:
                now = time.perf_counter()
                if is_main:
                    line = {
                        "stage": config.stage,
                        "step": step,
                        "loss": sum(interval) / len(interval),
                        "lr": lr,
                        "seconds": (now - interval_start) / len(interval),
                    }
                    with open(out / LOG_FILE, "a") as log:
                        log.write(json.dumps(line) + "\n")
                interval, interval_start = [], now
            if step % config.checkpoint_every == 0:
                final = save_checkpoint(
                    accelerator,
                    out / f"{CHECKPOINT_PREFIX}{step}",
                    {"step": step, "seed": config.seed, "stage": config.stage},
                )
                checkpoints.append(final)
                if is_main:
                    prune_checkpoints(list_checkpoints(out), config.checkpoints_total_limit)
    progress.close()
    seconds = time.perf_counter() - began
    accelerator.wait_for_everyone()
    if is_main:
        _write_outputs(pipe, out, config.stage)
        if config.stage == "face" and config.init is not None:
            _copy_missing(Path(config.init), out)
    accelerator.end_training()
    return XDynaTrainResult(start, config.steps, losses, out, checkpoints, seconds)


def _copy_missing(init: Path, out: Path) -> None:
    """Stage 2's output holds stage 1's parts too, so it is a complete weights directory."""
    for name in ("xdyna/adapter", "xdyna/pose_controlnet", "motion-adapter"):
        source, target = init / name, out / name
        if source.is_dir() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, target)
