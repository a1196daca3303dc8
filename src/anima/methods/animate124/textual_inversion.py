"""Animate124's textual inversion: a token for the reference image in SD1.5 (Animate124 §3.4,
"Semantic Refinement"; README, "Animate124") on `anima.training.train_loop`
(docs/architecture.md, "The training loop"): ``anima train animate124-token``, `train_token`,
and `load_token` for the refinement stage (SD1.5 is the base of ControlNet-Tile, which is
conditioned on prompts with this token).

What trains: one new token (default ``<animate124>``) added to SD1.5's `CLIPTokenizer`, its
embedding initialised to the mean of the token embeddings of the object's name
(``--init-words``, e.g. ``panda``; the release takes one word's single token, a mean also takes
names of several tokens). The embedding is a **separate parameter spliced in**: the text
encoder's whole embedding table, the rest of the text encoder, the UNet and the VAE are frozen
(no ``requires_grad``, never in the optimiser); a forward hook on the table puts the trained
(D,) vector at every position of the token's id (`TokenEmbedding`). Only when training ends is
the vector written into the table's new row, so no other row can change.

Each step (the release's settings): a batch of 16 augmented copies of the reference image at
512 px (`anima.methods.animate124.augment`: rotation, random resized crop, colour jitter, grey,
blur, flip, with the release's probabilities), each with a prompt drawn from `TEMPLATES` (the
object templates of textual inversion, as the release's script) around the token; SD1.5's
epsilon loss ``mean((eps - eps_theta(z_t, t, c))^2)`` with ``t ~ U{0..999}`` per image, DDPM's
forward process on SD1.5's training schedule, latents a VAE posterior sample times the scaling
factor; AdamW lr 1e-4 constant (weight decay 1e-2, no clipping), 3000 steps. The image is
composited on white by its mask when there is one (``--mask``, a SPEC object's selection, or
the image's own transparency): Animate124 trains on the foreground.

Randomness and resume are the loop's: micro-batch ``i`` draws its augmentations and templates
from ``step_generator(seed, i, process, DATA_STREAM)`` and its timesteps and noises from the
``NOISE_STREAM`` one; checkpoints hold the vector alone (``token_state.safetensors``) beside
accelerate's optimiser state, so resuming is bit-exact.

Output (``out``): ``learned_embeds.safetensors``, diffusers' textual-inversion format
(``{token: (D,) float32}``, loadable with a pipeline's ``load_textual_inversion(out)``), and
``animate124_token.json`` recording the token, the init words and their token ids, the image's
(and mask's) SHA-256, the base and the settings; plus ``train_config.json``, ``log.jsonl`` and
``checkpoint-*/``. A folder whose record matches the run is reused without training
(``cached``). Heavy libraries (diffusers, transformers) are imported inside the functions:
the CLI imports this module for its config.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from anima.errors import InputError
from anima.methods.animate124.augment import (
    AugmentSettings,
    augment_batch,
    base_image,
    flip_only,
)
from anima.spec import chosen_object
from anima.training import (
    Flag,
    LoopConfig,
    ProgressCallback,
    RunConfig,
    Trainer,
    make_accelerator,
    precision_dtype,
    read_record,
    resume_or_fresh,
    start_run,
    step_generator,
    train_loop,
    write_json,
)
from anima.weights import Weights

#: The embedding file (diffusers' ``TEXT_INVERSION_NAME_SAFE``) and the run's record.
EMBEDS_FILE = "learned_embeds.safetensors"
INFO_FILE = "animate124_token.json"
INFO_FORMAT = 1
#: The vector in a training checkpoint.
STATE_FILE = "token_state.safetensors"
#: The default placeholder token.
DEFAULT_TOKEN = "<animate124>"
#: Streams of the per-micro-batch generators.
DATA_STREAM, NOISE_STREAM = 0, 1
#: SD1.5's training schedule, for components that carry no scheduler config.
SD_TRAINING_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
#: Prompt templates (``{}`` is the token): the object templates of textual inversion (Gal et
#: al., "An image is worth one word"), which the release's script draws from.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)


class TokenTrainConfig(RunConfig):
    """Settings of a textual-inversion run (defaults: the release's, README, "Animate124").
    Fields with a `Flag` are ``anima train animate124-token`` options; ``spec`` is its SPEC
    argument."""

    spec: Path | None = Field(None, description="MotionSpec: its image and object.")
    image: Annotated[Path | None, Flag()] = Field(
        None, description="The reference image (instead of a SPEC)."
    )
    mask: Annotated[Path | None, Flag()] = Field(
        None,
        description="The object's mask: the image is composited on white outside it (default: "
        "the SPEC object's selection, or the image's transparency).",
    )
    out: Annotated[Path, Flag()] = Field(
        description="Output directory: learned_embeds.safetensors, its record, log."
    )
    init_words: Annotated[str | None, Flag()] = Field(
        None,
        description="The object's name; the token starts at the mean of its tokens' embeddings "
        "(default: the SPEC object's label).",
    )
    token: Annotated[str, Flag()] = Field(
        DEFAULT_TOKEN, min_length=1, description="The new token (not in the vocabulary)."
    )
    object_id: Annotated[int | None, Flag()] = Field(
        None, description="The spec's object to learn (default: the first moved one)."
    )
    steps: Annotated[int, Flag()] = Field(3000, ge=1, description="Optimizer steps.")
    lr: Annotated[float, Flag()] = Field(1e-4, gt=0, description="AdamW learning rate, constant.")
    batch_size: Annotated[int, Flag()] = Field(16, ge=1, description="Images a step.")
    resolution: Annotated[int, Flag()] = Field(
        512, ge=8, description="Training side (square, a multiple of 8)."
    )
    augment: Annotated[bool, Flag()] = Field(
        True, description="The release's heavy augmentations (else only flips)."
    )
    augmentations: AugmentSettings = Field(
        default_factory=AugmentSettings, description="Their probabilities and ranges."
    )
    mixed_precision: Annotated[Literal["no", "fp16", "bf16"], Flag()] = Field(
        "no", description="no, fp16 (the release's) or bf16: the UNet and VAE's dtype."
    )
    gradient_checkpointing: Annotated[bool, Flag()] = Field(
        False, description="Recompute the UNet's activations in the backward pass."
    )
    max_grad_norm: float | None = Field(
        None, gt=0, description="Gradient clipping; None (the release's): off."
    )

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value

    @field_validator("token")
    @classmethod
    def _one_word(cls, value: str) -> str:
        if value != value.strip() or any(c.isspace() for c in value):
            raise ValueError(f"must be one word without spaces, got {value!r}")
        return value


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class TokenInputs:
    """What a run trains on: the image file, its SHA-256 and pixels (3, H, W), the mask (H, W)
    float in [0, 1] or None, where the mask came from (``--mask``, ``alpha``, ``spec object
    N``), and the init words."""

    image_path: Path
    image_sha256: str
    image: Tensor
    mask: Tensor | None
    mask_source: str | None
    init_words: str

    @property
    def mask_sha256(self) -> str | None:
        """SHA-256 of the mask at 8 bits (None without a mask)."""
        if self.mask is None:
            return None
        levels = (self.mask.float().clamp(0, 1) * 255).round().to(torch.uint8)
        shape = "x".join(map(str, levels.shape)).encode()
        return hashlib.sha256(shape + levels.contiguous().numpy().tobytes()).hexdigest()


def _alpha(path: Path) -> Tensor | None:
    """The image's alpha in [0, 1] (H, W) when some pixel is not opaque, else None."""
    import numpy as np
    from PIL import Image, ImageOps

    from anima.io import has_transparent_pixels

    if not has_transparent_pixels(path):
        return None
    with Image.open(path) as img:
        rgba = ImageOps.exif_transpose(img).convert("RGBA")
        alpha = np.asarray(rgba)[..., 3].astype(np.float32) / 255.0
    return torch.from_numpy(alpha.copy())


def resolve_inputs(config: TokenTrainConfig, weights: Weights) -> TokenInputs:
    """Read and check the image (a SPEC's scene image or ``--image``), the mask (``--mask``,
    the SPEC object's selection, else the image's transparency) and the init words
    (``--init-words``, else the SPEC object's label); `InputError`s name the option."""
    from anima.io import read_image, read_mask

    if (config.spec is None) == (config.image is None):
        raise InputError("give either a SPEC or --image, not both", "SPEC/--image")
    mask: Tensor | None = None
    mask_source: str | None = None
    label: str | None = None
    if config.spec is not None:
        from anima.scene import build_scene
        from anima.spec import load_spec

        spec = load_spec(config.spec)
        image_path = spec.resolve(spec.image)
        obj = chosen_object(spec, config.object_id, "--object-id")
        if obj is not None and config.mask is None:
            scene = build_scene(spec, weights)
            image = scene.image.float()
            mask = (scene.instance == obj.id).float()
            mask_source = f"spec object {obj.id}"
        else:
            image = read_image(image_path, where="spec.image")
        label = obj.label if obj is not None else None
    else:
        assert config.image is not None
        image_path = Path(config.image)
        image = read_image(image_path, where="--image")
    size = (int(image.shape[-2]), int(image.shape[-1]))
    if config.mask is not None:
        mask = read_mask(config.mask, size, where="--mask", image_size=size).float()
        mask_source = "--mask"
    elif mask is None:
        alpha = _alpha(image_path)
        if alpha is not None and tuple(alpha.shape) == size:
            # read_image composites on black (premultiplied): un-premultiply for compositing
            image = torch.where(alpha > 0, image / alpha.clamp_min(1e-6), image).clamp(0, 1)
            mask, mask_source = alpha, "alpha"
    if config.init_words is not None and not config.init_words.strip():
        # CLIP's tokenizers drop whitespace: nothing else tokenizes to nothing (the tokenizer
        # checks again, `init_token_ids`)
        raise InputError(
            f"the init words {config.init_words!r} tokenize to nothing", "--init-words"
        )
    words = (config.init_words if config.init_words is not None else label or "").strip()
    if not words:
        raise InputError(
            "no init words: give the object's name (e.g. --init-words panda)", "--init-words"
        )
    return TokenInputs(image_path, sha256_file(image_path), image, mask, mask_source, words)


def run_record(config: TokenTrainConfig, inputs: TokenInputs, weights: Weights) -> dict[str, Any]:
    """What a token's record says it was trained on and with; equal records, same token."""
    return {
        "image_sha256": inputs.image_sha256,
        "mask_sha256": inputs.mask_sha256,
        "init_words": inputs.init_words,
        "token": config.token,
        "weights": weights.describe(),
        "steps": config.steps,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "resolution": config.resolution,
        "augment": config.augment,
        "augmentations": config.augmentations.model_dump(mode="json"),
        "templates": list(TEMPLATES),
        "adam_weight_decay": config.adam_weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "mixed_precision": config.mixed_precision,
        "seed": config.seed,
    }


# ------------------------------------------------------------------------------------------
# The token
# ------------------------------------------------------------------------------------------


def init_token_ids(tokenizer: Any, words: str) -> list[int]:
    """The token ids of ``words`` (no start/end tokens); `InputError` when there are none."""
    ids = list(tokenizer(words, add_special_tokens=False).input_ids)
    if not ids:
        raise InputError(f"the init words {words!r} tokenize to nothing", "--init-words")
    return [int(i) for i in ids]


def add_token(tokenizer: Any, text_encoder: Any, token: str, vector: Tensor | None = None) -> int:
    """Add ``token`` to ``tokenizer`` and a row for it to ``text_encoder``'s embedding table
    (set to ``vector`` when given); returns its id. `InputError` when the tokenizer already
    has it or does not read it back as one token."""
    if token in tokenizer.get_vocab():
        raise InputError(f"the token {token!r} is already in the tokenizer's vocabulary", "--token")
    tokenizer.add_tokens(token)
    token_id = int(tokenizer.convert_tokens_to_ids(token))
    if list(tokenizer(token, add_special_tokens=False).input_ids) != [token_id]:
        raise InputError(f"the tokenizer does not read {token!r} back as one token", "--token")
    table = text_encoder.get_input_embeddings()
    if table.weight.shape[0] < len(tokenizer):
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        table = text_encoder.get_input_embeddings()
    if vector is not None:
        with torch.no_grad():
            table.weight[token_id] = vector.to(table.weight.dtype)
    return token_id


class TokenEmbedding(nn.Module):
    """The trained (D,) vector of one token, spliced into a frozen text encoder's input
    embeddings wherever the token's id appears (`install`)."""

    def __init__(self, token: str, token_id: int, init: Tensor) -> None:
        super().__init__()
        self.token, self.token_id = token, int(token_id)
        self.vector = nn.Parameter(init.detach().clone().float())

    def forward(self, input_ids: Tensor, embeddings: Tensor) -> Tensor:
        """``embeddings`` (B, L, D) with the vector at the token's positions of ``input_ids``."""
        hit = (input_ids == self.token_id)[..., None]
        return torch.where(hit, self.vector.to(embeddings.dtype), embeddings)

    def install(self, text_encoder: Any) -> Any:
        """Splice the vector into ``text_encoder``'s embedding lookups; returns the hook's
        handle (``.remove()`` takes it off)."""

        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            return self.forward(args[0], output)

        return text_encoder.get_input_embeddings().register_forward_hook(hook)

    @torch.no_grad()
    def write_row(self, text_encoder: Any) -> None:
        """Copy the vector into the token's row of ``text_encoder``'s table (the only row it
        changes)."""
        table = text_encoder.get_input_embeddings().weight
        table[self.token_id] = self.vector.detach().to(table.dtype)


# ------------------------------------------------------------------------------------------
# Micro-batches and the loss
# ------------------------------------------------------------------------------------------


@dataclass
class TokenBatch:
    """One micro-batch: augmented images (B, 3, S, S) in [0, 1], their prompts and the prompts'
    token ids (B, 77)."""

    pixels: Tensor
    prompts: list[str]
    input_ids: Tensor


class TokenData:
    """The reference image's base (`anima.methods.animate124.augment.base_image`) and the
    prompts; `sample` draws a micro-batch."""

    def __init__(
        self,
        image: Tensor,
        mask: Tensor | None,
        token: str,
        tokenize: Callable[[list[str]], Tensor],
        resolution: int,
        batch_size: int,
        augment: bool = True,
        settings: AugmentSettings | None = None,
        templates: Sequence[str] = TEMPLATES,
    ) -> None:
        self.settings = settings or AugmentSettings()
        self.base = base_image(image.float(), mask, resolution, augment)
        self.token, self.tokenize = token, tokenize
        self.resolution, self.batch_size, self.augment = resolution, batch_size, augment
        self.templates = tuple(templates)

    def sample(self, generator: torch.Generator) -> TokenBatch:
        """The images (drawn first, one after another), then each one's template."""
        count, size = self.batch_size, self.resolution
        if self.augment:
            pixels = augment_batch(self.base, size, count, generator, self.settings)
        else:
            flip = self.settings.flip_prob
            pixels = torch.stack([flip_only(self.base, generator, flip) for _ in range(count)])
        picks = torch.randint(len(self.templates), (count,), generator=generator).tolist()
        prompts = [self.templates[i].format(self.token) for i in picks]
        return TokenBatch(pixels, prompts, self.tokenize(prompts))


class TokenObjective:
    """SD1.5's epsilon loss with the frozen parts: the VAE, the UNet, the text encoder (the
    token spliced in by a `TokenEmbedding`'s hook) and the DDPM training schedule."""

    def __init__(
        self,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        scheduler: Any,
        weight_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.scheduler, self.weight_dtype = scheduler, weight_dtype
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def latents(self, pixels: Tensor, eps: Tensor) -> Tensor:
        """VAE posterior samples (``eps`` standard normal) times the scaling factor."""
        vae = self.vae
        x = pixels.to(device=vae.device, dtype=vae.dtype) * 2.0 - 1.0
        dist = vae.encode(x).latent_dist
        latents = dist.mean + dist.std * eps.to(dist.mean.device, dist.mean.dtype)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents.float() - shift) * vae.config.scaling_factor

    def loss(self, batch: TokenBatch, generator: torch.Generator) -> dict[str, Tensor]:
        """``{"loss": mean((eps - eps_theta(z_t, t, c))^2)}`` over the batch, every random draw
        (timesteps, posterior samples, noises) from ``generator`` (CPU) in that order."""
        device = self.vae.device
        count = batch.pixels.shape[0]
        latent = (
            self.vae.config.latent_channels,
            *(s // self.vae_scale for s in batch.pixels.shape[-2:]),
        )
        steps = self.scheduler.config.num_train_timesteps
        t = torch.randint(steps, (count,), generator=generator).to(device)
        eps = torch.randn((count, *latent), generator=generator)
        noise = torch.randn((count, *latent), generator=generator).to(device)
        latents = self.latents(batch.pixels, eps)
        noisy = self.scheduler.add_noise(latents, noise, t)
        ids = batch.input_ids.to(self.text_encoder.device)
        text = self.text_encoder(ids).last_hidden_state
        prediction = self.unet(
            noisy.to(self.weight_dtype),
            t,
            encoder_hidden_states=text.to(self.weight_dtype),
            return_dict=False,
        )[0].float()
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        return {"loss": torch.nn.functional.mse_loss(prediction, target.float())}


class TokenTrainer(Trainer):
    """The token's vector, its micro-batches and the loss, for `anima.training.train_loop`."""

    def __init__(
        self,
        config: TokenTrainConfig,
        data: TokenData,
        objective: TokenObjective,
        embedding: TokenEmbedding,
        hook: Any = None,
    ) -> None:
        self.config, self.data, self.objective, self.embedding = config, data, objective, embedding
        #: The handle of the vector's splice into the text encoder (``.remove()`` ends it).
        self.hook = hook

    def modules(self) -> dict[str, nn.Module]:
        return {"token": self.embedding}

    def batch(self, index: int, process: int) -> TokenBatch:
        return self.data.sample(step_generator(self.config.seed, index, process, DATA_STREAM))

    def loss(
        self, modules: Mapping[str, nn.Module], batch: TokenBatch, index: int, process: int
    ) -> dict[str, Tensor]:
        generator = step_generator(self.config.seed, index, process, NOISE_STREAM)
        return self.objective.loss(batch, generator)

    def save_modules(self, modules: Mapping[str, nn.Module], folder: Path) -> bool:
        from safetensors.torch import save_file

        vector = self.embedding.vector.detach().cpu().contiguous()
        save_file({self.embedding.token: vector}, str(Path(folder) / STATE_FILE))
        return True

    def load_modules(self, modules: Mapping[str, nn.Module], folder: Path) -> bool:
        from safetensors.torch import load_file

        saved = load_file(str(Path(folder) / STATE_FILE))
        if set(saved) != {self.embedding.token}:
            raise InputError(
                f"the checkpoint holds the token {', '.join(saved)}, not {self.embedding.token}",
                str(folder),
            )
        with torch.no_grad():
            self.embedding.vector.copy_(saved[self.embedding.token])
        return True


def training_scheduler(components: Mapping[str, Any]) -> Any:
    """DDPM on SD1.5's training schedule (the components' ``scheduler_config``, else SD's)."""
    from diffusers import DDPMScheduler

    config = dict(components.get("scheduler_config") or SD_TRAINING_SCHEDULE)
    config.setdefault("prediction_type", "epsilon")
    return DDPMScheduler.from_config(config)


def build_trainer(
    config: TokenTrainConfig,
    inputs: TokenInputs,
    components: dict[str, Any],
    device: torch.device | str = "cpu",
    weight_dtype: torch.dtype = torch.float32,
) -> TokenTrainer:
    """The frozen SD1.5 ``components`` (`anima.methods.animate124.loading.load_sd15`'s keys,
    float32) on ``device``, the UNet and VAE in ``weight_dtype``, the token added to the
    tokenizer and the text encoder (its row at the init), the vector spliced in: a
    `TokenTrainer`, whose ``hook`` splices the vector into ``components["text_encoder"]``
    until removed."""
    tokenizer, text_encoder = components["tokenizer"], components["text_encoder"]
    unet, vae = components["unet"], components["vae"]
    words = init_token_ids(tokenizer, inputs.init_words)
    table = text_encoder.get_input_embeddings().weight
    init = table.detach()[words].float().mean(dim=0)
    token_id = add_token(tokenizer, text_encoder, config.token, init)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    unet.to(dtype=weight_dtype)
    vae.to(dtype=weight_dtype)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    embedding = TokenEmbedding(config.token, token_id, init).to(device)
    hook = embedding.install(text_encoder)

    def tokenize(prompts: list[str]) -> Tensor:
        return tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    data = TokenData(
        inputs.image,
        inputs.mask,
        config.token,
        tokenize,
        config.resolution,
        config.batch_size,
        config.augment,
        config.augmentations,
    )
    objective = TokenObjective(
        unet, vae, text_encoder, training_scheduler(components), weight_dtype
    )
    return TokenTrainer(config, data, objective, embedding, hook)


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------


def save_token(folder: Path, token: str, vector: Tensor, info: dict[str, Any]) -> Path:
    """Write ``folder/learned_embeds.safetensors`` (``{token: (D,) float32}``) and
    ``folder/animate124_token.json`` (``info`` with the token and the format); returns the
    embedding file. The record goes last and is removed first, so a folder whose record is
    present holds the embedding it describes."""
    from safetensors.torch import save_file

    from anima.io import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INFO_FILE).unlink(missing_ok=True)
    with atomic_path(folder / EMBEDS_FILE) as tmp:
        save_file({token: vector.detach().float().cpu().contiguous()}, str(tmp))
    write_json(
        folder / INFO_FILE,
        {"format": INFO_FORMAT, "method": "animate124", "token": token} | info,
    )
    return folder / EMBEDS_FILE


def read_token_info(folder: Path) -> dict[str, Any] | None:
    """The record of a complete token folder (embedding and record present), else None."""
    return read_record(folder, EMBEDS_FILE, INFO_FILE)


def load_token(run_dir: Path | str) -> tuple[str, Tensor]:
    """The learned ``(token, embedding)`` of a run folder (or its ``learned_embeds.safetensors``
    itself): the token string and its (D,) float32 vector, for the refinement stage
    (`add_token` puts it into a tokenizer and text encoder). `InputError` for a missing file
    or one that is not a single token's embedding."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(run_dir)
    if path.is_dir():
        path = path / EMBEDS_FILE
    if not path.is_file():
        raise InputError("textual-inversion embedding not found", str(path))
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(
            f"cannot read the textual-inversion embedding ({error})", str(path)
        ) from error
    if len(state) != 1:
        raise InputError(f"expected one token's embedding, found {len(state)} tensors", str(path))
    ((token, vector),) = state.items()
    if vector.dim() == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if vector.dim() != 1:
        raise InputError(f"the embedding of {token!r} is not one vector", str(path))
    return token, vector.float()


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


@dataclass
class TokenTrainResult:
    """What a `train_token` call did: the embedding file, the token and its vector, the
    record; ``cached`` when an earlier run's matching token was reused (nothing trained); else
    the step it resumed from, the last step, every step's loss, the checkpoints, the loop's
    seconds, and the tokenizer and text encoder with the token in (its row written)."""

    embeds_file: Path
    token: str
    embedding: Tensor
    info: dict[str, Any]
    cached: bool = False
    start_step: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    tokenizer: Any = None
    text_encoder: Any = None


def train_token(
    config: TokenTrainConfig,
    weights: Weights,
    on_progress: ProgressCallback | None = None,
    inputs: TokenInputs | None = None,
    components: dict[str, Any] | None = None,
) -> TokenTrainResult:
    """Learn the token (see the module docstring), or return ``config.out``'s when its record
    matches this run (unless ``config.resume`` names a checkpoint). ``inputs``: already
    resolved (`resolve_inputs`); ``components``: SD1.5's (`load_sd15`'s keys, float32, used
    and changed: the token is added), else loaded from ``weights``."""
    out = Path(config.out)
    inputs = inputs or resolve_inputs(config, weights)
    record = run_record(config, inputs, weights)
    if config.resume in (None, "latest"):
        info = read_token_info(out)
        if info is not None and info.get("run") == record:
            token, vector = load_token(out)
            return TokenTrainResult(out / EMBEDS_FILE, token, vector, info, cached=True)
    resume_dir = resume_or_fresh(config.resume, out)
    accelerator = make_accelerator(out, config.mixed_precision)
    weight_dtype = precision_dtype(accelerator)
    if components is None:
        from anima.methods.animate124.loading import load_components

        components = load_components(weights, torch.float32, priors=("sd15",))["sd15"]
    trainer = build_trainer(config, inputs, components, accelerator.device, weight_dtype)
    if accelerator.is_main_process:
        start_run(out, config.model_dump(mode="json"), fresh=resume_dir is None)
    loop = LoopConfig(
        **config.loop_settings(), steps=config.steps, lr=config.lr, desc="animate124-token"
    )
    try:
        result = train_loop(accelerator, trainer, loop, resume_dir, on_progress)
    finally:
        trainer.hook.remove()
    embedding = trainer.embedding
    embedding.write_row(components["text_encoder"])
    words = init_token_ids(components["tokenizer"], inputs.init_words)
    info = {
        "init_words": inputs.init_words,
        "init_token_ids": words,
        "image_sha256": inputs.image_sha256,
        "mask": inputs.mask_source,
        "run": record,
    }
    vector = embedding.vector.detach().float().cpu().clone()
    if accelerator.is_main_process and not result.stopped:
        save_token(out, config.token, vector, info)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TokenTrainResult(
        out / EMBEDS_FILE,
        config.token,
        vector,
        read_token_info(out) or info,
        False,
        result.start_step,
        result.step,
        result.losses,
        result.checkpoints,
        result.seconds,
        components["tokenizer"],
        components["text_encoder"],
    )


__all__ = [
    "DEFAULT_TOKEN",
    "EMBEDS_FILE",
    "INFO_FILE",
    "TEMPLATES",
    "TokenBatch",
    "TokenData",
    "TokenEmbedding",
    "TokenInputs",
    "TokenObjective",
    "TokenTrainConfig",
    "TokenTrainResult",
    "TokenTrainer",
    "add_token",
    "build_trainer",
    "init_token_ids",
    "load_token",
    "read_token_info",
    "resolve_inputs",
    "run_record",
    "save_token",
    "train_token",
]
