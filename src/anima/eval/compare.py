"""``anima compare SPEC -o GRID.mp4``: one spec through several methods, side by side
(README, "Evaluation", "anima compare"; docs/architecture.md, "The CLI's promises").

The methods are those named, else every method whose weights are present (`Method.
missing_components`, the one readiness rule) and that can run the spec; the coarse render
(the ``coarse`` method) always comes first. Each panel is labelled with its method
(`anima.eval.grid`); the metrics of each video (`anima.eval.video.evaluate`) go beside the grid
as ``GRID.json``. Everything is checked before the first render, and the grid and its JSON are
written together or not at all (`anima.io.staged_outputs`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anima.errors import InputError
from anima.eval.runs import Overrides, method_ready, run_method, spec_for_method
from anima.methods.registry import get_method, method_names
from anima.preflight import check_resolved_spec
from anima.spec import MotionSpec, load_spec
from anima.weights import Weights

FIRST = "coarse"


@dataclass
class ComparePlan:
    """The checked specs of a comparison, by method in panel order, and the methods left out
    (with why)."""

    spec_path: Path
    specs: dict[str, MotionSpec]
    skipped: dict[str, str] = field(default_factory=dict)


def json_path(output: Path) -> Path:
    """Where the metrics of ``output`` go: beside it, ``GRID.json``."""
    return output.with_suffix(".json")


def check_grid_output(output: Path) -> None:
    """``output`` must be a writable .mp4 or .gif (an existing file is replaced, as
    `anima animate -o` does), and so must its JSON beside it."""
    from anima.io import video_kind
    from anima.output_paths import check_output

    if video_kind(output, "-o") == "folder":
        raise InputError(f"'{output}' is not a video file: name a .mp4 or .gif", "-o")
    check_output(output, folder=False, where="-o")
    check_output(json_path(output), folder=False, where="-o")


def plan_compare(
    spec_path: Path,
    weights: Weights,
    methods: list[str] | None = None,
    overrides: Overrides | None = None,
) -> ComparePlan:
    """Load the spec and check it for each method. Named ``methods`` must each be able to
    run it (else an `InputError`); by default every method whose weights are present is tried
    and one that cannot run the spec is left out, with why."""
    spec = load_spec(spec_path)
    named = methods is not None
    if methods is None:
        methods = [name for name in method_names() if method_ready(name, weights)]
    for name in methods:
        get_method(name, "--methods")
    if len(set(methods)) != len(methods):
        raise InputError("a method is named twice", "--methods")
    order = [FIRST] + [name for name in methods if name != FIRST]
    plan = ComparePlan(spec_path, {})
    for name in order:
        try:
            where = f"--method {name} with {spec.where}"
            resolved = spec_for_method(spec, name, weights, overrides, where=where)
            check_resolved_spec(resolved, weights)
        except InputError as exc:
            if named:
                raise
            plan.skipped[name] = str(exc)
            continue
        plan.specs[name] = resolved
    return plan


def run_compare(
    plan: ComparePlan,
    output: Path,
    weights: Weights,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    reference: Path | None = None,
    metrics: Collection[str] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every planned method, write the labelled grid to ``output`` and the metrics beside
    it (``GRID.json``); returns that report."""
    from anima.eval.grid import grid_frames
    from anima.eval.video import evaluate, inputs_from
    from anima.io import VideoWriter, staged_outputs

    stage = on_stage or (lambda _text: None)
    panels = []
    report: dict[str, Any] = {
        "spec": str(plan.spec_path),
        "weights": weights_label(weights),
        "methods": {},
        "skipped": dict(plan.skipped),
    }
    for name, spec in plan.specs.items():
        result = run_method(spec, weights, device, dtype, on_stage=stage)
        frames = result.frames
        stage(f"scoring {name}")
        inputs = inputs_from(frames, spec=spec, reference=reference, weights=weights)
        scores = evaluate(inputs, weights, device=device, metrics=metrics)
        height, width = frames.shape[-2:]
        report["methods"][name] = {
            "frames": int(frames.shape[0]),
            "size": [int(height), int(width)],
            "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
            **scores.to_json(),
        }
        panels.append((name, frames))
    stage(f"writing {output}")
    fps = next(iter(plan.specs.values())).fps
    with staged_outputs() as staging:
        with VideoWriter(output, fps, "-o", staging) as writer:
            for frame in grid_frames(panels):
                writer.write(frame)
        text = json.dumps(report, indent=1) + "\n"
        staging.file(json_path(output)).write_text(text, encoding="utf-8")
    return report


def weights_label(weights: Weights) -> str:
    """The weights as a run records them: a built-in name, a directory, or "none"."""
    if weights.builtin is not None:
        return weights.builtin
    return str(weights.root) if weights.root is not None else "none"
