"""``anima eval suite SUITE.json``: specs run through methods, scored, and tabulated as the
papers do (README, "Evaluation", "anima eval suite"; docs/architecture.md, "The CLI's promises").

A suite file (`SuiteFile`, validated at the boundary: one `InputError` line naming the field and
the file) lists cases (a spec, optionally a reference video, a guidance render and a prompt)
and methods. Every case x method is checked before the first render (`anima.eval.runs`), then
run, written and scored one at a time into the output folder::

    OUT/videos/<case>/<method>.mp4
    OUT/scores/<case>/<method>.json                    values, skipped metrics, inputs hash
    OUT/scores/<case>/<method>.features.safetensors    distribution features (FID, FVDs)
    OUT/table.json, OUT/table.csv                      rows methods, columns metrics

A case's three files are written together (`anima.io.staged_outputs`), so a score present means
its video is too. A case is finished when its score records the inputs hash of this run (the
resolved spec, the files it names, method, weights, overrides, options, reference, render,
prompt and metrics): an interrupted suite resumes where it stopped, and a changed input runs
that case again. Per-video metrics are averaged over cases; distribution metrics are computed
over the features of all of a method's cases (`anima.eval.video.frechet_scores`). Under
``accelerate launch`` the cases are split across the processes, and the main one writes the
table.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anima.errors import InputError
from anima.eval.runs import (
    Overrides,
    file_digest,
    run_method,
    spec_files,
    spec_for_method,
)
from anima.methods.registry import get_method
from anima.preflight import check_resolved_spec
from anima.spec import MotionSpec, format_validation_error, load_spec, read_json_file
from anima.weights import Weights

CASE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class SuiteCase(BaseModel):
    """One case: a spec and what its videos are scored against (paths relative to the suite)."""

    model_config = ConfigDict(extra="forbid")
    spec: str = Field(min_length=1, description="MotionSpec file.")
    name: str | None = Field(
        None, pattern=CASE_NAME, description="Folder name of its outputs (default: spec stem)."
    )
    reference: str | None = Field(None, min_length=1, description="Reference video.")
    render: str | None = Field(
        None, min_length=1, description="Guidance render (I2V3D layout) or an --dump folder."
    )
    prompt: str | None = Field(None, description="Prompt for CLIP-T (default: the spec's).")


class SuiteFile(BaseModel):
    """A suite: cases run through methods, scored with metrics."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    methods: list[str] = Field(min_length=1, description="Methods each case runs through.")
    weights: str | None = Field(
        None, description="'tiny', 'toy' or a directory (relative to the suite); --weights wins."
    )
    metrics: list[str] | None = Field(
        None, min_length=1, description="Metrics to compute (default: every one that can run)."
    )
    cases: list[SuiteCase] = Field(min_length=1)
    overrides: Overrides = Field(default_factory=Overrides)
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Method name -> options merged into every spec."
    )


@dataclass
class Suite:
    """A loaded suite file: the model and where it was read from."""

    file: SuiteFile
    path: Path

    @property
    def where(self) -> str:
        return f"in {self.path}"

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.path.resolve().parent / path


def load_suite(path: Path) -> Suite:
    """Read and validate a suite file; every error is one line naming the field and file."""
    where = f"in {path}"
    data = read_json_file(Path(path), "suite")
    if not isinstance(data, dict):
        raise InputError("a suite must be a JSON object", where)
    try:
        suite = SuiteFile.model_validate(data)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc), where) from None
    return Suite(suite, Path(path))


def default_out(suite_path: Path) -> Path:
    """The results folder when ``--out`` is not given: ``<suite stem>-results`` beside it."""
    return suite_path.parent / f"{suite_path.stem}-results"


@dataclass
class Job:
    """One case through one method, checked: where its outputs go and its inputs hash."""

    case: str
    method: str
    spec: MotionSpec
    reference: Path | None
    render: Path | None
    prompt: str | None
    inputs: str  # the inputs hash
    video: Path
    score: Path
    features: Path


def _case_names(suite: Suite) -> list[str]:
    names = [case.name or Path(case.spec).stem for case in suite.file.cases]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise InputError(
                f"case name '{name}' is used twice (give cases a 'name')",
                f"cases[{i}] {suite.where}",
            )
    return names


def _existing(suite: Suite, relative: str | None, field: str) -> Path | None:
    if relative is None:
        return None
    path = suite.resolve(relative)
    if not path.exists():
        raise InputError(f"not found: {path}", f"{field} {suite.where}")
    return path


def check_metrics(suite: Suite) -> list[str] | None:
    """The suite's metric names, each known (`anima.eval.video.metric_names`)."""
    from anima.eval.video import metric_names

    if suite.file.metrics is None:
        return None
    known = metric_names()
    for i, name in enumerate(suite.file.metrics):
        if name not in known:
            raise InputError(
                f"unknown metric '{name}' (known: {', '.join(known)})",
                f"metrics[{i}] {suite.where}",
            )
    return list(suite.file.metrics)


def suite_weights(suite: Suite, weights: str | None, allow_pickle: bool = False) -> Weights:
    """``--weights`` when given, else the suite's (a directory relative to the suite file)."""
    if weights is not None or suite.file.weights is None:
        return Weights.resolve(weights, allow_pickle=allow_pickle)
    value = suite.file.weights
    if value not in ("tiny", "toy"):
        value = str(suite.resolve(value))
    try:
        return Weights.resolve(value, allow_pickle=allow_pickle)
    except InputError as exc:
        raise InputError(exc.what, f"weights {suite.where}") from None


def plan_suite(suite: Suite, weights: Weights, out: Path) -> list[Job]:
    """Every case x method checked (specs, files, options, weights, memory) before any work,
    method by method; bad input is one `InputError` naming the suite's field."""
    from anima.eval.compare import weights_label

    data = suite.file
    for i, method in enumerate(data.methods):
        get_method(method, f"methods[{i}] {suite.where}")
    for method in data.options:
        if method not in data.methods:
            raise InputError(
                f"options for '{method}', which the suite does not run", f"options {suite.where}"
            )
    metrics = check_metrics(suite)
    names = _case_names(suite)
    loaded = []
    for i, case in enumerate(data.cases):
        spec_path = _existing(suite, case.spec, f"cases[{i}].spec")
        assert spec_path is not None
        if not spec_path.is_file():
            raise InputError(f"not a file: {spec_path}", f"cases[{i}].spec {suite.where}")
        reference = _existing(suite, case.reference, f"cases[{i}].reference")
        render = _existing(suite, case.render, f"cases[{i}].render")
        loaded.append((load_spec(spec_path), reference, render))
    jobs = []
    digests: dict[Path, str] = {}

    def digest(path: Path | None) -> str | None:
        if path is None:
            return None
        if path not in digests:
            digests[path] = file_digest(path)
        return digests[path]

    for method in data.methods:
        options = data.options.get(method)
        for i, (name, case, (spec, reference, render)) in enumerate(
            zip(names, data.cases, loaded, strict=True)
        ):
            where = f"cases[{i}] with method {method} {suite.where}"
            resolved = spec_for_method(spec, method, weights, data.overrides, options, where)
            check_resolved_spec(resolved, weights)
            record = {
                "spec": resolved.model_dump(mode="json"),
                "files": {str(p): digest(p) for p in spec_files(resolved)},
                "method": method,
                "weights": weights_label(weights),
                "overrides": data.overrides.key(),
                "options": options,
                "reference": digest(reference),
                "render": digest(render),
                "prompt": case.prompt,
                "metrics": metrics,
            }
            text = json.dumps(record, sort_keys=True, default=str)
            folder = Path(name)
            jobs.append(
                Job(
                    case=name,
                    method=method,
                    spec=resolved,
                    reference=reference,
                    render=render,
                    prompt=case.prompt,
                    inputs=hashlib.sha256(text.encode()).hexdigest(),
                    video=out / "videos" / folder / f"{method}.mp4",
                    score=out / "scores" / folder / f"{method}.json",
                    features=out / "scores" / folder / f"{method}.features.safetensors",
                )
            )
    return jobs


def read_score(job: Job) -> dict[str, Any] | None:
    """The job's recorded score when it is finished (its inputs hash matches, its video and
    features are there), else None."""
    try:
        score = json.loads(job.score.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(score, dict) or score.get("inputs") != job.inputs:
        return None
    if not job.video.is_file():
        return None
    if score.get("features") and not job.features.is_file():
        return None
    return score


def _split(metrics: list[str] | None) -> tuple[list[str], list[str]]:
    """(per-video metrics, distribution metrics) of ``metrics`` (None: every metric)."""
    from anima.eval.video import METRICS, metric_names

    names = metric_names() if metrics is None else metrics
    base = [name.removeprefix("fg_").removeprefix("bg_") for name in names]
    per_video = [n for n, b in zip(names, base, strict=True) if not METRICS[b].distribution]
    distribution = [n for n, b in zip(names, base, strict=True) if METRICS[b].distribution]
    return per_video, distribution


def run_job(
    job: Job,
    weights: Weights,
    metrics: list[str] | None,
    device: str = "cpu",
    dtype: str = "float32",
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Generate, score and write one case x method (video, score and features together)."""
    from safetensors.torch import save_file

    from anima.eval.video import (
        distribution_features,
        evaluate,
        inputs_from,
        plan,
    )
    from anima.io import VideoWriter, staged_outputs
    from anima.metrics.features import CLIP_LENGTH

    stage = on_stage or (lambda _text: None)
    result = run_method(job.spec, weights, device, dtype, on_stage=stage)
    frames = result.frames
    stage(f"scoring {job.case} / {job.method}")
    inputs = inputs_from(
        frames,
        spec=job.spec,
        reference=job.reference,
        render=job.render,
        prompt=job.prompt,
        weights=weights,
    )
    per_video, distribution = _split(metrics)
    report = evaluate(inputs, weights, device=device, metrics=per_video)
    values = report.to_json()["values"]
    skipped = dict(report.skipped)
    features = distribution_features(inputs, weights, device=device, metrics=distribution)
    pooled, not_pooled = plan(inputs, weights, distribution, clip_length=None)
    skipped |= not_pooled
    for name in set(pooled) - set(features):  # an FVD of a video shorter than one clip
        skipped[name] = f"the video is shorter than one clip ({CLIP_LENGTH} frames)"
    scores, reasons = pooled_frechet({k: [v] for k, v in features.items()})
    values |= scores
    skipped |= reasons
    height, width = frames.shape[-2:]
    score = {
        "case": job.case,
        "method": job.method,
        "inputs": job.inputs,
        "video": job.video.name,
        "frames": int(frames.shape[0]),
        "size": [int(height), int(width)],
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "values": values,
        "skipped": skipped,
        "features": job.features.name if features else None,
    }
    with staged_outputs() as staging:
        with VideoWriter(job.video, job.spec.fps, "--out", staging) as writer:
            for frame in frames:
                writer.write(frame)
        if features:
            tensors = {
                f"{name}/{side}": tensor.contiguous()
                for name, pair in features.items()
                for side, tensor in pair.items()
            }
            save_file(tensors, str(staging.file(job.features)))
        staging.file(job.score).write_text(json.dumps(score, indent=1) + "\n", encoding="utf-8")
    return score


def pooled_frechet(
    features: dict[str, list[dict[str, Any]]],
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Each distribution metric over the pooled features of its cases
    (`anima.eval.video.frechet_scores`), and why one could not be computed: a covariance needs
    at least 2 feature samples a side (FVD on a clip shorter than two windows has one)."""
    from anima.eval.video import frechet_scores

    scores: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for name, cases in features.items():
        counts = [sum(int(case[side].shape[0]) for case in cases) for side in cases[0]]
        if min(counts) < 2:
            reasons[name] = "needs at least 2 feature samples a side (more frames or cases)"
            continue
        value = frechet_scores({name: cases})[name]
        scores[name] = value if math.isfinite(value) else None
    return scores, reasons


def _load_features(job: Job) -> dict[str, dict[str, Any]]:
    from safetensors.torch import load_file

    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in load_file(str(job.features)).items():
        name, side = key.rsplit("/", 1)
        pairs.setdefault(name, {})[side] = tensor
    return pairs


def suite_table(suite: Suite, jobs: list[Job]) -> dict[str, Any]:
    """The table of the finished jobs: per method, per-video metrics averaged over cases and
    distribution metrics over the pooled features of all its cases; counts and skip reasons."""
    from anima.eval.video import metric_names

    methods: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    skipped: dict[str, dict[str, str]] = {}
    missing: dict[str, list[str]] = {}
    for method in suite.file.methods:
        sums: dict[str, list[float]] = {}
        pooled: dict[str, list[dict[str, Any]]] = {}
        reasons: dict[str, str] = {}
        for job in (j for j in jobs if j.method == method):
            score = read_score(job)
            if score is None:
                missing.setdefault(method, []).append(job.case)
                continue
            for name, value in score["values"].items():
                sums.setdefault(name, [])
                if value is not None and math.isfinite(value):
                    sums[name].append(float(value))
            for name, why in score["skipped"].items():
                reasons.setdefault(name, why)
            if score.get("features"):
                for name, pair in _load_features(job).items():
                    pooled.setdefault(name, []).append(pair)
        row = {name: (sum(v) / len(v) if v else None) for name, v in sums.items()}
        count = {name: len(v) for name, v in sums.items()}
        scores, why = pooled_frechet(pooled)
        for name, value in scores.items():
            row[name], count[name] = value, len(pooled[name])
        for name, text in why.items():
            row.pop(name, None)
            reasons[name] = text
        methods[method], counts[method] = row, count
        skipped[method] = {k: v for k, v in reasons.items() if k not in row}
    order = metric_names()
    columns = sorted({k for row in methods.values() for k in row}, key=order.index)
    return {
        "suite": suite.file.name,
        "cases": len(suite.file.cases),
        "columns": columns,
        "methods": methods,
        "counts": counts,
        "skipped": skipped,
        "missing": missing,
    }


def table_csv(table: dict[str, Any]) -> str:
    """The table as CSV: a ``method`` column, then one a metric (empty where none)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", *table["columns"]])
    for method, row in table["methods"].items():
        cells = [row.get(c) for c in table["columns"]]
        writer.writerow([method, *["" if v is None else f"{v:.6g}" for v in cells]])
    return buffer.getvalue()


def write_table(table: dict[str, Any], out: Path) -> None:
    """``table.json`` and ``table.csv`` into ``out``, together."""
    from anima.io import staged_outputs

    with staged_outputs() as staging:
        text = json.dumps(table, indent=1) + "\n"
        staging.file(out / "table.json").write_text(text, encoding="utf-8")
        staging.file(out / "table.csv").write_text(table_csv(table), encoding="utf-8")


def rich_table(table: dict[str, Any]):
    """The table for the terminal: rows methods, columns metrics (arrow: better), best bold."""
    from rich.table import Table

    from anima.eval.video import higher_is_better

    out = Table(title=f"{table['suite']}: {table['cases']} cases")
    out.caption = "means over cases, (n=k): k cases had a value; FID and FVDs over all cases"
    out.add_column("method", no_wrap=True)
    best: dict[str, float] = {}
    for column in table["columns"]:
        higher = higher_is_better(column)
        out.add_column(f"{column} {'↑' if higher else '↓'}", justify="right")
        values = [r[column] for r in table["methods"].values() if r.get(column) is not None]
        if len(values) > 1:
            best[column] = max(values) if higher else min(values)
    for method, row in table["methods"].items():
        cells = []
        for column in table["columns"]:
            value = row.get(column)
            text = "—" if value is None else f"{value:.4g}"
            count = table["counts"][method].get(column, 0)
            if value is not None and count < table["cases"]:
                text += f" (n={count})"
            if value is not None and column in best and math.isclose(value, best[column]):
                text = f"[bold]{text}[/bold]"
            cells.append(text)
        out.add_row(method, *cells)
    return out


@dataclass
class Processes:
    """This process's place in an ``accelerate launch`` (one process otherwise)."""

    state: Any = None

    @property
    def main(self) -> bool:
        return self.state is None or self.state.is_main_process

    def share(self, jobs: list[Job]) -> list[Job]:
        if self.state is None:
            return jobs
        with self.state.split_between_processes(jobs) as mine:
            return list(mine)

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def processes(device: str) -> tuple[Processes, str]:
    """Under ``accelerate launch`` (WORLD_SIZE > 1) the `accelerate.PartialState` and this
    process's device (``cuda:<local index>`` for cuda); else one process and ``device``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes(), device
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    if device in {"cuda", "mps"} and state.device.type == device:
        device = str(state.device)
    return Processes(state), device


def run_suite(
    suite: Suite,
    jobs: list[Job],
    weights: Weights,
    out: Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    on_stage: Callable[[str], None] | None = None,
    on_job: Callable[[Job, bool], None] | None = None,
) -> dict[str, Any] | None:
    """Run the unfinished jobs (this process's share under accelerate), then, on the main
    process, write and return the table (None elsewhere). ``on_job(job, ran)`` is called after
    each job (``ran``: False when it was already finished)."""
    group, device = processes(device)
    metrics = check_metrics(suite)
    for job in group.share(jobs):
        ran = read_score(job) is None
        if ran:
            run_job(job, weights, metrics, device, dtype, on_stage)
        if on_job is not None:
            on_job(job, ran)
    group.wait()
    if not group.main:
        return None
    table = suite_table(suite, jobs)
    write_table(table, out)
    return table
