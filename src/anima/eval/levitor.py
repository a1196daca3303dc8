"""LeviTor on toy clips, scored against exact ground truth (the paper's Table 2).

For each of ``n`` toy clips drawn from an *evaluation* seed (`eval_clip_seed`), every variant is
conditioned on the clip's first frame and MotionSpec, generated at the spec's size and frame
count with the clip's own seed, and scored with `anima.metrics.summary`: ObjMC, occlusion
accuracy, scale error, PSNR and SSIM. A ``first_frame`` reference (frame 0 repeated) is scored too:
a model that moves things right must beat it on PSNR.

Variants (`VARIANTS`) and where their ControlNets live under a weights root ``DIR``::

    DIR/svd/                      SVD (diffusers layout), shared by every variant
    DIR/levitor/                  "full"          (the released / our main ControlNet)
    DIR/levitor-single_point/     "single_point"  (one control point per object)
    DIR/levitor-no_depth/         "no_depth"      (no depth in the control maps)
    DIR/levitor-no_instance/      "no_instance"   (no instance separation)

``base`` is the same SVD with the ControlNet's residuals scaled to zero
(``controlnet_scale: 0``): exactly the uncontrolled SVD. It needs any one of the ControlNets to
run the pipeline. A missing variant is skipped (a note in the table, nulls in the JSON); no
ControlNet at all is an `InputError`. A ControlNet's ``control_variant`` must match its folder.

Built-in weights: ``tiny`` (random tiny models, every variant: the tiny ControlNet is recorded
with each variant in turn, so the ablation rows feed their own control maps), ``toy`` (the
package's ``anima/assets/toy/`` in the layout above, once shipped).

Eval clips never coincide with training clips: `anima world make --seed S` draws clip ``i``
from ``SeedSequence([S, i])``; evaluation draws it from ``SeedSequence([EVAL_NAMESPACE, S, i])``
(a different entropy pool). Still, pass an evaluation seed you never trained on.
"""

from __future__ import annotations

import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anima.errors import InputError
from anima.methods.levitor import LEVITOR_CONTROLNET, LeviTorMethod
from anima.methods.levitor.controls import CONTROL_VARIANTS
from anima.metrics.summary import VideoTruth, summary
from anima.pipeline import parse_device, parse_dtype, resolve_spec
from anima.scene import build_scene
from anima.spec import load_spec
from anima.weights import SVD, Component, Weights

#: Rows of the JSON's ``variants`` (Table 2 order): uncontrolled SVD, then the ControlNets.
VARIANTS = ("base", *CONTROL_VARIANTS)
#: The reference row: the first frame repeated (``reference`` in the JSON).
REFERENCE = "first_frame"
#: The issue's five, then the views of ObjMC's coverage (`anima.metrics.summary`).
METRICS = ("objmc", "occlusion_acc", "scale_err", "psnr", "ssim", "objmc_held", "tracked_fraction")
#: True where larger is better.
HIGHER_IS_BETTER = {
    "objmc": False,
    "objmc_held": False,
    "tracked_fraction": True,
    "occlusion_acc": True,
    "scale_err": False,
    "psnr": True,
    "ssim": True,
}
DEFAULT_EVAL_SEED = 1_000_003
#: First entropy word of evaluation clip seeds ("eval" in ASCII); see the module doc.
EVAL_NAMESPACE = 0x6576616C


def eval_clip_seed(seed: int, index: int) -> int:
    """The seed of evaluation clip ``index`` for eval seed ``seed`` (both >= 0), < 2**63."""
    sequence = np.random.SeedSequence([EVAL_NAMESPACE, int(seed), int(index)])
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


def controlnet_component(variant: str) -> Component:
    """Where the ControlNet of ``variant`` (not ``base``) lives under a weights root."""
    if variant not in CONTROL_VARIANTS:
        raise ValueError(f"no ControlNet variant {variant!r}")
    if variant == "full":
        return LEVITOR_CONTROLNET
    return Component(
        f"LeviTor ControlNet ({variant})",
        f"levitor-{variant}",
        f"LeviTor ControlNet trained on the '{variant}' ablation",
        required_files=LEVITOR_CONTROLNET.required_files,
        layouts=LEVITOR_CONTROLNET.layouts,
    )


@dataclass
class VariantPlan:
    """Which variants run (variant -> ControlNet folder, None for tiny) and which are skipped
    (variant -> why)."""

    present: dict[str, Path | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def plan_variants(weights: Weights) -> VariantPlan:
    """The variants found in ``weights`` (see the module doc for the layout)."""
    plan = VariantPlan()
    if weights.builtin == "tiny":
        plan.present = dict.fromkeys(VARIANTS)
        return plan
    if weights.root is None:
        raise InputError("evaluation needs weights: tiny, toy or a directory", "--weights")
    weights.require(SVD, "levitor")
    for variant in CONTROL_VARIANTS:
        component = controlnet_component(variant)
        folder = weights.component_dir(component)
        if folder is None:
            plan.skipped[variant] = f"no {component.subdir}/config.json"
        else:
            plan.present[variant] = folder
    if not plan.present:
        raise InputError(
            "no LeviTor ControlNet found (levitor/ or levitor-<variant>/ with config.json)",
            f"in {weights.root}",
        )
    # base = any ControlNet at scale 0 (the full one when present).
    plan.present = {"base": next(iter(plan.present.values())), **plan.present}
    return plan


class _EvalLeviTor(LeviTorMethod):
    """The levitor method run on a given pipeline (the variant's ControlNet)."""

    pipeline: Any = None

    def load(self):
        return self.pipeline


class VariantPipelines:
    """One `LeviTorPipeline` per variant sharing the SVD components (loaded once)."""

    def __init__(self, weights: Weights, plan: VariantPlan, dtype: torch.dtype) -> None:
        self.weights, self.plan, self.dtype = weights, plan, dtype
        self._components: dict[str, Any] | None = None
        self._pipes: dict[str, Any] = {}

    def _shared(self) -> dict[str, Any]:
        if self._components is None:
            if self.weights.builtin == "tiny":
                from anima.models.tiny import tiny_svd_components

                self._components = tiny_svd_components(seed=0)
            else:
                from anima.models.loading import load_svd_components

                svd_dir = self.weights.require(SVD, "levitor")
                self._components = load_svd_components(
                    svd_dir, self.weights.allow_pickle, self.dtype
                )
        return self._components

    def get(self, variant: str):
        if variant in self._pipes:
            return self._pipes[variant]
        from anima.methods.levitor.pipeline import LeviTorPipeline

        components = self._shared()
        control_variant = "full" if variant == "base" else variant
        if self.weights.builtin == "tiny":
            from anima.models.tiny import tiny_controlnet

            controlnet = tiny_controlnet(components["unet"], seed=0, random_output=True)
            # The same random ControlNet, recorded as trained on this variant's control maps.
            controlnet.register_to_config(control_variant=control_variant)
            if self.dtype != torch.float32:
                controlnet.to(dtype=self.dtype)
        else:
            from anima.models.loading import load_svd_controlnet

            folder = self.plan.present[variant]
            assert folder is not None
            controlnet = load_svd_controlnet(folder, self.weights.allow_pickle, self.dtype)
            recorded = controlnet.config.control_variant
            if variant != "base" and recorded != variant:
                raise InputError(
                    f"the ControlNet records control_variant '{recorded}', not '{variant}'",
                    f"in {folder}",
                )
        pipe = LeviTorPipeline(**components, controlnet=controlnet)
        self._pipes[variant] = pipe
        return pipe


@dataclass
class EvalSettings:
    n: int = 20
    seed: int = DEFAULT_EVAL_SEED
    weights: str = "toy"
    steps: int = 25
    frames: int = 8
    size: int = 64
    device: str = "cpu"
    dtype: str = "float32"

    def check(self) -> None:
        if self.n <= 0:
            raise InputError(f"must be >= 1, got {self.n}", "--n")
        if not 0 <= self.seed < 2**63:
            raise InputError(f"must be in 0..2**63-1, got {self.seed}", "--seed")
        if not 1 <= self.steps <= 1000:
            raise InputError(f"must be in 1..1000, got {self.steps}", "--steps")
        if not 2 <= self.frames <= 1024:
            raise InputError(f"must be in 2..1024, got {self.frames}", "--frames")
        if self.size < 16 or self.size > 4096 or self.size % 2:
            raise InputError(f"must be an even number in 16..4096, got {self.size}", "--size")


def clip_truth(clip) -> VideoTruth:
    """`VideoTruth` of a `anima.world.ToyClip`."""
    return VideoTruth(
        frames=torch.from_numpy(clip.frames).float(),
        instance=torch.from_numpy(clip.instance),
        tracks=torch.from_numpy(clip.tracks).float(),
        visible=torch.from_numpy(clip.visible),
        track_object=torch.from_numpy(clip.track_object),
        distance=torch.from_numpy(clip.distance).float(),
    )


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _mean(values: list[float]) -> tuple[float | None, int]:
    finite = [v for v in values if math.isfinite(v)]
    return (float(np.mean(finite)) if finite else None), len(finite)


def machine_info(device: str) -> dict[str, Any]:
    from anima import __version__

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "anima": __version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }


def evaluate_toy(
    settings: EvalSettings,
    on_step: Callable[[int, str], None] | None = None,
) -> dict[str, Any]:
    """Run the evaluation; returns the JSON report (see `anima.cli_eval`).

    ``on_step(clip_index, row)`` is called after each (clip, variant) generation."""
    from anima.world import WorldConfig, make_clip
    from anima.world.writer import write_clip

    settings.check()
    weights = Weights.resolve(settings.weights)
    plan = plan_variants(weights)
    device = parse_device(settings.device)
    dtype = parse_dtype(settings.dtype)
    pipes = VariantPipelines(weights, plan, dtype)
    config = WorldConfig(size=(settings.size, settings.size), num_frames=settings.frames)
    step = on_step or (lambda _i, _row: None)

    rows = (REFERENCE, *VARIANTS)
    per_clip: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="anima-eval-") as tmp:
        for index in range(settings.n):
            clip_seed = eval_clip_seed(settings.seed, index)
            clip = make_clip(clip_seed, config)
            folder = write_clip(clip, Path(tmp) / f"clip_{index:05d}")
            truth = clip_truth(clip)
            spec = resolve_spec(load_spec(folder / "spec.json"), method="levitor", weights=weights)
            scene = build_scene(spec, weights)
            scores: dict[str, dict[str, float | None]] = {}
            seconds: dict[str, float] = {}
            still = truth.frames[:1].expand_as(truth.frames).clone()
            scores[REFERENCE] = {k: _finite_or_none(v) for k, v in summary(still, truth).items()}
            step(index, REFERENCE)
            for variant in VARIANTS:
                if variant not in plan.present:
                    continue
                start = time.perf_counter()
                options = {
                    "num_inference_steps": settings.steps,
                    "controlnet_scale": 0.0 if variant == "base" else 1.0,
                }
                run_spec = spec.model_copy(update={"options": options})
                method = _EvalLeviTor(
                    LeviTorMethod.parse_options(options, "eval"), weights, device, dtype
                )
                method.pipeline = pipes.get(variant)
                frames = method.stream(method.prepare(run_spec, scene)).tensor()
                scores[variant] = {k: _finite_or_none(v) for k, v in summary(frames, truth).items()}
                seconds[variant] = round(time.perf_counter() - start, 3)
                step(index, variant)
            per_clip.append(
                {"index": index, "seed": clip_seed, "metrics": scores, "seconds": seconds}
            )

    def aggregate(row: str) -> tuple[dict[str, float | None], dict[str, int]]:
        means, counts = {}, {}
        for metric in METRICS:
            values = [
                math.nan if (v := c["metrics"].get(row, {}).get(metric)) is None else v
                for c in per_clip
                if row in c["metrics"]
            ]
            means[metric], counts[metric] = _mean(values)
        return means, counts

    variants: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        means, count = aggregate(row)
        if row != REFERENCE:
            variants[row] = means
        counts[row] = count
    return {
        "variants": variants,
        "reference": {REFERENCE: aggregate(REFERENCE)[0]},
        "counts": counts,
        "skipped": plan.skipped,
        "settings": {
            "toy": True,
            "n": settings.n,
            "seed": settings.seed,
            "clip_seeds": "SeedSequence([EVAL_NAMESPACE, seed, i]), EVAL_NAMESPACE=0x6576616C",
            "weights": weights.describe() if weights.builtin else str(weights.root),
            "steps": settings.steps,
            "frames": settings.frames,
            "size": [settings.size, settings.size],
            "device": settings.device,
            "dtype": settings.dtype,
        },
        "machine": machine_info(settings.device),
        "per_clip": per_clip,
    }
