"""The ``anima`` command line (docs/architecture.md, "The CLI's promises").

Exit status: 0 success; 2 bad input (one line ``error: <what>, <where>`` on stderr, no traceback,
no output file left behind); 1 internal error (with a traceback, for a bug report).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from anima.cli_eval import eval_app
from anima.cli_export import export_app
from anima.cli_train import train_app
from anima.cli_world import world_app
from anima.errors import InputError
from anima.interrupts import Interrupted, interrupted_line, raise_on_signals, restore
from anima.io import atomic_path, staged_outputs, video_kind, write_video
from anima.methods.registry import get_method, method_names
from anima.output_paths import check_apart, check_output
from anima.pipeline import (
    AnimateResult,
    animate,
    parse_device,
    parse_dtype,
    write_dump_files,
    write_outputs,
)
from anima.preflight import check_spec, check_weights
from anima.spec import MotionSpec, json_schema
from anima.weights import PERCEPTION_COMPONENTS, Weights

app = typer.Typer(
    rich_markup_mode=None,
    name="anima",
    help="Animate a single image into a video under precise 3D motion control.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
spec_app = typer.Typer(
    rich_markup_mode=None,
    help="Validate specs and print the MotionSpec JSON Schema.",
    no_args_is_help=True,
)
weights_app = typer.Typer(
    rich_markup_mode=None,
    help="What each method needs and what is present.",
    invoke_without_command=True,
)
convert_app = typer.Typer(
    rich_markup_mode=None,
    help="Convert released checkpoints to our safetensors layout.",
    no_args_is_help=True,
)
weights_app.add_typer(convert_app, name="convert")
app.add_typer(spec_app, name="spec")
app.add_typer(weights_app, name="weights")
app.add_typer(train_app, name="train")
app.add_typer(world_app, name="world")
app.add_typer(eval_app, name="eval")
app.add_typer(export_app, name="export")

console = Console(stderr=True, soft_wrap=True)  # one line a message, terminal or not

WeightsOption = Annotated[
    str | None,
    typer.Option(
        "--weights", help="Weights directory, or 'tiny' / 'toy' (default $ANIMA_WEIGHTS)."
    ),
]


def _run_and_write(
    spec: MotionSpec,
    out: Path,
    weights: Weights,
    *,
    dump: Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    quiet: bool = False,
) -> AnimateResult:
    """Animate a checked spec and write its video (and dump) together: both or neither."""
    out_console = _console(quiet)
    with out_console.status("starting") as status:
        result = animate(
            spec, weights, device=device, dtype=dtype, on_stage=lambda text: status.update(text)
        )
        count = len(result.stream)

        def progress(done: int) -> None:
            status.update(f"frame {done}/{count} made and written to {out}")

        with staged_outputs() as staging:
            write_outputs(result, out, dump, staging, on_frame=progress)
    height, width = result.stream.size
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in result.seconds.items())
    out_console.print(
        f"wrote {out} ({len(result.stream)} frames, {width}x{height}, "
        f"method {spec.method}; {timing})"
    )
    return result


def _console(quiet: bool = False) -> Console:
    """Progress and results on stderr; long lines are not wrapped when stderr is a file."""
    return Console(stderr=True, quiet=quiet, soft_wrap=True)


def _check_outputs(output: Path, dump: Path | None) -> None:
    """One video output and its dump, checked before any work (`anima.output_paths`)."""
    folder = video_kind(output, "-o") == "folder"
    check_output(output, folder=folder, where="-o")
    if dump is not None:
        check_output(dump, folder=True, where="--dump")
    check_apart(output, folder, dump)


def _jobs(
    specs: list[Path], output: Path, dump: Path | None
) -> list[tuple[Path, Path, Path | None]]:
    """(spec, video, dump) for each spec, every output path checked."""
    if len(specs) == 1:
        _check_outputs(output, dump)
        return [(specs[0], output, dump)]
    if output.suffix:
        raise InputError("several specs need a folder as output, not a file", "-o")
    stems = [path.stem for path in specs]
    if len(set(stems)) != len(stems):
        raise InputError("spec file names must differ (they name the outputs)", "SPECS")
    check_output(output, folder=True, where="-o")
    if dump is not None:
        check_output(dump, folder=True, where="--dump")
        check_apart(output, True, dump)
    jobs = [
        (path, output / f"{path.stem}.mp4", dump / path.stem if dump else None) for path in specs
    ]
    for _spec, out, spec_dump in jobs:
        _check_outputs(out, spec_dump)
    return jobs


@app.command("animate")
def animate_command(
    specs: Annotated[list[Path], typer.Argument(help="MotionSpec JSON file(s).")],
    output: Annotated[
        Path,
        typer.Option(
            "-o", "--output", help="Output .mp4, .gif or folder; a folder for several specs."
        ),
    ],
    method: Annotated[
        str | None,
        typer.Option(help="Method name (default: spec, then coarse when no weights are set)."),
    ] = None,
    dump: Annotated[Path | None, typer.Option(help="Write every intermediate here.")] = None,
    weights: WeightsOption = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
    seed: Annotated[int | None, typer.Option(help="Override the spec's seed.")] = None,
    frames: Annotated[int | None, typer.Option(help="Override the spec's num_frames.")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Allow loading pickle checkpoints.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Animate the image of each SPEC and write the video to OUTPUT.

    Every spec and output path is checked before the first render. With several specs, OUTPUT
    is a folder receiving <spec name>.mp4 (and --dump a folder of dumps); under `accelerate
    launch` the specs are split across the processes, each on its own device. An existing
    folder is written into: only the files anima writes there are replaced.
    """
    parse_device(device)
    parse_dtype(dtype)
    resolved_weights = Weights.resolve(weights, allow_pickle=allow_pickle)
    jobs = _jobs(specs, output, dump)
    checked = [
        (check_spec(path, resolved_weights, method=method, seed=seed, frames=frames), out, d)
        for path, out, d in jobs
    ]
    checked, device = _split_across_processes(checked, device)
    for spec, out, spec_dump in checked:
        _run_and_write(
            spec, out, resolved_weights, dump=spec_dump, device=device, dtype=dtype, quiet=quiet
        )


def _split_across_processes(jobs: list, device: str) -> tuple[list, str]:
    """This process's share of ``jobs`` under ``accelerate launch`` (else all of them), and its
    device: process i of a multi-GPU launch uses ``cuda:<local index>``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return jobs, device
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")  # cpu: torchrun without GPUs (multi-CPU mode)
    with state.split_between_processes(jobs) as share:
        mine = list(share)
    if device in {"cuda", "mps"} and state.device.type == device:
        device = str(state.device)
    return mine, device


@app.command("compare")
def compare_command(
    spec: Annotated[Path, typer.Argument(help="MotionSpec JSON file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The grid video (.mp4 or .gif).")],
    methods: Annotated[
        str | None,
        typer.Option(help="Comma-separated methods (default: all whose weights are present)."),
    ] = None,
    weights: WeightsOption = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
    frames: Annotated[int | None, typer.Option(help="Override the spec's num_frames.")] = None,
    size: Annotated[
        int | None, typer.Option(help="Working size: the longer side (coordinates scaled).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps of each method.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the spec's seed.")] = None,
    reference: Annotated[
        Path | None, typer.Option(help="A reference video the metrics compare against.")
    ] = None,
    metrics: Annotated[
        str | None, typer.Option(help="Comma-separated metrics (default: all that can run).")
    ] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Allow loading pickle checkpoints.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Run SPEC through several methods and write them side by side, labelled, to OUTPUT.

    The coarse render comes first, then each method named (default: every method whose
    weights are present and that can run the spec). The metrics of each video go beside the
    grid as OUTPUT with .json. Everything is checked before the first render; the grid and
    its JSON are written together or not at all."""
    from anima.eval.compare import check_grid_output, plan_compare, run_compare
    from anima.eval.runs import parse_overrides

    parse_device(device)
    parse_dtype(dtype)
    check_grid_output(output)
    given = {"frames": frames, "size": size, "steps": steps, "seed": seed}
    overrides = parse_overrides(given, "command-line overrides")
    names = _comma_list(methods, "--methods")
    wanted = _comma_list(metrics, "--metrics")
    source = Weights.resolve(weights, allow_pickle=allow_pickle)
    plan = plan_compare(spec, source, names, overrides)
    out_console = _console(quiet)
    for name, why in plan.skipped.items():
        out_console.print(f"skipped {name}: {why}", markup=False, highlight=False)
    with out_console.status("starting") as status:
        report = run_compare(
            plan, output, source, device=device, dtype=dtype, reference=reference,
            metrics=wanted, on_stage=lambda text: status.update(text),
        )  # fmt: skip
    out_console.print(f"wrote {output} ({', '.join(report['methods'])}) and its metrics")


def _comma_list(text: str | None, where: str) -> list[str] | None:
    """``a,b,c`` as a list (None when not given); an empty list is an input error."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise InputError("names nothing", where)
    return items


@app.command("demo")
def demo_command(
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("anima-demo.mp4"),
    dump: Annotated[Path | None, typer.Option(help="Write every intermediate here.")] = None,
    toy: Annotated[
        bool,
        typer.Option(
            "--toy",
            help="A held-out toy scene animated by a tiny LeviTor trained on the toy world: "
            "ground truth | coarse render | generated.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="--toy: which held-out scene (>= 0).")] = 0,
    steps: Annotated[int, typer.Option(help="--toy: denoising steps (1-1000).")] = 25,
    weights: Annotated[
        str,
        typer.Option(
            help="--toy: a directory with svd/ + levitor/, 'tiny' (random) or 'toy' (the "
            "packaged toy weights: not shipped yet, an error until they are)."
        ),
    ] = "toy",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Animate the sample photo, or a toy scene (--toy).

    Without --toy: the embedded sample photo, with the coarse method (no weights).

    With --toy: a held-out toy scene animated by a tiny LeviTor trained on the toy world."""
    _check_outputs(output, dump)
    if not toy:
        source = Weights()
        with resources.as_file(resources.files("anima") / "assets" / "demo" / "spec.json") as path:
            spec = check_spec(path, source)
            _run_and_write(spec, output, source, dump=dump, quiet=quiet)
        return
    from anima.demo import run_toy_demo, side_by_side

    if not 0 <= seed < 2**63:
        raise InputError(f"must be in 0..2**63-1, got {seed}", "--seed")
    if not 1 <= steps <= 1000:
        raise InputError(f"must be in 1..1000, got {steps}", "--steps")
    source = Weights.resolve(weights)
    console = _console(quiet)
    with console.status("drawing the toy scene") as status:
        demo = run_toy_demo(
            source,
            seed,
            steps,
            on_stage=lambda text: status.update(text),
        )
        status.update(f"writing {output}")
        frames = side_by_side([demo.truth, demo.coarse, demo.generated])
        with staged_outputs() as staging:
            write_video(output, frames, demo.fps, where="-o", staging=staging)
            if dump is not None:
                from anima.world.writer import write_clip_files

                folder = staging.folder(dump)
                (folder / "clip").mkdir()
                write_clip_files(demo.clip, folder / "clip")
                write_dump_files(folder / "levitor", demo.result)
    console.print(
        f"wrote {output} (toy clip seed {demo.clip_seed}: ground truth | coarse render | "
        f"generated, {len(frames)} frames)"
    )


@app.command("studio")
def studio_command(
    host: Annotated[
        str, typer.Option(help="Address to listen on; any but 127.0.0.1 exposes the studio.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    weights: WeightsOption = None,
    device: Annotated[
        str, typer.Option(help="Generation device: cpu, cuda, cuda:N or mps.")
    ] = "cpu",
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted, in MB.")] = 25.0,
    share: Annotated[bool, typer.Option(help="Also open a public Gradio share link.")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Allow loading pickle checkpoints.")] = False,
) -> None:
    """Open the studio, a local web app for drawing 3D trajectories.

    Draw trajectories on a photo, preview them, generate the video and download it with its
    spec (needs gradio, the 'studio' extra)."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise InputError("the studio needs gradio: pip install 'anima[studio]'", "anima studio")
    from anima.studio.server import serve

    parse_device(device)
    source = Weights.resolve(weights, allow_pickle=allow_pickle)
    server = serve(host, port, source, device, max_upload_mb, share=share, quiet=True)
    console.print(f"anima studio on {server.url} (Ctrl+C stops it)")
    server.serve_forever()


@spec_app.command("validate")
def spec_validate(
    specs: Annotated[list[Path], typer.Argument(help="Spec files.")],
    check_files: Annotated[
        bool, typer.Option(help="Also read the files each spec names and check its geometry.")
    ] = True,
    method: Annotated[str | None, typer.Option(help="As for animate.")] = None,
    weights: WeightsOption = None,
    frames: Annotated[int | None, typer.Option(help="As for animate.")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="As for animate.")] = False,
) -> None:
    """Run on each spec the checks `anima animate` runs before its first render (schema,
    method, options, weights, files, geometry) and report each: `<spec>: ok` on stdout, or
    one `error:` line on stderr. Exit status 2 when any spec fails."""
    source = Weights.resolve(weights, allow_pickle=allow_pickle)
    failed = 0
    for path in specs:
        try:
            check_spec(path, source, method=method, frames=frames, files=check_files)
        except InputError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        print(f"{path}: ok")
    if failed:
        raise typer.Exit(2)


@spec_app.command("schema")
def spec_schema(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to a file.")] = None,
) -> None:
    """Print the MotionSpec JSON Schema."""
    text = json.dumps(json_schema(), indent=2) + "\n"
    if output is not None:
        check_output(output, folder=False, where="-o")
    if output is None:
        sys.stdout.write(text)
        return
    with atomic_path(output) as tmp:
        tmp.write_text(text)


@weights_app.callback()
def weights_list(ctx: typer.Context, weights: WeightsOption = None) -> None:
    """List each method and perception backend, what it needs, and what is present."""
    if ctx.invoked_subcommand is not None:
        return
    source = Weights.resolve(weights)
    print(f"weights: {source.describe()}")
    for component in PERCEPTION_COMPONENTS:
        state = "present" if component.present(source.root) else "absent (fallback used)"
        print(f"  perception/{component.subdir:<16} {state:<24} {component.purpose}")
    for name in method_names():
        cls = get_method(name)
        if not cls.components:
            print(f"  {name:<27} {'ready (no weights)':<24} {cls.summary}")
            continue
        variants = cls.weight_variants() or {"": None}
        for variant, options in variants.items():
            missing = [c.subdir for c in cls.missing_components(source, options)]
            state = "missing " + ", ".join(missing) if missing else "ready"
            label = f"{name} ({variant})" if variant else name
            print(f"  {label:<27} {state:<24} {cls.summary}")
    from anima.metrics.components import METRIC_COMPONENTS

    for component in METRIC_COMPONENTS:
        state = "present" if component.present(source.root) else "absent (metric skipped)"
        print(f"  {component.subdir:<27} {state:<24} {component.purpose}")


@convert_app.command("levitor")
def weights_convert_levitor(
    source: Annotated[Path, typer.Argument(help="Checkpoint dir (or a release with controlnet/).")],
    output: Annotated[Path, typer.Argument(help="Where to write the converted ControlNet.")],
    allow_pickle: Annotated[bool, typer.Option(help="Allow reading pickle weights.")] = False,
) -> None:
    """Convert an SVD ControlNet checkpoint (LeviTor's release, the community temporal depth
    ControlNet, or pickle weights) to our safetensors layout, checking every key and shape."""
    from anima.models.convert import convert_controlnet

    convert_controlnet(source, output, allow_pickle=allow_pickle)
    print(f"wrote {output} (config.json + diffusion_pytorch_model.safetensors)")


@convert_app.command("xdyna")
def weights_convert_xdyna(
    sd15: Annotated[
        Path, typer.Option("--sd15", help="SD1.5 in diffusers layout (its unet/config.json).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Weights directory to write into.")],
    unet: Annotated[
        Path | None, typer.Option(help="Release UNet checkpoint (unet-checkpoint-epoch-5.ckpt).")
    ] = None,
    controlnet: Annotated[
        Path | None, typer.Option(help="Release pose ControlNet checkpoint.")
    ] = None,
    face_controlnet: Annotated[
        Path | None, typer.Option(help="Release S-Face ControlNet checkpoint.")
    ] = None,
    ip_adapter: Annotated[
        Path | None,
        typer.Option(
            help="IP-Adapter's ip-adapter-plus_sd15.bin (the resampler the release uses)."
        ),
    ] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Allow reading pickle weights.")] = False,
) -> None:
    """Convert X-Dyna's release checkpoints (UNet, pose and face ControlNets, IP-Adapter).

    Writes OUT/motion-adapter, OUT/xdyna/adapter (recording the release's normalisation),
    OUT/xdyna/pose_controlnet, OUT/xdyna/face_controlnet,
    OUT/ip-adapter/ip-adapter-plus_sd15.safetensors (the UNet checkpoint's to_k_ip/to_v_ip with
    --ip-adapter's resampler) and, where the UNet checkpoint's SD1.5 tensors differ from
    --sd15's, OUT/xdyna/unet_spatial.safetensors with the release's, after checking every key
    and shape. IP-Adapter's image encoder is copied by hand to OUT/ip-adapter/image_encoder/."""
    from anima.methods.xdyna.convert import convert_xdyna

    report = convert_xdyna(
        sd15, out, unet, controlnet, face_controlnet, allow_pickle, ip_adapter=ip_adapter
    )
    for line in report.lines():
        print(line)


@weights_app.command("check")
def weights_check(method: str, weights: WeightsOption = None) -> None:
    """Exit 0 when METHOD can run with the configured weights, else name what is missing."""
    cls = get_method(method, "METHOD")
    source = Weights.resolve(weights)
    check_weights(cls, source)
    notes = [f"built-in '{source.builtin}'"] if source.builtin in cls.builtin_weights else []
    note = cls.describe_weights(source)
    if note is not None:
        notes.append(note)
    print(f"{method}: ready" + (f" ({'; '.join(notes)})" if notes else ""))


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    console.print(f"warning: {message}", markup=False, highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and maps errors (and SIGINT / SIGTERM) to exit statuses."""
    previous_showwarning = warnings.showwarning
    warnings.showwarning = _print_warning
    previous_handlers = raise_on_signals()
    try:
        return _main(argv)
    except Interrupted as exc:
        print(interrupted_line(exc), file=sys.stderr)
        return exc.exit_status
    finally:
        restore(previous_handlers)
        warnings.showwarning = previous_showwarning


def _main(argv: list[str] | None) -> int:
    try:
        status = app(args=argv, standalone_mode=False, prog_name="anima")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 1
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `anima` (or a group): its help
            print(exc.format_message())
            return 0
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print("internal error (a bug): please report the traceback above", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0  # click returns typer.Exit's code


if __name__ == "__main__":
    sys.exit(main())
