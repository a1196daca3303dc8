"""I2V3D's LoRA customisation with multi-view augmentation (I2V3D §3.2.1, Eq. 1) on
`anima.training.train_loop` (docs/architecture.md, "The training loop"): ``anima train
i2v3d-lora``, and `train_lora`, which the method calls to train on the fly and cache by the
image's hash.

What trains: a LoRA of rank 32, alpha 32 on ``to_q, to_k, to_v, to_out.0, ff.net.0.proj,
ff.net.2`` of the base UNet (`anima.methods.i2v3d.lora`); the UNet, VAE and text encoders are
frozen. The base is SDXL (the paper's) or SD1.5, the same code: SDXL's UNet also takes its added
conditions, the pooled text embedding of the second text encoder and the six time ids
``(original H, W, crop top, left, target H, W)``.

Each step (the release's settings, README, "I2V3D"): batch 1, AdamW (lr 1e-4 constant, weight
decay 1e-4), gradients clipped to 1, 500 steps.

- **Input image**: resized so its short side is the resolution (512), a random square crop of
  that side, flipped with probability 0.5 (crop top-left in the flipped image's coordinates,
  as SDXL's conditioning reads it); prompt ``c_i``.
- **One augmented view** drawn at random (`anima.methods.i2v3d.views`), neither cropped nor
  flipped, with its mask; prompt ``c_fg``.
- **Loss (Eq. 1)**: ``L = mean((eps - eps_theta(z_t, t, c_i))^2)
  + lambda * mean(M * (eps' - eps_theta(z'_t, t, c_fg))^2)``, lambda = 1, M the view's mask at
  latent size (`views.latent_mask`, each latent pixel's share of the object); the view is
  composited over white with its mask before the VAE, so pixels outside it change neither the
  loss nor its gradient. One timestep ``t ~ U{0..T-1}`` for both terms (Eq. 1 writes one t), a
  noise each (the two latents may differ in size); latents are VAE posterior samples times the
  scaling factor; DDPM's forward process on the base's training schedule (a `DDPMScheduler`
  from the base's scheduler config); the target is eps (or v for a v-prediction base).
- **Prompts**: the paper's, ``"a {object} in {environment}"`` for the input and ``"a {object}"``
  for the views (``--object``, ``--environment``; from a spec, the object's label and the spec's
  prompt when those are not given); with ``release_prompts`` the release's: the input's prompt
  for the views too.

Randomness and resume are the loop's: micro-batch ``i`` draws its crop, flip and view from
``step_generator(seed, i, process, DATA_STREAM)`` and its timestep and noises from the
``NOISE_STREAM`` one; checkpoints hold the adapter alone (``lora_state.safetensors``) beside
accelerate's optimiser state, so resuming is bit-exact.

Output (``out``): ``pytorch_lora_weights.safetensors`` in diffusers' LoRA format (loadable with
``load_lora_weights``) and ``i2v3d_lora.json`` recording the base, the image's SHA-256, the
views' digest, the prompts and the settings (`anima.methods.i2v3d.lora`), plus
``train_config.json``, ``log.jsonl`` and ``checkpoint-*/``. A folder whose record matches the
run (same base, image, views, prompts and settings) is reused: `train_lora` returns it without
training (``cached``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from anima.errors import InputError
from anima.io import read_image
from anima.methods.i2v3d.lora import (
    LORA_FILE,
    LORA_TARGETS,
    Base,
    attach_lora,
    lora_state,
    read_lora_info,
    save_lora,
    set_lora_state,
    sha256_file,
)
from anima.methods.i2v3d.views import (
    AUTO_ANGLES,
    View,
    composite,
    latent_mask,
    read_view_folder,
    render_views,
    resize_image,
    resized_view,
    views_digest,
)
from anima.models.schedules import SD_NOISE_SCHEDULE
from anima.spec import chosen_object
from anima.training import (
    Flag,
    LoopConfig,
    ProgressCallback,
    RunConfig,
    Trainer,
    list_checkpoints,
    make_accelerator,
    precision_dtype,
    resume_or_fresh,
    start_run,
    step_generator,
    train_loop,
)
from anima.weights import Weights

#: Streams of the per-micro-batch generators.
DATA_STREAM, NOISE_STREAM = 0, 1
#: The adapter in a training checkpoint.
STATE_FILE = "lora_state.safetensors"
#: A folder of views, or views rendered by anima.
AUTO = "auto"
#: SD's training schedule, for a base whose components carry no scheduler.
SD_TRAINING_SCHEDULE: dict[str, Any] = SD_NOISE_SCHEDULE


class LoraTrainConfig(RunConfig):
    """Settings of an I2V3D LoRA run (defaults: the release's, README, "I2V3D"). Fields with
    a `Flag` are ``anima train i2v3d-lora`` options; ``spec`` is its SPEC argument."""

    spec: Path | None = Field(None, description="MotionSpec: its image, object and prompt.")
    image: Annotated[Path | None, Flag()] = Field(
        None, description="The input image (instead of a SPEC)."
    )
    out: Annotated[Path, Flag()] = Field(
        description="Output directory: pytorch_lora_weights.safetensors, its record, log."
    )
    views: Annotated[str, Flag()] = Field(
        AUTO,
        description="Folder of novel views with masks (NAME.png + NAME_mask.png, or RGBA), or "
        "'auto': the object turned by anima's renderer (needs a SPEC).",
    )
    base: Annotated[Literal["sdxl", "sd15"], Flag()] = Field(
        "sdxl", description="Base model: sdxl (the paper's) or sd15."
    )
    steps: Annotated[int, Flag()] = Field(500, ge=1, description="Optimizer steps.")
    lr: Annotated[float, Flag()] = Field(1e-4, gt=0, description="AdamW learning rate, constant.")
    rank: Annotated[int, Flag()] = Field(32, ge=1, description="LoRA rank.")
    lora_alpha: Annotated[float | None, Flag()] = Field(
        None, gt=0, description="LoRA alpha (default: the rank)."
    )
    resolution: Annotated[int, Flag()] = Field(
        512, ge=8, description="Training short side; square random crops of the input."
    )
    flip_prob: float = Field(0.5, ge=0, le=1, description="Horizontal flips of the input.")
    aug_weight: Annotated[float, Flag()] = Field(
        1.0, ge=0, description="lambda of Eq. 1: weight of the view loss."
    )
    object_name: Annotated[str | None, Flag("--object")] = Field(
        None, description="The object's name in the prompts (default: its label in the spec)."
    )
    environment: Annotated[str | None, Flag()] = Field(
        None, description="Where it is: the input's prompt is 'a OBJECT in ENVIRONMENT'."
    )
    object_id: Annotated[int | None, Flag()] = Field(
        None, description="The spec's object to learn (default: the first moved one)."
    )
    release_prompts: Annotated[bool, Flag()] = Field(
        False, description="The release's prompts: the input's prompt for the views too."
    )
    auto_angles: tuple[float, ...] = Field(
        AUTO_ANGLES, min_length=1, description="Turns of the 'auto' views, degrees."
    )
    adam_weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    mixed_precision: Annotated[Literal["no", "fp16", "bf16"], Flag()] = Field(
        "no", description="no, fp16 (the release's) or bf16."
    )
    gradient_checkpointing: Annotated[bool, Flag()] = Field(
        False, description="Recompute the UNet's activations in the backward pass."
    )

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.rank)


# ------------------------------------------------------------------------------------------
# Inputs: the image, the views, the prompts
# ------------------------------------------------------------------------------------------


@dataclass
class LoraInputs:
    """What a run trains on: the image (file, SHA-256, pixels), the views at the training
    resolution, and the prompts of the input (``c_i``) and of the views (``c_fg``)."""

    image_path: Path
    image_sha256: str
    image: Tensor
    views: list[View]
    image_prompt: str
    view_prompt: str


def lora_prompts(
    object_name: str | None,
    environment: str | None,
    spec_prompt: str = "",
    release: bool = False,
) -> tuple[str, str]:
    """The prompts ``(c_i, c_fg)`` (I2V3D §3.2.1): ``"a {object} in {environment}"`` and
    ``"a {object}"``; without an environment the spec's prompt (else ``"a {object}"``) for the
    input. ``release``: the input's prompt for both, as the release does."""
    name = (object_name or "").strip() or "object"
    view_prompt = f"a {name}"
    if environment and environment.strip():
        image_prompt = f"a {name} in {environment.strip()}"
    elif spec_prompt.strip():
        image_prompt = spec_prompt.strip()
    else:
        image_prompt = view_prompt
    return image_prompt, image_prompt if release else view_prompt


def resolve_inputs(
    config: LoraTrainConfig, weights: Weights, spec: Any = None, scene: Any = None
) -> LoraInputs:
    """Read and check everything a run needs besides the models (`InputError`s name the
    option): the image (a SPEC's or ``--image``), the views (a folder, or ``auto`` rendered
    from the SPEC's scene) and the prompts. ``spec`` (a `MotionSpec`) and its ``scene``, when
    the caller has them (the method), stand for ``config.spec``."""
    from anima.spec import load_spec

    if spec is None:
        if (config.spec is None) == (config.image is None):
            raise InputError("give either a SPEC or --image, not both", "SPEC/--image")
        spec = load_spec(config.spec) if config.spec is not None else None
    if spec is not None:
        image_path = spec.resolve(spec.image)
        where = "spec.image"
    else:
        assert config.image is not None
        image_path, where = Path(config.image), "--image"
    image = read_image(image_path, where=where)
    obj = chosen_object(spec, config.object_id, "--object-id") if spec is not None else None
    if config.views == AUTO:
        if spec is None or obj is None:
            raise InputError("'auto' views turn a spec's object: give a SPEC with one", "--views")
        from anima.scene import build_scene

        scene = scene if scene is not None else build_scene(spec, weights)
        views = render_views(spec, scene, obj.id, config.resolution, tuple(config.auto_angles))
    else:
        views = [resized_view(v, config.resolution) for v in read_view_folder(Path(config.views))]
    name = config.object_name or (obj.label if obj is not None else None)
    image_prompt, view_prompt = lora_prompts(
        name, config.environment, spec.prompt if spec is not None else "", config.release_prompts
    )
    return LoraInputs(image_path, sha256_file(image_path), image, views, image_prompt, view_prompt)


def run_record(config: LoraTrainConfig, inputs: LoraInputs, weights: Weights) -> dict[str, Any]:
    """What a LoRA's record says it was trained on and with; equal records, same LoRA."""
    return {
        "image_sha256": inputs.image_sha256,
        "views_sha256": views_digest(inputs.views),
        "views": [v.name for v in inputs.views],
        "prompts": {"image": inputs.image_prompt, "views": inputs.view_prompt},
        "weights": weights.describe(),
        "rank": config.rank,
        "alpha": config.alpha,
        "target_modules": list(LORA_TARGETS),
        "steps": config.steps,
        "lr": config.lr,
        "resolution": config.resolution,
        "flip_prob": config.flip_prob,
        "aug_weight": config.aug_weight,
        "adam_weight_decay": config.adam_weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "mixed_precision": config.mixed_precision,
        "seed": config.seed,
    }


# ------------------------------------------------------------------------------------------
# Micro-batches
# ------------------------------------------------------------------------------------------


@dataclass
class LoraSample:
    """One micro-batch: the input's crop (3, S, S) with its top-left (in the flipped image when
    flipped), and a view (3, h, w) with its mask (h, w)."""

    image: Tensor
    crop_top_left: tuple[int, int]
    flipped: bool
    view: Tensor
    view_mask: Tensor
    view_index: int


class LoraData:
    """The input image at the training resolution (short side ``resolution``) and the views;
    `sample` draws a micro-batch."""

    def __init__(
        self, image: Tensor, views: list[View], resolution: int, flip_prob: float = 0.5
    ) -> None:
        if not views:
            raise ValueError("no views")
        self.original_size = (int(image.shape[-2]), int(image.shape[-1]))
        scale = resolution / min(self.original_size)
        size = tuple(max(resolution, round(s * scale)) for s in self.original_size)
        self.image = resize_image(image, size)  # type: ignore[arg-type]
        self.views, self.resolution, self.flip_prob = views, resolution, flip_prob

    def sample(self, generator: torch.Generator) -> LoraSample:
        """A random crop (and flip) of the input and a random view, drawn in that order."""
        side = self.resolution
        height, width = self.image.shape[-2:]
        top = int(torch.randint(height - side + 1, (1,), generator=generator))
        left = int(torch.randint(width - side + 1, (1,), generator=generator))
        flipped = bool(torch.rand((1,), generator=generator) < self.flip_prob)
        index = int(torch.randint(len(self.views), (1,), generator=generator))
        crop = self.image[:, top : top + side, left : left + side]
        if flipped:
            crop = crop.flip(-1)
            left = width - side - left
        view = self.views[index]
        return LoraSample(crop, (top, left), flipped, view.image, view.mask, index)


# ------------------------------------------------------------------------------------------
# Eq. 1
# ------------------------------------------------------------------------------------------


@dataclass
class TextCondition:
    """A prompt's UNet conditioning: ``embeds`` (1, L, D), and SDXL's ``pooled`` (1, P)."""

    embeds: Tensor
    pooled: Tensor | None = None


@torch.no_grad()
def encode_prompts(components: dict[str, Any], base: Base, prompts: list[str]) -> list[Any]:
    """Each prompt's `TextCondition`, encoded by the base pipeline's own ``encode_prompt``
    (SDXL: both encoders' penultimate states, the second's projected pooled output), as at
    inference."""
    from anima.methods.i2v3d.lora import pipeline_class

    parts = {k: v for k, v in components.items() if k != "controlnet"}
    parts.setdefault("scheduler", training_scheduler(components))
    if base == "sd15":
        parts |= {"safety_checker": None, "feature_extractor": None}
        parts["requires_safety_checker"] = False
    pipe = pipeline_class(base)(**parts)
    device = components["text_encoder"].device
    conditions = []
    for prompt in prompts:
        if base == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            conditions.append(TextCondition(embeds.float(), pooled.float()))
        else:
            embeds, _ = pipe.encode_prompt(prompt, device, 1, False)
            conditions.append(TextCondition(embeds.float()))
    return conditions


def sdxl_time_ids(
    original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]
) -> Tensor:
    """SDXL's added time ids (1, 6): original (H, W), crop (top, left), target (H, W)."""
    return torch.tensor([[*original_size, *crop_top_left, *target_size]], dtype=torch.float32)


class LoraObjective:
    """Eq. 1 with the frozen parts: the VAE, the training scheduler (DDPM) and the prompts'
    conditions (see the module docstring)."""

    def __init__(
        self,
        vae: Any,
        scheduler: Any,
        image_text: TextCondition,
        view_text: TextCondition,
        original_size: tuple[int, int],
        weight_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.vae, self.scheduler = vae, scheduler
        self.image_text, self.view_text = image_text, view_text
        self.original_size, self.weight_dtype = original_size, weight_dtype
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def _latents(self, pixels: Tensor, eps: Tensor) -> Tensor:
        """A VAE posterior sample (``eps`` standard normal) times the scaling factor."""
        vae = self.vae
        x = pixels[None].to(device=vae.device, dtype=vae.dtype) * 2.0 - 1.0
        dist = vae.encode(x).latent_dist
        latents = dist.mean + dist.std * eps.to(dist.mean.device, dist.mean.dtype)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents.float() - shift) * vae.config.scaling_factor

    def _squared_error(
        self,
        unet: nn.Module,
        latents: Tensor,
        noise: Tensor,
        t: Tensor,
        text: TextCondition,
        time_ids: Tensor,
    ) -> Tensor:
        """(1, C, h, w) squared error of the UNet's prediction at ``z_t``."""
        device = latents.device
        noisy = self.scheduler.add_noise(latents, noise, t)
        added = None
        if text.pooled is not None:
            added = {
                "text_embeds": text.pooled.to(device, self.weight_dtype),
                "time_ids": time_ids.to(device, self.weight_dtype),
            }
        prediction = unet(
            noisy.to(self.weight_dtype),
            t,
            encoder_hidden_states=text.embeds.to(device, self.weight_dtype),
            added_cond_kwargs=added,
            return_dict=False,
        )[0].float()
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        return (prediction - target) ** 2

    def loss(
        self, unet: nn.Module, sample: LoraSample, generator: torch.Generator, aug_weight: float
    ) -> dict[str, Tensor]:
        """``{"loss": image + aug_weight * view, "image": ..., "view": ...}`` (Eq. 1), every
        random draw from ``generator`` (CPU) in a fixed order."""
        device = self.vae.device
        channels = self.vae.config.latent_channels
        image_latent = (channels, *(s // self.vae_scale for s in sample.image.shape[-2:]))
        view_latent = (channels, *(s // self.vae_scale for s in sample.view.shape[-2:]))
        steps = self.scheduler.config.num_train_timesteps
        t = torch.randint(steps, (1,), generator=generator).to(device)
        image_eps = torch.randn((1, *image_latent), generator=generator)
        image_noise = torch.randn((1, *image_latent), generator=generator).to(device)
        view_eps = torch.randn((1, *view_latent), generator=generator)
        view_noise = torch.randn((1, *view_latent), generator=generator).to(device)

        image_z = self._latents(sample.image, image_eps)
        size = tuple(sample.image.shape[-2:])
        image_ids = sdxl_time_ids(self.original_size, sample.crop_top_left, size)
        image_term = self._squared_error(unet, image_z, image_noise, t, self.image_text, image_ids)

        view_z = self._latents(composite(sample.view, sample.view_mask), view_eps)
        view_size = tuple(sample.view.shape[-2:])
        view_ids = sdxl_time_ids(view_size, (0, 0), view_size)
        view_term = self._squared_error(unet, view_z, view_noise, t, self.view_text, view_ids)
        mask = latent_mask(sample.view_mask, view_latent[1:]).to(device)

        image_loss = image_term.mean()
        view_loss = (mask * view_term).mean()
        return {"loss": image_loss + aug_weight * view_loss, "image": image_loss, "view": view_loss}


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


class LoraTrainer(Trainer):
    """The LoRA UNet, its micro-batches and Eq. 1, for `anima.training.train_loop`."""

    def __init__(
        self, config: LoraTrainConfig, data: LoraData, objective: LoraObjective, unet: nn.Module
    ) -> None:
        self.config, self.data, self.objective, self.unet = config, data, objective, unet

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def batch(self, index: int, process: int) -> LoraSample:
        return self.data.sample(step_generator(self.config.seed, index, process, DATA_STREAM))

    def loss(
        self, modules: Mapping[str, nn.Module], batch: LoraSample, index: int, process: int
    ) -> dict[str, Tensor]:
        generator = step_generator(self.config.seed, index, process, NOISE_STREAM)
        return self.objective.loss(modules["unet"], batch, generator, self.config.aug_weight)

    def save_modules(self, modules: Mapping[str, nn.Module], folder: Path) -> bool:
        from safetensors.torch import save_file

        save_file(lora_state(modules["unet"]), str(Path(folder) / STATE_FILE))
        return True

    def load_modules(self, modules: Mapping[str, nn.Module], folder: Path) -> bool:
        from safetensors.torch import load_file

        set_lora_state(modules["unet"], load_file(str(Path(folder) / STATE_FILE)))
        return True


def training_scheduler(components: dict[str, Any]) -> Any:
    """DDPM on the base's training schedule (its scheduler's config, else SD's)."""
    from diffusers import DDPMScheduler

    scheduler = components.get("scheduler")
    if scheduler is None:
        return DDPMScheduler(**SD_TRAINING_SCHEDULE)
    return DDPMScheduler.from_config(scheduler.config)


def build_trainer(
    config: LoraTrainConfig,
    inputs: LoraInputs,
    components: dict[str, Any],
    device: torch.device | str = "cpu",
    weight_dtype: torch.dtype = torch.float32,
) -> LoraTrainer:
    """The frozen base (``components``, fp32, as `anima.methods.i2v3d.loading.load_base`
    gives them) on ``device``, the UNet in ``weight_dtype`` with the LoRA attached (fp32), the
    prompts encoded, the data ready: a `LoraTrainer`."""
    unet, vae = components["unet"], components["vae"]
    for module in components.values():
        if isinstance(module, nn.Module):
            module.requires_grad_(False)
            module.eval()
            module.to(device)
    image_text, view_text = encode_prompts(
        components, config.base, [inputs.image_prompt, inputs.view_prompt]
    )
    if weight_dtype != torch.float32:
        unet.to(dtype=weight_dtype)
    params = attach_lora(unet, config.rank, config.alpha, config.seed)
    for p in params:
        p.data = p.data.float()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    data = LoraData(inputs.image, inputs.views, config.resolution, config.flip_prob)
    objective = LoraObjective(
        vae, training_scheduler(components), image_text, view_text, data.original_size, weight_dtype
    )
    return LoraTrainer(config, data, objective, unet)


@dataclass
class LoraTrainResult:
    """What a `train_lora` call did: the LoRA file and its record; ``cached`` when an earlier
    run's matching LoRA was reused (nothing trained, ``unet`` None); else the step it resumed
    from, the last step, every step's loss, the checkpoints, the loop's seconds and the trained
    UNet (with its peft adapter)."""

    lora_file: Path
    info: dict[str, Any]
    cached: bool = False
    start_step: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    unet: nn.Module | None = None


def train_lora(
    config: LoraTrainConfig,
    weights: Weights,
    on_progress: ProgressCallback | None = None,
    inputs: LoraInputs | None = None,
) -> LoraTrainResult:
    """Train the LoRA (see the module docstring), or return ``config.out``'s when its record
    matches this run (unless ``config.resume`` names a checkpoint). ``inputs``: already
    resolved (`resolve_inputs`), e.g. by the method."""
    from anima.methods.i2v3d.loading import load_base

    out = Path(config.out)
    inputs = inputs or resolve_inputs(config, weights)
    record = run_record(config, inputs, weights)
    if config.resume in (None, "latest"):
        info = read_lora_info(out)
        if info is not None and info.get("base") == config.base and info.get("run") == record:
            return LoraTrainResult(out / LORA_FILE, info, cached=True)
    resume_dir = resume_or_fresh(config.resume, out)
    accelerator = make_accelerator(out, config.mixed_precision)
    weight_dtype = precision_dtype(accelerator)
    components = load_base(weights, torch.float32, config.base)
    trainer = build_trainer(config, inputs, components, accelerator.device, weight_dtype)
    for name in ("text_encoder", "text_encoder_2"):
        components.pop(name, None)  # encoded once; free their memory
    if accelerator.is_main_process:
        start_run(out, config.model_dump(mode="json"), fresh=resume_dir is None)
    loop = LoopConfig(**config.loop_settings(), steps=config.steps, lr=config.lr, desc="i2v3d-lora")
    result = train_loop(accelerator, trainer, loop, resume_dir, on_progress)
    info = {"base": config.base, "image_sha256": inputs.image_sha256, "run": record}
    if accelerator.is_main_process:
        save_lora(trainer.unet, out, config.base, info)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return LoraTrainResult(
        out / LORA_FILE,
        read_lora_info(out) or info,
        False,
        result.start_step,
        result.step,
        result.losses,
        result.checkpoints,
        result.seconds,
        trainer.unet,
    )


def cached_lora(
    spec: Any,
    scene: Any,
    weights: Weights,
    base: Base,
    steps: int = 500,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """The LoRA folder for ``spec``'s image (I2V3D §3.2.1, with ``auto`` views and the
    paper's prompts): trained once and kept in anima's cache (`anima.cache`) under a key of
    everything it was trained on and with, so the next run on the same image and settings
    reuses it, and an interrupted one resumes from its last checkpoint."""
    import hashlib
    import json

    from anima.cache import cache_dir

    draft = LoraTrainConfig(out=cache_dir("i2v3d-lora"), base=base, steps=steps, quiet=True)
    inputs = resolve_inputs(draft, weights, spec, scene)
    record = json.dumps(run_record(draft, inputs, weights) | {"base": base}, sort_keys=True)
    key = hashlib.sha256(record.encode()).hexdigest()[:16]
    out = cache_dir("i2v3d-lora", f"{base}-{key}")
    resume = "latest" if list_checkpoints(out) else None
    config = draft.model_copy(update={"out": out, "resume": resume})
    return train_lora(config, weights, on_progress, inputs).lora_file.parent


__all__ = [
    "cached_lora",
    "AUTO",
    "LoraData",
    "LoraInputs",
    "LoraObjective",
    "LoraSample",
    "LoraTrainConfig",
    "LoraTrainResult",
    "LoraTrainer",
    "TextCondition",
    "build_trainer",
    "encode_prompts",
    "lora_prompts",
    "resolve_inputs",
    "run_record",
    "sdxl_time_ids",
    "train_lora",
    "training_scheduler",
]
