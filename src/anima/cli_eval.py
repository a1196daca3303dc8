"""``anima eval ...``: scoring methods against exact ground truth (a typer sub-app, added to
`anima.cli` as ``eval``).

``anima eval levitor --toy [--n 20] [--seed S] [--weights toy|tiny|DIR] [--steps 25]
[--json OUT] [--frames 8] [--size 64] [--quiet]`` generates N toy clips from the evaluation seed
S (`anima.eval.levitor.eval_clip_seed`: never the streams of `anima world make`), runs every
LeviTor variant found in the weights on each clip's first frame and MotionSpec, and prints the
means over clips (NaNs left out, with a count) as a table like the paper's Table 2: rows
first_frame (reference: frame 0 repeated), base, full, single_point, no_depth, no_instance; the
best variant per column in bold. ``--json`` writes the report atomically. Bad input is an
`InputError` (exit status 2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from anima.errors import InputError

eval_app = typer.Typer(rich_markup_mode=None, help="Score methods against exact ground truth.")

COLUMNS = (
    ("objmc", "ObjMC ↓", 2),
    ("occlusion_acc", "Occl. acc ↑", 3),
    ("scale_err", "Scale err ↓", 3),
    ("psnr", "PSNR ↑", 2),
    ("ssim", "SSIM ↑", 3),
    ("objmc_held", "ObjMC held ↓", 2),
    ("tracked_fraction", "Tracked ↑", 2),
)


@eval_app.callback()
def _eval() -> None:
    """Score methods against exact ground truth."""


def _best(report: dict[str, Any], metric: str, higher: bool) -> float | None:
    values = [v[metric] for v in report["variants"].values() if v[metric] is not None]
    if not values:
        return None
    return max(values) if higher else min(values)


def results_table(report: dict[str, Any]) -> Table:
    """The report as a Rich table (means over clips; n < clips shown when NaNs were left out)."""
    from anima.eval.levitor import HIGHER_IS_BETTER, REFERENCE

    n = report["settings"]["n"]
    table = Table(title=f"LeviTor on {n} toy clips (seed {report['settings']['seed']})")
    table.caption = (
        "means over clips, (n=k): k clips had a value; first_frame = frame 0 repeated "
        "(reference, never bold); bold = best variant; ObjMC averages the points still tracked "
        "(Tracked: their share), ObjMC held all, lost ones at their last position"
    )
    table.add_column("variant", no_wrap=True)
    for _key, title, _digits in COLUMNS:
        table.add_column(title, justify="right")
    best = {key: _best(report, key, HIGHER_IS_BETTER[key]) for key, _t, _d in COLUMNS}
    rows = [(REFERENCE, report["reference"][REFERENCE])]
    rows += list(report["variants"].items())
    for name, values in rows:
        if name in report["skipped"]:
            table.add_row(name, *["—"] * len(COLUMNS))
            continue
        cells = []
        for key, _title, digits in COLUMNS:
            value = values[key]
            if value is None:
                cells.append("nan")
                continue
            text = f"{value:.{digits}f}"
            count = report["counts"][name][key]
            if count < n:
                text += f" (n={count})"
            if name != REFERENCE and best[key] is not None and math.isclose(value, best[key]):
                text = f"[bold]{text}[/bold]"
            cells.append(text)
        table.add_row(name, *cells)
    return table


@eval_app.command("levitor")
def levitor_command(
    toy: Annotated[bool, typer.Option("--toy", help="Evaluate on generated toy clips.")] = False,
    n: Annotated[int, typer.Option("--n", help="Number of clips.")] = 20,
    seed: Annotated[
        int, typer.Option(help="Evaluation seed: use one never used for training.")
    ] = 1_000_003,
    weights: Annotated[
        str,
        typer.Option(
            "--weights",
            help="'toy' (packaged toy weights, not shipped yet), 'tiny' (random) or a directory.",
        ),
    ] = "toy",
    steps: Annotated[int, typer.Option(help="Euler steps per video.")] = 25,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    frames: Annotated[int, typer.Option(help="Frames per clip.")] = 8,
    size: Annotated[int, typer.Option(help="Clip side in pixels (square, even).")] = 64,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """LeviTor and its ablations on toy clips, scored as in the paper's Table 2.

    ObjMC, occlusion accuracy, scale error, PSNR and SSIM; first_frame is frame 0 repeated."""
    from anima.eval.levitor import (
        REFERENCE,
        VARIANTS,
        EvalSettings,
        evaluate_toy,
        plan_variants,
    )
    from anima.io import atomic_path
    from anima.methods.base import run_dtype
    from anima.pipeline import parse_device, parse_dtype
    from anima.weights import Weights

    if not toy:
        raise InputError("only toy-world evaluation exists so far: pass --toy", "--toy")
    # What the models run in, as in `anima animate` (float16 on the CPU: float32, one warning).
    dtype = str(run_dtype(parse_device(device), parse_dtype(dtype))).removeprefix("torch.")
    settings = EvalSettings(
        n=n,
        seed=seed,
        weights=weights,
        steps=steps,
        frames=frames,
        size=size,
        device=device,
        dtype=dtype,
    )
    settings.check()
    if json_out is not None and json_out.is_dir():
        raise InputError("is a directory", f"--json {json_out}")
    plan = plan_variants(Weights.resolve(weights))  # fail before any work
    err = Console(stderr=True, quiet=quiet)
    err.print(
        f"note: eval clips use seed {seed} in the evaluation namespace; "
        "make sure it was never a training seed"
    )
    total = n * (1 + len(plan.present))
    with Progress(
        TextColumn("clips x variants"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    ) as progress:
        task = progress.add_task("", total=total)
        report = evaluate_toy(
            settings,
            on_step=lambda i, row: progress.update(task, advance=1, description=f"{i} {row}"),
        )
    out = Console()  # the results, even with --quiet
    out.print(results_table(report))
    for variant, why in report["skipped"].items():
        out.print(f"skipped {variant}: {why}")
    assert set(report["variants"]) == set(VARIANTS) and REFERENCE in report["reference"]
    if json_out is not None:
        with atomic_path(json_out) as path:
            path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        err.print(f"wrote {json_out}")


def _metric_cell(value: float) -> str:
    if not math.isfinite(value):
        return "inf" if value > 0 else ("nan" if math.isnan(value) else "-inf")
    return f"{value:.4g}"


def video_table(report: Any, title: str) -> Table:
    """One row a computed metric (value, direction, the paper that reports it)."""
    from anima.eval.video import METRICS, higher_is_better

    table = Table(title=title)
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right")
    table.add_column("better", justify="center")
    table.add_column("reported in")
    for name, value in report.values.items():
        base = METRICS[name.removeprefix("fg_").removeprefix("bg_")]
        arrow = "↑" if higher_is_better(name) else "↓"
        table.add_row(name, _metric_cell(value), arrow, base.paper)
    return table


@eval_app.command("video")
def video_command(
    generated: Annotated[Path, typer.Argument(help="The generated video (.mp4, .gif, frames).")],
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Ground-truth video (same frames, size).")
    ] = None,
    render: Annotated[
        Path | None,
        typer.Option("--render", help="Guidance render (I2V3D layout) or an `--dump` folder."),
    ] = None,
    spec: Annotated[
        Path | None, typer.Option("--spec", help="The spec the video was made from.")
    ] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="Text for CLIP-T.")] = None,
    captions: Annotated[
        Path | None,
        typer.Option("--captions", help="Other captions for CLIP-R, one a line."),
    ] = None,
    masks: Annotated[
        Path | None, typer.Option("--masks", help="Foreground masks as a video or frames.")
    ] = None,
    metrics: Annotated[
        str | None, typer.Option("--metrics", help="Comma-separated metrics (default all).")
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option("--weights", help="Weights directory or 'tiny' (default $ANIMA_WEIGHTS)."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the scores here (default: none).")
    ] = None,
    clip_length: Annotated[int, typer.Option(help="Frames per FVD clip.", min=2)] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps.")] = "cpu",
    allow_pickle: Annotated[bool, typer.Option(help="Allow loading pickle checkpoints.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Every metric the papers report whose inputs are given and whose weights are present.

    The others are listed as skipped, each with what it needs (README, "Evaluation")."""
    from anima.eval.video import check_metric_names, evaluate, inputs_from
    from anima.io import atomic_path, read_video
    from anima.output_paths import check_output
    from anima.pipeline import resolve_spec
    from anima.spec import load_spec
    from anima.weights import Weights

    source = Weights.resolve(weights, allow_pickle=allow_pickle)
    wanted = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    if wanted is not None:
        check_metric_names(wanted)
    if json_out is not None:
        json_out = check_output(json_out, folder=False, where="--json")
    frames, _fps = read_video(generated, where="GENERATED")
    resolved = None
    if spec is not None:  # at the video's length, as `anima animate --frames N` resolves it
        resolved = resolve_spec(load_spec(spec), num_frames=len(frames), weights=source)
    inputs = inputs_from(
        frames, resolved, reference, render, prompt, masks=masks, weights=source, captions=captions
    )
    err = Console(stderr=True, quiet=quiet)
    with Progress(
        TextColumn("metrics"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    ) as progress:
        task = progress.add_task("", total=None)
        report = evaluate(
            inputs,
            source,
            device=device,
            metrics=wanted,
            clip_length=clip_length,
            on_metric=lambda name: progress.update(task, description=name),
        )
    out = Console()
    out.print(video_table(report, f"{generated.name}: {len(report.values)} metrics"))
    for name, why in report.skipped.items():
        out.print(f"skipped {name}: {why}", highlight=False)
    if json_out is not None:
        payload = {"video": str(generated), **report.to_json()}
        with atomic_path(json_out) as path:
            path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        err.print(f"wrote {json_out}")


# --------------------------------------------------------------------------- anima eval suite


@eval_app.command("suite")
def suite_command(
    suite: Annotated[Path, typer.Argument(help="Suite JSON file.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Results folder (default: <suite name>-results beside it)."),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(help="'tiny', 'toy' or a directory (default: the suite's, $ANIMA_WEIGHTS)."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
    allow_pickle: Annotated[bool, typer.Option(help="Allow loading pickle checkpoints.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Run a suite's specs through its methods, score them and print the table.

    Writes OUT/videos/<case>/<method>.mp4, OUT/scores/<case>/<method>.json and
    OUT/table.json + table.csv (rows methods, columns metrics). Every case is checked before
    the first render; finished cases (their score records the same inputs) are not run again,
    so an interrupted suite resumes. Under `accelerate launch` the cases are split across the
    processes (README, "Evaluation")."""
    from anima.eval.suite import (
        default_out,
        load_suite,
        plan_suite,
        read_score,
        rich_table,
        run_suite,
        suite_weights,
    )
    from anima.output_paths import check_output
    from anima.pipeline import parse_device, parse_dtype

    parse_device(device)
    parse_dtype(dtype)
    loaded = load_suite(suite)
    out = out if out is not None else default_out(loaded)
    check_output(out, folder=True, where="--out")
    source = suite_weights(loaded, weights, allow_pickle)
    jobs = plan_suite(loaded, source, out)
    done = sum(read_score(job) is not None for job in jobs)
    err = Console(stderr=True, quiet=quiet, soft_wrap=True)
    if done:
        err.print(f"{done} of {len(jobs)} case x method runs already finished in {out}")
    with Progress(
        TextColumn("cases x methods"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    ) as progress:
        task = progress.add_task("", total=len(jobs))
        table = run_suite(
            loaded,
            jobs,
            source,
            out,
            device=device,
            dtype=dtype,
            on_stage=lambda text: progress.update(task, description=text),
            on_job=lambda job, ran: progress.update(task, advance=1),
        )
    if table is None:  # not the main process: it writes and prints the table
        return
    Console().print(rich_table(table))
    for method, missing in table["missing"].items():
        err.print(f"{method}: no score for {', '.join(missing)}")
    err.print(f"wrote {out / 'table.json'} and {out / 'table.csv'}")
