"""Animate124 on this CPU: the oracle reconstruction of a toy 4D scene, and each stage's speed.

(Animate124 §3.2-3.4; issue 21, "Must show" and "Benchmark"; docs/architecture.md, "The toy
world", "The training loop".)

**Oracle reconstruction** (part a, always run). `anima.methods.animate124.oracle.toy_scene_4d`
(``--seed``) is an object-centric dynamic scene (a sphere and a box on periodic paths in the
box [-1, 1]^3) ray-cast exactly from any camera at any time. The static stage and then the
dynamic stage run on the shared training loop (`anima.methods.animate124.train.train_stage`)
with the oracle priors (`oracle.oracle_priors`: the truth rendered at each step's cameras,
times and background, scored by the same `StableDiffusionSDS` / `VideoSDS` classes as the
learned priors through a pixel-space exact epsilon, CFG 1) and the reference view taken from
the truth at t = 0 (`oracle.reference_from_scene`). Everything else is the stages' own code:
camera sampling, temporal balanced sampling, the reference reconstruction, temporal TV and the
regularisers. CPU-sized settings (`ORACLE_SETTINGS`; ``--quick`` a shorter run): renders of
``render_size`` pixels, ``march_steps`` marching steps, a reduced field (``grid_levels``,
2^``grid_log2_table`` entries a level, ``num_times`` time grids), clips of ``num_frames``
frames, albedo shading (the truth carries its own fixed light), a learning rate of 1e-2 (the
paper's 1e-3 is ten times slower to converge at this size) decayed to 1e-3 by a cosine over
each stage (``lr_min``: the last dB; constant, 800 iterations reach 23.6 instead of 24.5),
with the release's grid learning rate scale (10). 128 marching steps: at 64 the static stage
plateaus about 2 dB lower (the density shells are sampled too coarsely). 24 time grids: the
objects move up to 0.1 of the box between two of them, and a held-out time between two grids
sees their blend (8 grids and 250 iterations: 20.5 dB). Figures:

- ``psnr_db``: the median PSNR (dB; images in [0, 1] on white, the whole frame) of the
  trained dynamic field's renders against the truth at held-out (camera, time) pairs
  (`held_out_views`: azimuths halfway between an 8-view orbit's, polar 75 and 105 degrees
  alternately, times 0.13, 0.37, 0.61 and 0.89, none of which the clip sampler's 1/256 grid
  of times can draw); ``psnr_min_db`` / ``psnr_max_db`` their range;
- ``psnr_untrained_db``: the same views rendered by the untrained static field (the
  starting point); ``psnr_static_db``: by the trained static field (the scene frozen at
  t = 0, so what the dynamic stage had to add);
- ``static_iterations``, ``dynamic_iterations``, ``static_s``, ``dynamic_s``,
  ``oracle_total_s``: iterations and wall seconds of each stage and of the whole part.

**Stage speed** (part b; ``--no-speed`` skips it, ``--no-oracle`` skips part a). Each stage
(static, dynamic, refine) with the tiny learned priors (``--weights tiny``:
`train.load_priors`), the field at full size (64 time grids of 16 levels, 2^16 entries,
resolutions 16-2048: `field.parameter_count`), the stages' default settings otherwise (clips
of 16 frames, random lambertian / textureless shading, or ``--speed-shading albedo``: no
normals, a seventh of the field's evaluations) but for the marching steps
(``--speed-march-steps``: `volume.FAST_STEPS` = 128, the CPU setting; the release's 1024
costs up to 8 x more per ray) at ``--speed-sizes`` (64 and 128) pixel renders:
``--speed-steps`` iterations of each stage, timed through the loop's per-step progress
callback; ``it_per_s[size][stage]`` is one over the median seconds of the iterations after
the first (the first includes the priors' and optimiser's warm-up). The stages are trained in
one run folder, each from the previous one's field, exactly as a user's run (the field
written between stages is not timed). ``--speed-stages`` times only some stages (the ones
before them run one untimed iteration each, so that the timed ones start from a field of the
right shape): on a 2-core CPU one full-size dynamic iteration at 64 px did not finish in 14
minutes (12 GB resident), so there ``--speed-stages static`` or ``--speed-shading albedo``
is what fits.
``field_parameters`` is the full-size dynamic field's parameter count;
``peak_rss_gib`` the process's peak resident memory (``VmHWM``, Linux) over
the whole benchmark; ``speed_steps``, ``speed_march_steps`` and ``speed_shading`` the
settings.

Prints progress lines and, last, one JSON object with every figure and the machine.

    python benchmarks/animate124.py [--seed 0] [--quick] [--no-speed | --no-oracle]
        [--speed-shading albedo] [--speed-sizes 64 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from machine import machine
from memory import peak_rss_gib

from anima.methods.animate124.cameras import make_cameras
from anima.methods.animate124.field import Field4D, parameter_count
from anima.methods.animate124.oracle import (
    ToyScene4D,
    oracle_priors,
    reference_from_scene,
    toy_scene_4d,
)
from anima.methods.animate124.stages import STAGES, StageOptions
from anima.methods.animate124.train import initial_fields, load_priors, train_stage
from anima.methods.animate124.volume import FAST_STEPS, RenderOptions, render
from anima.metrics import psnr
from anima.weights import Weights

GIB = 1024**3
#: Progress lines reach a pipe at once (the run takes minutes).
print = functools.partial(print, flush=True)  # noqa: A001

#: The oracle experiment's CPU-sized settings (module docstring); every other option is the
#: stages' default.
ORACLE_SETTINGS: dict[str, Any] = {
    "render_size": 32,
    "march_steps": 128,
    "shading": "albedo",
    "grid_levels": 8,
    "grid_base_resolution": 16,
    "grid_max_resolution": 256,
    "grid_log2_table": 14,
    "num_times": 24,
    "num_frames": 4,
    "tv_points": 1024,
    "lr": 1e-2,
    "lr_min": 1e-3,
    "grid_lr_scale": 10.0,
    "reference_warmup": 20,
    "static_steps": 300,
    "dynamic_steps": 800,
    "checkpoint_every": 100000,
    "log_every": 50,
}
#: ``--quick``: the same with fewer iterations (a smoke run, not the figure).
QUICK_STEPS = {"static_steps": 100, "dynamic_steps": 100}
HELD_OUT_TIMES = (0.13, 0.37, 0.61, 0.89)


def held_out_views(count: int = 8) -> list[tuple[float, float, float]]:
    """(polar, azimuth, time) of the held-out views (module docstring): ``count`` azimuths
    halfway between an orbit's, polar 75 / 105 alternately, each at every held-out time."""
    views = []
    for k in range(count):
        azimuth = (k + 0.5) * 360.0 / count - 180.0
        polar = 75.0 if k % 2 == 0 else 105.0
        views += [(polar, azimuth, t) for t in HELD_OUT_TIMES]
    return views


@torch.no_grad()
def view_psnrs(
    field: Field4D,
    scene: ToyScene4D,
    views: list[tuple[float, float, float]],
    size: int,
    march_steps: int,
) -> list[float]:
    """PSNR (dB) of ``field``'s albedo renders on white against the truth at ``views``."""
    values = []
    options = RenderOptions(num_steps=march_steps)
    for polar, azimuth, t in views:
        camera = make_cameras(polar, azimuth)
        truth = scene.render(camera.poses[0], camera.fov, (size, size), t).rgb
        out = render(field, camera.poses[0], camera.fov, (size, size), t, options=options)
        values.append(float(psnr(out.rgb.clamp(0, 1)[None], truth[None])))
    return values


def oracle_reconstruction(
    seed: int, settings: dict[str, Any], run: Path, report: Any = print
) -> dict[str, Any]:
    """Part (a): the static then the dynamic stage on the oracle priors; held-out PSNR."""
    scene = toy_scene_4d(seed)
    options = StageOptions(**settings)
    size = options.render_size
    reference = reference_from_scene(scene, options.reference_size or size)
    priors = oracle_priors(scene, size)
    views = held_out_views()
    began = time.perf_counter()
    untrained, _ = initial_fields(run, "static", options, seed)
    before = view_psnrs(untrained, scene, views, size, options.march_steps)
    static = train_stage(run, "static", reference, options, priors=priors, seed=seed)
    after_static = view_psnrs(static.field, scene, views, size, options.march_steps)
    report(
        f"oracle static: {static.step} iterations in {static.seconds:.0f} s, held-out PSNR "
        f"{statistics.median(before):.1f} -> {statistics.median(after_static):.1f} dB"
    )
    dynamic = train_stage(run, "dynamic", reference, options, priors=priors, seed=seed)
    after = view_psnrs(dynamic.field, scene, views, size, options.march_steps)
    total = time.perf_counter() - began
    report(
        f"oracle dynamic: {dynamic.step} iterations in {dynamic.seconds:.0f} s, held-out PSNR "
        f"{statistics.median(after):.1f} dB (min {min(after):.1f}, max {max(after):.1f})"
    )
    return {
        "seed": seed,
        "settings": settings,
        "held_out_views": len(views),
        "psnr_db": statistics.median(after),
        "psnr_min_db": min(after),
        "psnr_max_db": max(after),
        "psnr_untrained_db": statistics.median(before),
        "psnr_static_db": statistics.median(after_static),
        "static_iterations": static.step,
        "dynamic_iterations": dynamic.step,
        "static_s": static.seconds,
        "dynamic_s": dynamic.seconds,
        "oracle_total_s": total,
    }


def stage_speed(
    size: int,
    steps: int,
    march_steps: int,
    run: Path,
    stages: tuple[str, ...] = STAGES,
    report: Any = print,
    shading: str = "random",
) -> dict[str, float]:
    """Part (b) at ``size`` pixel renders: iterations per second of each stage."""
    options = StageOptions(
        render_size=size,
        march_steps=march_steps,
        shading=shading,
        static_steps=steps,
        dynamic_steps=steps,
        refine_steps=steps,
        checkpoint_every=100000,
        log_every=100000,
        reference_warmup=0,
    )
    reference = reference_from_scene(toy_scene_4d(0), size)
    tiny = Weights(builtin="tiny")
    speeds = {}
    for stage in STAGES[: max(STAGES.index(name) for name in stages) + 1]:
        if stage not in stages:  # trained, not timed: the next stage starts from it
            options = options.model_copy(update={f"{stage}_steps": 1})
        priors = load_priors(tiny, stage, reference, options, "a toy", run=run)
        stamps: list[float] = []
        train_stage(
            run,
            stage,
            reference,
            options,
            priors=priors,
            report=lambda _line, stamps=stamps: stamps.append(time.perf_counter()),
        )
        if stage not in stages:
            continue
        gaps = [after - before for before, after in zip(stamps[:-1], stamps[1:], strict=True)]
        speeds[stage] = 1.0 / statistics.median(gaps) if gaps else float("nan")
        report(f"speed {size}x{size} {stage}: {speeds[stage]:.3f} it/s ({len(gaps)} timed)")
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="the toy scene's seed")
    parser.add_argument("--quick", action="store_true", help="a short oracle run")
    parser.add_argument("--no-speed", action="store_true", help="skip the stage speed part")
    parser.add_argument("--no-oracle", action="store_true", help="skip the oracle part")
    parser.add_argument("--speed-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--speed-steps", type=int, default=3, help="iterations a stage (>= 2)")
    parser.add_argument(
        "--speed-march-steps", type=int, default=FAST_STEPS, help="marching steps (release 1024)"
    )
    parser.add_argument(
        "--speed-stages", nargs="+", default=list(STAGES), choices=STAGES, help="stages timed"
    )
    parser.add_argument(
        "--speed-shading",
        default="random",
        choices=("random", "albedo"),
        help="the stages' shading when timed (random: the default, normals every step)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="override oracle settings"
    )
    args = parser.parse_args()
    if args.speed_steps < 2:
        parser.error("--speed-steps must be at least 2 (the first is not timed)")
    torch.set_num_threads(args.threads)
    settings = dict(ORACLE_SETTINGS) | (QUICK_STEPS if args.quick else {})
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = json.loads(value)
    report: dict[str, Any] = {"benchmark": "animate124", "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="animate124-") as tmp:
        if not args.no_oracle:
            report["oracle"] = oracle_reconstruction(args.seed, settings, Path(tmp) / "oracle")
        if not args.no_speed:
            report["it_per_s"] = {
                str(size): stage_speed(
                    size,
                    args.speed_steps,
                    args.speed_march_steps,
                    Path(tmp) / f"speed{size}",
                    tuple(args.speed_stages),
                    shading=args.speed_shading,
                )
                for size in args.speed_sizes
            }
            report["speed_steps"] = args.speed_steps
            report["speed_march_steps"] = args.speed_march_steps
            report["speed_shading"] = args.speed_shading
    report["field_parameters"] = parameter_count(**full_field())
    report["peak_rss_gib"] = peak_rss_gib()
    print(json.dumps(report))


def full_field() -> dict[str, Any]:
    """`Field4D`'s arguments at the stages' default (full) size."""
    options = StageOptions()
    return {"num_times": options.num_times, **_grid_arguments(options)}


def _grid_arguments(options: StageOptions) -> dict[str, Any]:
    arguments = options.field_arguments()
    return {
        "num_levels": arguments["num_levels"],
        "base_resolution": arguments["base_resolution"],
        "desired_resolution": arguments["desired_resolution"],
        "log2_table_size": arguments["log2_table_size"],
        "hidden": arguments["hidden"],
    }


if __name__ == "__main__":
    main()
