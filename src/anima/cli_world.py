"""``anima world ...``: the procedural toy world (a typer sub-app, added to `anima.cli` as
``world``).

``anima world make --n N --seed S --out DIR [--height H --width W] [--frames F]
[--figures/--no-figures] [--quiet]`` writes N clips (`anima.world.writer.write_world`: clip i is
drawn with ``SeedSequence([S, i])``) in the layout ``anima train levitor --data DIR`` reads.
The whole directory is written under a temporary name and moved into place, so a failed run
leaves nothing half-written; an existing world directory (one with ``world_index.json``) is
replaced, any other non-empty directory is refused. Bad input is an `InputError`: one line
``error: <what>, <where>``, exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from anima.errors import InputError

world_app = typer.Typer(
    rich_markup_mode=None, help="The procedural toy world with exact ground truth."
)


@world_app.callback()
def _world() -> None:
    """The procedural toy world (clips with exact ground truth)."""


def _check(n: int, seed: int, height: int, width: int, frames: int, out: Path) -> None:
    if n <= 0:
        raise InputError(f"must be >= 1, got {n}", "--n")
    if seed < 0:
        raise InputError(f"must be >= 0, got {seed}", "--seed")
    for name, value in (("--height", height), ("--width", width)):
        if value < 16 or value > 4096 or value % 2:
            raise InputError(f"must be an even number in 16..4096, got {value}", name)
    if not 2 <= frames <= 1024:
        raise InputError(f"must be in 2..1024, got {frames}", "--frames")
    if out.exists():
        if not out.is_dir():
            raise InputError("exists and is not a directory", f"--out {out}")
        from anima.world.writer import INDEX_NAME

        if any(out.iterdir()) and not (out / INDEX_NAME).is_file():
            raise InputError(
                f"is a non-empty directory without {INDEX_NAME}; refusing to replace it",
                f"--out {out}",
            )


@world_app.command("make")
def make_command(
    n: Annotated[int, typer.Option("--n", help="Number of clips.")],
    out: Annotated[Path, typer.Option(help="Output directory (replaced if it is a world).")],
    seed: Annotated[int, typer.Option(help="World seed (>= 0).")] = 0,
    height: Annotated[int, typer.Option(help="Clip height (even).")] = 64,
    width: Annotated[int, typer.Option(help="Clip width (even).")] = 64,
    frames: Annotated[int, typer.Option(help="Frames per clip.")] = 8,
    figures: Annotated[bool, typer.Option(help="Allow articulated figures.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Write N toy clips (frames, instance, depth, tracks, camera, keypoints, spec) to OUT."""
    from anima.world.clip import WorldConfig
    from anima.world.writer import write_world

    _check(n, seed, height, width, frames, out)
    config = WorldConfig(size=(height, width), num_frames=frames, figures=figures)
    console = Console(stderr=True, quiet=quiet)
    with Progress(
        TextColumn("clips"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as progress:
        task = progress.add_task("clips", total=n)
        write_world(out, n, seed, config, on_clip=lambda _i: progress.advance(task))
    console.print(f"wrote {n} clips to {out}", markup=False, highlight=False)
