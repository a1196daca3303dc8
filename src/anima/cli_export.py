"""``anima export ...``: what a trained result holds besides the video (a typer sub-app, added
to `anima.cli` as ``export``).

``anima export animate124 RUN -o DIR [--size S] [--frames F] [--time T ...]`` writes an
Animate124 run's 10-view orbit videos and a mesh (GLB) per chosen time
(`anima.methods.animate124.export`). Everything is checked before any rendering; the outputs
are staged and moved into place together (docs/architecture.md, "The CLI's promises"). Bad
input is an `InputError`: one line ``error: <what>, <where>``, exit status 2. Heavy modules
are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from anima.errors import InputError

export_app = typer.Typer(
    rich_markup_mode=None, help="Export what a trained result holds.", no_args_is_help=True
)


@export_app.callback()
def _export() -> None:
    """Export what a trained result holds (one sub-command a method)."""


@export_app.command("animate124")
def export_animate124(
    run: Annotated[Path, typer.Argument(help="The Animate124 run folder (options.run).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    size: Annotated[int, typer.Option(help="Side of the orbit videos (the release's 400).")] = 256,
    frames: Annotated[int, typer.Option(help="Frames of each orbit video (64).")] = 64,
    fps: Annotated[float, typer.Option(help="Frame rate of the videos.")] = 8.0,
    time: Annotated[
        list[float] | None,
        typer.Option("--time", help="A time in [0, 1] to write a mesh at (repeatable; 0)."),
    ] = None,
    resolution: Annotated[int, typer.Option(help="Marching-cubes lattice side.")] = 128,
    threshold: Annotated[float, typer.Option(help="Density of the mesh surface.")] = 10.0,
    shading: Annotated[str, typer.Option(help="albedo or lambertian.")] = "albedo",
    march_steps: Annotated[int, typer.Option(help="Ray-marching steps across the box.")] = 1024,
    stage: Annotated[
        str | None, typer.Option(help="static, dynamic or refine (default: the last finished).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Write RUN's 10-view orbit videos (view_00.mp4 .. view_09.mp4: polar 90, 36 degrees
    apart) and a mesh per --time (mesh_t<time>.glb) into OUTPUT."""
    from anima.io import staged_outputs
    from anima.methods.animate124.export import export_run
    from anima.methods.animate124.stages import STAGES
    from anima.methods.animate124.train import load_stage_field
    from anima.output_paths import check_output

    times = list(time) if time else [0.0]
    for value in times:
        if not 0.0 <= value <= 1.0:
            raise InputError(f"must be in [0, 1], got {value:g}", "--time")
    checks = {
        "--size": (size, 8, 4096),
        "--frames": (frames, 1, 4096),
        "--resolution": (resolution, 8, 1024),
        "--march-steps": (march_steps, 8, 8192),
    }
    for flag, (value, low, high) in checks.items():
        if not low <= value <= high:
            raise InputError(f"must be in {low}..{high}, got {value}", flag)
    if fps <= 0:
        raise InputError(f"must be positive, got {fps:g}", "--fps")
    if shading not in ("albedo", "lambertian"):
        raise InputError(f"must be albedo or lambertian, got {shading!r}", "--shading")
    if stage is not None and stage not in STAGES:
        raise InputError(f"must be one of {', '.join(STAGES)}, got {stage!r}", "--stage")
    if not run.is_dir():
        raise InputError("run folder not found", str(run))
    check_output(output, folder=True, where="-o")
    found, field = load_stage_field(run, stage)  # type: ignore[arg-type]
    console = Console(stderr=True, quiet=quiet, soft_wrap=True)
    with console.status("exporting") as status, staged_outputs() as staging:
        written = export_run(
            field,
            output,
            size=size,
            num_frames=frames,
            fps=fps,
            times=times,
            resolution=resolution,
            threshold=threshold,
            shading=shading,  # type: ignore[arg-type]
            march_steps=march_steps,
            staging=staging,
            on_stage=lambda text: status.update(text),
        )
    console.print(
        f"wrote {output} ({len(written)} files from the {found} stage)",
        markup=False,
        highlight=False,
    )
