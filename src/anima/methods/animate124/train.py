"""Animate124's stages in a run folder, each checkpointed and resumable (Animate124 §3.2-3.4).

(docs/architecture.md, "The training loop", "A method folder".) A run folder holds::

    RUN/reference.safetensors     the reference view (image, mask, depth) the run is fitted to
    RUN/token/                    the textual-inversion token, when trained (`textual_inversion`)
    RUN/<stage>/                  static, dynamic, refine: one `train_loop` run each
        train_config.json         the stage's settings (a partial stage resumes only with these)
        log.jsonl, checkpoint-N/  the loop's log (losses a line) and checkpoints
        field.safetensors         the trained field, written when the stage finishes
        stage.json                the field's configuration and the finished stage's record

`train_stage` runs one stage: a finished stage is never trained again (it is returned as it
is), a partial one resumes from its newest checkpoint (exactly: `anima.training`), and a stage
whose predecessor has not finished is an `InputError` before anything is written. Its field
starts as the paper says: the static stage from a fresh one-time-grid field, the dynamic stage
from `Field4D.from_static` of the static field (every time grid a copy), the refinement from
the dynamic field, with a frozen copy of it conditioning the Tile prior. `train_stages` runs
the stages up to a last one in order.

Priors: `build_priors` makes the `anima.methods.animate124.stages.Prior` callables of a stage
from the guidance classes (SD1.5, Zero-1-to-3 XL, ModelScope, ControlNet-Tile: their CFG
scales, t ranges, weights and sizes from `StageOptions`), the prompts encoded once; the Tile
prior's prompt carries the textual-inversion token when the run has one
(`anima.methods.animate124.textual_inversion.load_token`, written by that stage), else the
spec's prompt alone. A caller (a test, the oracle experiment) passes its own ``priors`` instead.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anima.errors import InputError
from anima.io import atomic_path
from anima.methods.animate124.field import Field4D
from anima.methods.animate124.stages import (
    PREDECESSOR,
    STAGE_PRIORS,
    STAGES,
    Animate124Trainer,
    Prior,
    Reference,
    Stage,
    StageOptions,
    Views,
    eta,
)
from anima.training import (
    CONFIG_FILE,
    LoopConfig,
    list_checkpoints,
    make_accelerator,
    start_run,
    train_loop,
)
from anima.weights import Weights

REFERENCE_FILE = "reference.safetensors"
FIELD_FILE = "field.safetensors"
STAGE_FILE = "stage.json"
#: Where a run keeps its textual-inversion token (``anima train animate124-token --out``).
TOKEN_DIR = "token"
#: Which component set (`loading.load_components`' priors) each prior name reads.
PRIOR_SOURCES = {
    "sd15": "sd15",
    "zero123": "zero123",
    "video": "modelscope",
    "tile": "controlnet_tile",
}
#: The release's input side of each prior (README, "Animate124").
RELEASE_PRIOR_SIZES = {"sd15": 512, "zero123": 256, "video": 256, "tile": 1024}
#: The smallest input side of a tiny prior (its UNets need 4 x 4 latents).
TINY_MIN_PRIOR_SIZE = 32
#: Option fields that may change between a partial stage and its resume.
_RESUMABLE_CHANGES = (
    "static_steps",
    "dynamic_steps",
    "refine_steps",
    "checkpoint_every",
    "log_every",
)

#: ``report(text)``: one progress line (the method's `Method.report`).
Report = Callable[[str], None]


# ------------------------------------------------------------------------------------------
# The run folder
# ------------------------------------------------------------------------------------------


def stage_dir(run: Path, stage: Stage) -> Path:
    return Path(run) / stage


def is_finished(run: Path, stage: Stage) -> bool:
    """Whether ``stage`` of ``run`` has finished (its field and record are written)."""
    folder = stage_dir(run, stage)
    return (folder / FIELD_FILE).is_file() and (folder / STAGE_FILE).is_file()


def last_finished(run: Path) -> Stage | None:
    """The latest stage of ``run`` that has finished, in stage order (None: none has)."""
    done = None
    for stage in STAGES:
        if not is_finished(run, stage):
            break
        done = stage
    return done


def save_field(field: Field4D, folder: Path, record: dict[str, Any]) -> None:
    """``field`` as ``folder/field.safetensors`` and its configuration with ``record`` as
    ``folder/stage.json`` (written last: it marks the stage finished)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in field.state_dict().items()}
    with atomic_path(folder / FIELD_FILE) as tmp:
        save_file(state, str(tmp))
    with atomic_path(folder / STAGE_FILE) as tmp:
        tmp.write_text(json.dumps({**record, "field": field.config}, indent=2) + "\n")


def load_field(folder: Path, device: torch.device | str = "cpu") -> Field4D:
    """The field a finished stage wrote into ``folder``."""
    from safetensors.torch import load_file

    config = json.loads((Path(folder) / STAGE_FILE).read_text())["field"]
    field = Field4D(**config, init_std=0.0)
    field.load_state_dict(load_file(str(Path(folder) / FIELD_FILE)))
    return field.to(device)


def load_stage_field(run: Path, stage: Stage | None = None) -> tuple[Stage, Field4D]:
    """The field of ``stage`` (default: the last finished) of ``run``; an `InputError` when it
    has not finished."""
    run = Path(run)
    stage = stage or last_finished(run)
    if stage is None:
        raise InputError("no stage of this Animate124 run has finished", str(run))
    if not is_finished(run, stage):
        raise InputError(f"the {stage} stage of this run has not finished", str(run / stage))
    return stage, load_field(stage_dir(run, stage))


def reference_digest(reference: Reference) -> str:
    """SHA-256 of the reference's tensors (what a run is fitted to)."""
    digest = hashlib.sha256()
    for tensor in (reference.image, reference.mask, reference.depth):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_reference(run: Path, reference: Reference) -> None:
    from safetensors.torch import save_file

    tensors = {
        "image": reference.image.float().cpu().contiguous(),
        "mask": reference.mask.float().cpu().contiguous(),
        "depth": reference.depth.float().cpu().contiguous(),
    }
    with atomic_path(Path(run) / REFERENCE_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"sha256": reference_digest(reference)})


def load_reference(run: Path) -> Reference:
    """The reference view ``run`` was fitted to."""
    from safetensors.torch import load_file

    path = Path(run) / REFERENCE_FILE
    if not path.is_file():
        raise InputError("not an Animate124 run folder (no reference.safetensors)", str(run))
    tensors = load_file(str(path))
    return Reference(tensors["image"], tensors["mask"], tensors["depth"])


def check_reference(run: Path, reference: Reference) -> bool:
    """True when ``run`` was fitted to ``reference`` or holds none yet; an `InputError` when it
    holds another image's."""
    path = Path(run) / REFERENCE_FILE
    if not path.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        saved = (handle.metadata() or {}).get("sha256")
    if saved != reference_digest(reference):
        raise InputError(
            "this run folder was fitted to another image, mask or depth; choose another "
            "options.run (or remove the folder)",
            str(run),
        )
    return True


def stage_record(
    stage: Stage, options: StageOptions, seed: int, prompts: Mapping[str, str]
) -> dict[str, Any]:
    """What a stage is trained with (its ``train_config.json``): a partial stage resumes only
    with the same record, bar the step counts and the checkpoint and log intervals."""
    settings = options.model_dump(mode="json")
    for name in _RESUMABLE_CHANGES:
        settings.pop(name, None)
    return {"stage": stage, "seed": seed, "prompts": dict(prompts), "options": settings}


def _check_resumable(folder: Path, record: dict[str, Any]) -> None:
    path = folder / CONFIG_FILE
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved != record:
        raise InputError(
            "this partial stage was started with other settings (options, prompts or seed); "
            "restore them, or remove the stage folder to start it again",
            str(folder),
        )


# ------------------------------------------------------------------------------------------
# Priors from weights
# ------------------------------------------------------------------------------------------


class TextPrior:
    """`Prior` of a text-conditioned guidance (SD1.5, ModelScope) with its prompt encoded."""

    def __init__(self, guidance: Any, text: Tensor, negative: Tensor | None) -> None:
        self.guidance, self.text, self.negative = guidance, text, negative

    def __call__(
        self, images: Tensor, views: Views, *, generator: torch.Generator, control: Any = None
    ) -> dict[str, Tensor]:
        return self.guidance(images, self.text, self.negative, generator=generator)


class Zero123Prior:
    """`Prior` of `Zero123SDS` with the reference encoded: each render's camera is its pose."""

    def __init__(self, guidance: Any, reference: Any) -> None:
        self.guidance, self.reference = guidance, reference

    def __call__(
        self, images: Tensor, views: Views, *, generator: torch.Generator, control: Any = None
    ) -> dict[str, Tensor]:
        device = images.device
        return self.guidance(
            images,
            views.polar.to(device),
            views.azimuth.to(device),
            views.radius.to(device),
            self.reference,
            generator=generator,
        )


class TilePrior:
    """`Prior` of `ControlNetTileSDS`: every given frame scored against its ``control``."""

    def __init__(self, guidance: Any, text: Tensor, negative: Tensor | None) -> None:
        self.guidance, self.text, self.negative = guidance, text, negative

    def __call__(
        self,
        images: Tensor,
        views: Views,
        *,
        generator: torch.Generator,
        control: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if control is None:
            raise ValueError("the Tile prior needs the frozen field's renders (control)")
        indices = torch.arange(images.shape[0])
        return self.guidance(
            images, control, self.text, self.negative, indices=indices, generator=generator
        )


def prior_size(options: StageOptions, prior: str, tiny: bool) -> int:
    """The input side of ``prior``: the option, else the release's, or with tiny weights (noise
    anyway) the render size rounded up to a multiple of 8, at least `TINY_MIN_PRIOR_SIZE`."""
    value = getattr(options, {"sd15": "sd_size"}.get(prior, f"{prior}_size"))
    if value is not None:
        return int(value)
    if not tiny:
        return RELEASE_PRIOR_SIZES[prior]
    return max(TINY_MIN_PRIOR_SIZE, -(-options.render_size // 8) * 8)


def add_token(tokenizer: Any, text_encoder: Any, token: str, embedding: Tensor) -> None:
    """Teach SD1.5's tokenizer and text encoder the learned ``token`` (textual inversion)."""
    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens([token])
        text_encoder.resize_token_embeddings(len(tokenizer))
    index = tokenizer.convert_tokens_to_ids(token)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[index] = embedding.to(weight)


def learned_token(run: Path) -> tuple[str, Tensor] | None:
    """The run's textual-inversion token and embedding (`textual_inversion.load_token` of
    ``RUN/token/``, else of ``RUN/``), None when neither holds a finished one."""
    try:
        from anima.methods.animate124 import textual_inversion
    except ImportError:  # pragma: no cover - the module ships with the method
        return None
    for folder in (Path(run) / TOKEN_DIR, Path(run)):
        if textual_inversion.read_token_info(folder) is not None:
            return textual_inversion.load_token(folder)
    return None


def tile_prompt(options: StageOptions, prompt: str, token: str | None) -> str:
    """The Tile prior's prompt: ``options.tile_prompt`` with the token, else the prompt."""
    if token is None:
        return prompt
    return options.tile_prompt.format(token=token, prompt=prompt).strip(", ")


def build_priors(
    components: Mapping[str, Any],
    stage: Stage,
    reference: Reference,
    options: StageOptions,
    prompt: str,
    negative_prompt: str = "",
    *,
    tiny: bool = False,
    token: tuple[str, Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Prior]:
    """The priors ``stage`` reads (`STAGE_PRIORS`) from ``components``
    (`anima.methods.animate124.loading.load_components`), moved to ``device``."""
    from anima.methods.animate124.guidance import (
        ControlNetTileSDS,
        StableDiffusionSDS,
        StableDiffusionSDSOptions,
        TileOptions,
        VideoSDS,
        VideoSDSOptions,
        Zero123Options,
        Zero123SDS,
        encode_reference,
        encode_text,
    )

    for parts in components.values():
        modules = parts.values() if isinstance(parts, dict) else [parts]
        for module in modules:
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
                module.to(device)
    clip = options.dynamic_grad_clip if stage != "static" else None
    priors: dict[str, Prior] = {}
    names = STAGE_PRIORS[stage]

    def texts(parts: Mapping[str, Any], positive: str) -> tuple[Tensor, Tensor]:
        text = encode_text(parts["tokenizer"], parts["text_encoder"], positive)
        return text, encode_text(parts["tokenizer"], parts["text_encoder"], negative_prompt)

    if "sd15" in names:
        sd = StableDiffusionSDSOptions(
            guidance_scale=options.sd_guidance_scale,
            t_range=tuple(options.sd_t_range),
            size=prior_size(options, "sd15", tiny),
            weight=options.lambda_sd,
        )
        guidance = StableDiffusionSDS.from_components(components["sd15"], sd)
        priors["sd15"] = TextPrior(guidance, *texts(components["sd15"], prompt))
    if "zero123" in names:
        size = prior_size(options, "zero123", tiny)
        z123 = Zero123Options(
            guidance_scale=options.zero123_guidance_scale,
            t_range=tuple(options.zero123_t_range),
            size=size,
            grad_clip=clip,
            weight=options.lambda_3d,
            angle_weighting=options.zero123_angle_weighting,
        )
        encoded = encode_reference(
            components["zero123"], reference.image, radius=options.camera_radius, size=size
        )
        priors["zero123"] = Zero123Prior(
            Zero123SDS.from_components(components["zero123"], z123), encoded
        )
    if "video" in names:
        video = VideoSDSOptions(
            guidance_scale=options.video_guidance_scale,
            t_range=tuple(options.video_t_range),
            size=prior_size(options, "video", tiny),
            grad_clip=clip,
            weight=options.lambda_video,
        )
        guidance = VideoSDS.from_components(components["modelscope"], video)
        priors["video"] = TextPrior(guidance, *texts(components["modelscope"], prompt))
    if "tile" in names:
        sd_parts = components["sd15"]
        if token is not None:
            add_token(sd_parts["tokenizer"], sd_parts["text_encoder"], token[0], token[1])
        tile = TileOptions(
            guidance_scale=options.tile_guidance_scale,
            t_range=tuple(options.tile_t_range),
            size=prior_size(options, "tile", tiny),
            frames=options.tile_frames,
            target=options.tile_target,
            weight=options.lambda_tile,
        )
        guidance = ControlNetTileSDS.from_components(sd_parts, components["controlnet_tile"], tile)
        positive = tile_prompt(options, prompt, token[0] if token is not None else None)
        priors["tile"] = TilePrior(guidance, *texts(sd_parts, positive))
    return priors


def load_priors(
    weights: Weights,
    stage: Stage,
    reference: Reference,
    options: StageOptions,
    prompt: str,
    negative_prompt: str = "",
    *,
    run: Path | None = None,
    device: torch.device | str = "cpu",
    report: Report | None = None,
) -> dict[str, Prior]:
    """`build_priors` from ``weights`` (a missing component is an `InputError`)."""
    from anima.methods.animate124.loading import load_components

    sources = [PRIOR_SOURCES[name] for name in STAGE_PRIORS[stage]]
    components = load_components(weights, torch.float32, sources)
    token = learned_token(run) if (run is not None and stage == "refine") else None
    if stage == "refine" and token is None and report is not None:
        report("animate124: no textual-inversion token in the run; the Tile prompt is the prompt")
    return build_priors(
        components,
        stage,
        reference,
        options,
        prompt,
        negative_prompt,
        tiny=weights.builtin == "tiny",
        token=token,
        device=device,
    )


# ------------------------------------------------------------------------------------------
# Running stages
# ------------------------------------------------------------------------------------------


@dataclass
class StageResult:
    """What `train_stage` did: the stage's folder and trained field; ``reused`` when it had
    finished before (nothing trained); else the step it resumed from, the last step, every
    step's loss and named losses, and the loop's seconds."""

    stage: Stage
    folder: Path
    field: Field4D
    reused: bool = False
    start_step: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    named: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    stopped: bool = False


def check_stage_order(run: Path, stage: Stage) -> None:
    """An `InputError` when ``stage``'s predecessor has not finished in ``run``."""
    before = PREDECESSOR[stage]
    if before is not None and not is_finished(run, before):
        raise InputError(
            f"the {stage} stage starts from the {before} stage, which has not finished; "
            f"run the {before} stage first",
            str(Path(run) / before),
        )


def initial_fields(
    run: Path, stage: Stage, options: StageOptions, seed: int
) -> tuple[Field4D, Field4D | None]:
    """The field ``stage`` starts from, and the frozen field of the refinement: the static
    field's tables and MLP drawn from ``seed`` alone."""
    if stage == "static":
        generator = torch.Generator().manual_seed(seed)
        return Field4D(1, **options.field_arguments(), generator=generator), None
    if stage == "dynamic":
        static = load_field(stage_dir(run, "static"))
        return Field4D.from_static(static, options.num_times), None
    dynamic = stage_dir(run, "dynamic")
    return load_field(dynamic), load_field(dynamic)


def train_stage(
    run: Path,
    stage: Stage,
    reference: Reference,
    options: StageOptions,
    *,
    priors: Mapping[str, Prior] | None = None,
    weights: Weights | None = None,
    prompt: str = "",
    negative_prompt: str = "",
    seed: int = 0,
    report: Report | None = None,
    quiet: bool = True,
    stop_after: int | None = None,
) -> StageResult:
    """Run (or resume, or reuse) ``stage`` of ``run`` (module docstring). ``priors``: the
    priors to use (any `Prior` mapping); None builds them from ``weights``."""
    run = Path(run)
    folder = stage_dir(run, stage)
    if is_finished(run, stage):
        return StageResult(stage, folder, load_field(folder), reused=True)
    check_stage_order(run, stage)
    prompts = {"prompt": prompt, "negative_prompt": negative_prompt}
    record = stage_record(stage, options, seed, prompts)
    resume = list_checkpoints(folder)[-1] if list_checkpoints(folder) else None
    if resume is not None:
        _check_resumable(folder, record)
    check_reference(run, reference)
    field, frozen = initial_fields(run, stage, options, seed)
    accelerator = make_accelerator(folder)
    device = accelerator.device
    if priors is None:
        if weights is None:
            raise ValueError("train_stage needs priors or weights to build them from")
        priors = load_priors(
            weights,
            stage,
            reference,
            options,
            prompt,
            negative_prompt,
            run=run,
            device=device,
            report=report,
        )
    if frozen is not None:
        frozen.to(device)
    if accelerator.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        if not (run / REFERENCE_FILE).is_file():
            save_reference(run, reference)
        start_run(folder, record, fresh=resume is None)
    trainer = Animate124Trainer(stage, field, reference, priors, options, seed=seed, frozen=frozen)
    steps = options.steps(stage)
    loop = LoopConfig(
        out=folder,
        steps=steps,
        lr=options.lr,
        lr_min=options.lr_min,
        max_grad_norm=None,
        adam_beta1=options.adam_betas[0],
        adam_beta2=options.adam_betas[1],
        adam_weight_decay=0.0,
        adam_epsilon=options.adam_epsilon,
        checkpoint_every=options.checkpoint_every,
        checkpoints_total_limit=2,
        log_every=options.log_every,
        log_fields={"stage": stage},
        seed=seed,
        quiet=quiet,
        desc=f"animate124 {stage}",
        stop_after=stop_after,
    )
    began = time.perf_counter()
    first = [None]

    def progress(step: int, total: int, loss: float) -> None:
        if report is None:
            return
        if first[0] is None:
            first[0] = (step - 1, began)  # type: ignore[assignment]
        start_step, start_time = first[0]  # type: ignore[misc]
        per_step = (time.perf_counter() - start_time) / max(1, step - start_step)
        report(
            f"animate124 {stage}: step {step}/{total}, loss {loss:.4f}, "
            f"ETA {eta(per_step, total - step)}"
        )

    result = train_loop(accelerator, trainer, loop, resume, progress)
    if accelerator.is_main_process and not result.stopped:
        save_field(
            field,
            folder,
            {"stage": stage, "steps": result.step, "seed": seed, "seconds": result.seconds},
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return StageResult(
        stage,
        folder,
        field.cpu(),
        False,
        result.start_step,
        result.step,
        result.losses,
        result.named,
        result.seconds,
        result.stopped,
    )


def train_stages(
    run: Path,
    last: Stage,
    reference: Reference,
    options: StageOptions,
    *,
    priors: Mapping[str, Prior] | Callable[[Stage], Mapping[str, Prior]] | None = None,
    weights: Weights | None = None,
    prompt: str = "",
    negative_prompt: str = "",
    seed: int = 0,
    report: Report | None = None,
    quiet: bool = True,
) -> list[StageResult]:
    """Every stage up to ``last`` in order (finished ones reused, a partial one resumed).
    ``priors``: a mapping for every stage, or a function of the stage giving one."""
    results = []
    for stage in STAGES[: STAGES.index(last) + 1]:
        given = priors(stage) if callable(priors) else priors
        if report is not None and is_finished(run, stage):
            report(f"animate124: the {stage} stage has finished before; reusing it")
        results.append(
            train_stage(
                run,
                stage,
                reference,
                options,
                priors=given,
                weights=weights,
                prompt=prompt,
                negative_prompt=negative_prompt,
                seed=seed,
                report=report,
                quiet=quiet,
            )
        )
    return results


__all__ = [
    "FIELD_FILE",
    "REFERENCE_FILE",
    "STAGE_FILE",
    "StageResult",
    "TextPrior",
    "TilePrior",
    "Zero123Prior",
    "build_priors",
    "check_reference",
    "check_stage_order",
    "initial_fields",
    "is_finished",
    "last_finished",
    "learned_token",
    "load_field",
    "load_priors",
    "load_reference",
    "load_stage_field",
    "prior_size",
    "save_field",
    "stage_dir",
    "train_stage",
    "train_stages",
]
