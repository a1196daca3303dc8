"""Training X-Dyna (X-Dyna §3.4) on `anima.training.train_loop`: ``anima train xdyna``.

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

Randomness and resume are the loop's: every draw of micro-batch ``i`` comes from generators
seeded by ``(seed, i + 1, process, stream)`` (`XDynaTrainer`), so resuming from
``checkpoint-k`` continues bit-exactly, and ``log.jsonl`` holds each step once. The output is a
weights directory the ``xdyna`` method loads: ``out/xdyna/adapter``,
``out/xdyna/pose_controlnet``, ``out/motion-adapter`` (stage 1) and ``out/xdyna/face_controlnet``
(stage 2), plus ``train_config.json`` and ``log.jsonl``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from anima.errors import InputError
from anima.io import atomic_dir
from anima.methods.xdyna.dataset import XDynaBatch, XDynaDataset
from anima.methods.xdyna.reference_frame import motion_modules
from anima.training import (
    SIZE_FLAG,
    Flag,
    LoopConfig,
    ProgressCallback,
    RunConfig,
    Trainer,
    TrainingSize,
    make_accelerator,
    resume_or_fresh,
    start_run,
    step_generator,
    train_loop,
)
from anima.weights import Weights

if TYPE_CHECKING:
    from anima.methods.xdyna.pipeline import XDynaPipeline

DATA_STREAM, NOISE_STREAM = 0, 1
Stage = Literal["motion", "face"]


class XDynaTrainConfig(RunConfig):
    """Settings of an X-Dyna training stage (defaults: the paper's where it gives them). Fields
    with a `Flag` are ``anima train xdyna`` options."""

    data: Annotated[Path, Flag()] = Field(
        description="Clips: DATA/<clip>/frames/ (+ keypoints.json)."
    )
    out: Annotated[Path, Flag()] = Field(
        description="Output weights directory (+ log, checkpoints)."
    )
    stage: Annotated[Stage, Flag()] = Field(
        "motion", description="motion: adapter + pose ControlNet + motion module; face."
    )
    init: Annotated[Path | None, Flag()] = Field(
        None, description="Weights directory to start from (stage face: stage 1)."
    )
    steps: Annotated[int, Flag()] = Field(1000, ge=1, description="Optimizer steps.")
    batch_size: Annotated[int, Flag()] = Field(1, ge=1, description="Clips per step.")
    lr: Annotated[float, Flag()] = Field(
        1e-5, gt=0, description="AdamW learning rate (paper: 1e-5)."
    )
    lr_warmup_steps: Annotated[int, Flag()] = Field(0, ge=0, description="Linear warm-up steps.")
    size: Annotated[TrainingSize, SIZE_FLAG] = Field(
        (896, 512), description="Training size (multiples of 8)."
    )
    num_frames: Annotated[int, Flag("--frames")] = Field(
        16, ge=1, description="Generated frames per sample (paper: 16)."
    )
    scene_prob: Annotated[float, Flag()] = Field(
        0.5, ge=0, le=1, description="Share of scene clips with blank conditions."
    )


@dataclass
class XDynaTrainResult:
    """What a `train_xdyna` call did: the step it resumed from, the last step, the loss of
    every step it ran, the weights directory, the checkpoints it wrote, the loop's seconds."""

    start_step: int
    step: int
    losses: list[float]
    out: Path
    checkpoints: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def load_components(
    weights: Weights, init: Path | None, stage: Stage, seed: int = 0
) -> dict[str, Any]:
    """Frozen SD parts plus the X-Dyna parts to train: from ``init`` (a weights directory, e.g.
    a stage-1 output) or the weights directory where present, else fresh: the adapter from the
    UNet (§3.2), ControlNets made from the SD UNet with zero convs (pose: 3 input channels,
    face: 6; their condition stems drawn from ``seed``). With ``tiny`` the parts start fresh
    (not the smoke test's random ones)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from anima.methods.xdyna import SD15
    from anima.methods.xdyna.adapter import DynamicsAdapter
    from anima.methods.xdyna.loading import (
        check_adapter_layers,
        load_sd_components,
        load_xdyna_parts,
        tiny_xdyna_components,
    )
    from anima.models.loading import load_model
    from anima.models.seeding import seeded
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
        with seeded(seed):  # the stems are random: drawn from the run's seed, not the process
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
    """Epsilon MSE of one batch (see the module docstring) on the VAE's device; random draws
    from ``generator`` (a CPU generator)."""
    vae, scheduler = pipe.vae, pipe.scheduler
    device = vae.device
    frames = batch.frames.to(device)
    b, f = frames.shape[:2]
    with torch.no_grad():
        flat = torch.cat([batch.reference.to(device), frames.flatten(0, 1)]) * 2.0 - 1.0
        dist = vae.encode(flat.to(vae.dtype)).latent_dist
        eps_post = torch.randn(dist.mean.shape, generator=generator).to(device)
        latents = (dist.mean + dist.std * eps_post) * vae.config.scaling_factor
    reference = latents[:b]
    z0 = latents[b:].reshape(b, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4)
    t = torch.randint(scheduler.config.num_train_timesteps, (b,), generator=generator).to(device)
    noise = torch.randn(z0.shape, generator=generator).to(device)
    noisy = scheduler.add_noise(z0, noise, t)
    prediction = pipe.predict_noise(
        noisy,
        reference,
        t,
        text.expand(b, -1, -1),
        batch.pose.to(device),
        batch.face.to(device) if use_face else None,
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


class XDynaTrainer(Trainer):
    """A stage's trained parts, its micro-batches and `xdyna_loss`, for
    `anima.training.train_loop`. Micro-batch ``i`` draws its clips and its noise from the
    generators of index ``i + 1`` (the numbering of the first release of this trainer, kept so
    that runs reproduce)."""

    def __init__(
        self,
        config: XDynaTrainConfig,
        dataset: XDynaDataset,
        pipe: XDynaPipeline,
        trained: dict[str, nn.Module],
        text: Tensor,
    ) -> None:
        self.config, self.dataset, self.pipe = config, dataset, pipe
        self.trained, self.text = trained, text

    def modules(self) -> dict[str, nn.Module]:
        return self.trained

    def batch(self, index: int, process: int) -> XDynaBatch:
        config = self.config
        generator = step_generator(config.seed, index + 1, process, DATA_STREAM)
        return self.dataset.sample_batch(generator, config.batch_size, config.scene_prob)

    def loss(
        self, modules: Mapping[str, nn.Module], batch: XDynaBatch, index: int, process: int
    ) -> Tensor:
        generator = step_generator(self.config.seed, index + 1, process, NOISE_STREAM)
        use_face = self.config.stage == "face"
        return xdyna_loss(self.pipe, batch, self.text, generator, use_face=use_face)


def train_xdyna(
    config: XDynaTrainConfig,
    weights: Weights,
    on_progress: ProgressCallback | None = None,
) -> XDynaTrainResult:
    """Run one training stage; see the module docstring."""
    from anima.methods.xdyna.pipeline import XDynaPipeline

    out = Path(config.out)
    dataset = XDynaDataset(config.data, config.num_frames, config.size)
    resume_dir = resume_or_fresh(config.resume, out)
    accelerator = make_accelerator(out)
    components = load_components(weights, config.init, config.stage, config.seed)
    pipe = XDynaPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(accelerator.device)
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
    for module in trained.values():
        module.requires_grad_(True)
    if accelerator.is_main_process:
        start_run(out, config.model_dump(mode="json"), fresh=resume_dir is None)
    with torch.no_grad():
        text = pipe.encode_prompt([""])

    loop = LoopConfig(
        **config.loop_settings(),
        steps=config.steps,
        lr=config.lr,
        lr_warmup_steps=config.lr_warmup_steps,
        log_fields={"stage": config.stage},
        desc="xdyna",
    )
    trainer = XDynaTrainer(config, dataset, pipe, trained, text)
    with pipe.adapter_context():
        result = train_loop(accelerator, trainer, loop, resume_dir, on_progress)
    if accelerator.is_main_process:
        _write_outputs(pipe, out, config.stage)
        if config.stage == "face" and config.init is not None:
            _copy_missing(Path(config.init), out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return XDynaTrainResult(
        result.start_step, result.step, result.losses, out, result.checkpoints, result.seconds
    )


def _copy_missing(init: Path, out: Path) -> None:
    """Stage 2's output holds stage 1's parts too, so it is a complete weights directory."""
    for name in ("xdyna/adapter", "xdyna/pose_controlnet", "motion-adapter"):
        source, target = init / name, out / name
        if source.is_dir() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, target)
