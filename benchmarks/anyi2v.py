"""AnyI2V's cost: the whole pipeline over its sampling alone, and a full-size step and iteration.

Mid-size part (default): a random `UNetMotionModel` with SD1.5's structure (four levels, two
layers a block, three in each up block, cross-attention in the first three down and the last
three up blocks, so that every layer AnyI2V names exists) at block channels 64, 128, 256, 256,
AnimateDiff v3-style motion modules (no mid-block module), the tiny VAE and text encoder; 64x64,
16 frames, the release's schedule (25 DDIM steps, CFG 8, inversion to t = 201, first-frame
injection on steps 0-3, latent optimisation on steps 0-5 with 5 iterations each) with one box
moving right across the image. ``ratio`` is the median wall time of that whole run over the
median of the same run with injection and optimisation off (``InjectionOptions(enabled=False)``,
no tracks: plain AnimateDiff sampling, the same noise, steps and decoding). Each repeat runs one
of each, alternately, so that a machine whose load drifts affects both sides alike;
``ratio_cpu`` is the same in process CPU time. Inside the whole run, the time of the inversion
(``inversion_s``, `AnyI2VPipeline.invert`) and of the optimisation (``optimisation_s``, every
`LatentOptimisation.optimise` call) are timed too.

Full-size part (``--full``): SD1.5's UNet config (320, 640, 1280, 1280 channels,
cross-attention 768, 8 heads) with the AnimateDiff v3 motion adapter's (v1-5-3: two motion
layers a block, 8 heads, 32 positions, no mid-block module), built as `UNetMotionModel.
from_unet2d` builds it, with random weights (nothing downloaded), float32, on the CPU, at 512x512
(latents 64x64) and ``--full-frames`` frames (16, the release's). Timed after a warm-up of each
at the fewest frames, median of ``--full-repeats`` (1): one denoising step
(`AnyI2VPipeline.step_noise` with CFG, batch 2, under `torch.no_grad`), one inversion call (one
frame, motion modules off: the inversion makes 201 of them) and one optimisation iteration
(`LatentOptimisation` with one iteration: the conditional forward as far as ``up_blocks.2``, the
PCA features, the loss, the backward to the latent and the AdamW step), each with the process's
peak RSS during it (``VmHWM``, reset before each through ``/proc/self/clear_refs``; Linux).
The iteration keeps every activation for the backward (about ``OPT_GIB_PER_FRAME`` GiB a frame
in float32 beside the weights): when ``--full-opt-frames`` (default: the step's) would not fit
in the memory available, it runs at the most frames that do, and the JSON says so
(``full_opt_note``). ``full_estimated_ratio`` is (25 steps + 201 inversion calls + 30
iterations) over 25 steps from those timings, the iteration scaled linearly to the step's frames
when measured at fewer (``full_estimated_ratio_note``). A 16-frame step takes minutes on a
small CPU.

On a shared machine, other processes' load makes multi-threaded timings jump (an OpenMP thread
descheduled stalls every parallel region): ``--threads 1`` gives steadier figures.

Prints one JSON object on its last line (the machine, the settings, the medians, the ratio and
the full-size figures).

    python benchmarks/anyi2v.py [--repeats 3] [--steps 25] [--size 64] [--frames 16] [--threads N]
    python benchmarks/anyi2v.py --full [--full-frames 16] [--full-opt-frames N] [--full-repeats 1]
    python benchmarks/anyi2v.py --full-only ...
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from machine import machine
from memory import peak_rss_gib, reset_peak_rss

from anima.attention import skip_motion_modules
from anima.methods.anyi2v.boxes import BoxTrack
from anima.methods.anyi2v.injection import InjectionOptions
from anima.methods.anyi2v.inversion import INVERSION_TIMESTEP
from anima.methods.anyi2v.loading import anyi2v_scheduler
from anima.methods.anyi2v.optimisation import LatentOptimisation, OptimisationOptions
from anima.methods.anyi2v.pipeline import AnyI2VPipeline
from anima.models.seeding import seeded
from anima.models.tiny_sd import (
    TINY_CROSS_ATTENTION_DIM,
    tiny_sd_vae,
    tiny_text_encoder,
    tiny_tokenizer,
)

GIB = 1024**3
MID_CHANNELS = (64, 128, 256, 256)
SD15_CHANNELS = (320, 640, 1280, 1280)
#: SD1.5's UNet config (the diffusers defaults are SD's but for the text width).
SD15_CROSS_ATTENTION_DIM = 768
FULL_SIZE = 512
#: Measured here (x86_64, float32, 4 frames: peak RSS 15.1 GiB with 4.8 GiB of weights): the
#: optimisation iteration's peak RSS grows by about this much a frame over the weights' (an
#: estimate to choose the frames, not a limit).
OPT_GIB_PER_FRAME = 2.5
#: Kept free beside the estimate when choosing the iteration's frames.
MEMORY_MARGIN_GIB = 2.0
PROMPT, NEGATIVE = "a cat walking on the grass", ""


# -- measuring ------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def memory_available_gib() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return None


@contextmanager
def phase(name: str, results: dict) -> Iterator[None]:
    """Time a phase once and record its wall seconds and peak RSS as ``{name}_s`` and
    ``{name}_peak_rss_gib``."""
    gc.collect()
    reset_peak_rss()
    start = time.perf_counter()
    yield
    results[f"{name}_s"] = time.perf_counter() - start
    results[f"{name}_peak_rss_gib"] = peak_rss_gib()


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- models ---------------------------------------------------------------------------------


def sd15_motion_unet(
    channels: tuple[int, ...], cross_attention_dim: int, seed: int = 0
) -> UNetMotionModel:
    """A random `UNetMotionModel` of SD1.5's structure at ``channels`` with AnimateDiff v3's
    motion modules, configured exactly as `UNetMotionModel.from_unet2d` configures it from the
    two (they are built on the meta device, so only the motion UNet's weights are ever held)."""
    with torch.device("meta"):
        unet2d = UNet2DConditionModel(
            sample_size=64,
            block_out_channels=channels,
            layers_per_block=2,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        adapter = MotionAdapter(
            block_out_channels=channels,
            motion_layers_per_block=2,
            motion_num_attention_heads=8,
            motion_norm_num_groups=32,
            motion_max_seq_length=32,
            use_motion_mid_block=False,
        )
    with seeded(seed):
        unet = UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False)
    return unet.eval()  # as `loading.load_anyi2v_components` leaves it


def pipeline(unet: UNetMotionModel, seed: int = 0) -> AnyI2VPipeline:
    """`AnyI2VPipeline` around ``unet`` with the tiny VAE, text encoder and tokenizer."""
    pipe = AnyI2VPipeline(
        vae=tiny_sd_vae(seed).eval(),
        text_encoder=tiny_text_encoder(seed).eval(),
        tokenizer=tiny_tokenizer(),
        unet=unet,
        scheduler=anyi2v_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def moving_box(size: int, frames: int) -> BoxTrack:
    """One object: a box of 3/8 of the side moving from the left edge region to the right,
    with three query points around its centre."""
    side, y0 = 0.375 * size, 0.25 * size
    x0 = torch.linspace(0.125 * size, size - 0.125 * size - side, frames, dtype=torch.float64)
    boxes = torch.stack([x0, torch.full_like(x0, y0), x0 + side, torch.full_like(x0, y0 + side)], 1)
    cx, cy = float(x0[0]) + side / 2, y0 + side / 2
    points = torch.tensor([[cx, cy], [cx - side / 4, cy], [cx + side / 4, cy]], dtype=torch.float64)
    return BoxTrack(1, boxes, points)


# -- mid-size: the whole run over sampling alone --------------------------------------------


@contextmanager
def stage_timers(pipe: AnyI2VPipeline, seconds: dict[str, float]) -> Iterator[None]:
    """Add the wall time of ``pipe.invert`` and of every `LatentOptimisation.optimise` call to
    ``seconds["inversion"]`` / ``seconds["optimisation"]`` while active."""
    invert, optimise = pipe.invert, LatentOptimisation.optimise

    def timed_invert(*args, **kwargs):
        start = time.perf_counter()
        try:
            return invert(*args, **kwargs)
        finally:
            seconds["inversion"] += time.perf_counter() - start

    def timed_optimise(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return optimise(self, *args, **kwargs)
        finally:
            seconds["optimisation"] += time.perf_counter() - start

    pipe.invert = timed_invert
    LatentOptimisation.optimise = timed_optimise
    try:
        yield
    finally:
        del pipe.invert
        LatentOptimisation.optimise = optimise


def run_midsize(args: argparse.Namespace) -> dict:
    pipe = pipeline(sd15_motion_unet(MID_CHANNELS, TINY_CROSS_ATTENTION_DIM, args.seed), args.seed)
    size, frames, steps = args.size, args.frames, args.steps
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(args.seed))
    track = moving_box(size, frames)
    injection = InjectionOptions(inversion_timestep=args.inversion_timestep)
    optimisation = OptimisationOptions(iterations=args.iterations)

    def call(anyi2v: bool, num_frames: int = frames, num_steps: int = steps) -> None:
        pipe(
            image,
            PROMPT,
            NEGATIVE,
            num_frames=num_frames,
            num_inference_steps=num_steps,
            guidance_scale=8.0,
            injection=injection if anyi2v else InjectionOptions(enabled=False),
            tracks=[track] if anyi2v else None,
            optimisation=optimisation,
            generator=torch.Generator().manual_seed(args.seed),
        )

    warm = InjectionOptions(inversion_timestep=1)
    pipe(image, num_frames=2, num_inference_steps=1, injection=warm, tracks=[moving_box(size, 2)])

    runs: dict[str, list[tuple[float, float]]] = {"anyi2v": [], "sampling": []}
    stages: dict[str, list[float]] = {"inversion": [], "optimisation": []}
    losses: dict[int, list[float]] = {}
    for _ in range(args.repeats):
        seconds = {"inversion": 0.0, "optimisation": 0.0}
        with stage_timers(pipe, seconds):
            runs["anyi2v"].append(timed(lambda: call(True)))
        losses = pipe.optimiser.losses
        for key in stages:
            stages[key].append(seconds[key])
        runs["sampling"].append(timed(lambda: call(False)))
        anyi2v, sampling = runs["anyi2v"][-1][0], runs["sampling"][-1][0]
        print(
            f"  anyi2v {anyi2v:7.2f} s (inversion {seconds['inversion']:.2f} s, "
            f"optimisation {seconds['optimisation']:.2f} s), sampling {sampling:7.2f} s",
            flush=True,
        )
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    return {
        "settings": {
            "size": [size, size],
            "frames": frames,
            "steps": steps,
            "guidance_scale": 8.0,
            "inversion_timestep": args.inversion_timestep,
            "injection_steps": [s for s in injection.steps if s < steps],
            "optimisation_steps": [s for s in optimisation.steps if s < steps],
            "iterations": args.iterations,
            "repeats": args.repeats,
            "unet_block_out_channels": list(MID_CHANNELS),
            "unet_params": count(pipe.unet),
        },
        "anyi2v_s": wall["anyi2v"],
        "sampling_s": wall["sampling"],
        "inversion_s": statistics.median(stages["inversion"]),
        "optimisation_s": statistics.median(stages["optimisation"]),
        "ratio": wall["anyi2v"] / wall["sampling"],
        "ratio_cpu": cpu["anyi2v"] / cpu["sampling"],
        "optimised_steps_with_loss": sorted(i for i, v in losses.items() if v),
    }


# -- full size: one step, one inversion call, one iteration ---------------------------------


def opt_frames_that_fit(wanted: int, weights_gib: float) -> tuple[int, str | None]:
    """The iteration's frames: ``wanted``, or fewer when the estimate exceeds the memory
    available (with a note saying so)."""
    available = memory_available_gib()
    if available is None:
        return wanted, None
    fit = int((available - MEMORY_MARGIN_GIB) / OPT_GIB_PER_FRAME)
    if fit >= wanted:
        return wanted, None
    fit = max(2, fit)  # an iteration needs two frames
    note = (
        f"{wanted} frames need about {wanted * OPT_GIB_PER_FRAME:.0f} GiB beside the "
        f"{weights_gib:.1f} GiB weights, {available:.1f} GiB available: measured at {fit}"
    )
    return fit, note


def run_fullsize(args: argparse.Namespace) -> dict:
    frames, repeats = args.full_frames, args.full_repeats
    latent = FULL_SIZE // 8
    results: dict = {
        "full_size": [FULL_SIZE, FULL_SIZE],
        "full_frames": frames,
        "full_repeats": repeats,
        "full_mem_available_gib": memory_available_gib(),
    }
    with phase("full_build", results):
        unet = sd15_motion_unet(SD15_CHANNELS, SD15_CROSS_ATTENTION_DIM, args.seed)
    weights_gib = sum(p.numel() * p.element_size() for p in unet.parameters()) / GIB
    results |= {"full_unet_params": count(unet), "full_weights_gib": weights_gib}
    print(f"full size: built {count(unet) / 1e6:.0f} M parameters", flush=True)
    pipe = pipeline(unet, args.seed)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(25)
    t = scheduler.timesteps[0]
    generator = torch.Generator().manual_seed(args.seed)
    text = torch.randn(2, 77, SD15_CROSS_ATTENTION_DIM, generator=generator)
    latents = torch.randn(1, 4, frames, latent, latent, generator=generator)

    @torch.no_grad()
    def step(count: int) -> None:
        sample = latents[:, :, :count]
        noise = pipe.step_noise([range(count)], sample, t, text)
        uncond, cond = noise.chunk(2)
        scheduler.step(uncond + 8.0 * (cond - uncond), t, sample)

    @torch.no_grad()
    def inversion_call() -> None:
        with skip_motion_modules(unet):
            unet(
                latents[:, :, :1], torch.tensor(INVERSION_TIMESTEP), encoder_hidden_states=text[1:]
            )

    def iteration(count: int) -> None:
        optimiser = LatentOptimisation(
            unet,
            [moving_box(FULL_SIZE, count)],
            (FULL_SIZE, FULL_SIZE),
            text[1:],
            [range(count)],
            OptimisationOptions(steps=(0,), iterations=1),
        )
        optimiser.optimise(latents[:, :, :count].contiguous(), t, 0)

    # Warm-ups at the fewest frames (kernels chosen, allocator grown): a first call is slower.
    step(1)
    inversion_call()
    iteration(2)  # an iteration needs two frames (frame 0 is the reference)

    def measure(name: str, fn: Callable[[], object]) -> None:
        times, peaks = [], []
        for _ in range(repeats):
            once: dict = {}
            with phase(name, once):
                fn()
            times.append(once[f"{name}_s"])
            peaks.append(once[f"{name}_peak_rss_gib"])
        results[f"{name}_s"] = statistics.median(times)
        results[f"{name}_peak_rss_gib"] = max(peaks)
        print(f"full size: {name} {results[f'{name}_s']:.1f} s", flush=True)

    measure("full_step", lambda: step(frames))
    measure("full_inversion_call", inversion_call)
    opt_frames, note = opt_frames_that_fit(args.full_opt_frames or frames, weights_gib)
    results |= {"full_opt_frames": opt_frames, "full_opt_note": note}
    measure("full_opt_iteration", lambda: iteration(opt_frames))

    # The release's schedule from these timings: 25 steps, 201 inversion calls, 6 x 5
    # iterations; the iteration scaled linearly to the step's frames if measured at fewer.
    options = OptimisationOptions()
    iteration_s = results["full_opt_iteration_s"] * frames / opt_frames
    sampling = 25 * results["full_step_s"]
    extra = (
        INVERSION_TIMESTEP * results["full_inversion_call_s"]
        + len(options.steps) * options.iterations * iteration_s
    )
    results["full_estimated_ratio"] = (sampling + extra) / sampling
    results["full_estimated_ratio_note"] = (
        None
        if opt_frames == frames
        else f"iteration time scaled linearly from {opt_frames} to {frames} frames"
    )
    return results


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="mid-size repeats (medians)")
    parser.add_argument("--size", type=int, default=64, help="mid-size image side (pixels)")
    parser.add_argument("--frames", type=int, default=16, help="mid-size frames")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (the release's 25)")
    parser.add_argument("--iterations", type=int, default=5, help="optimisation iterations")
    parser.add_argument(
        "--inversion-timestep", type=int, default=INVERSION_TIMESTEP, help="inversion stops here"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--full", action="store_true", help="also the full-size part")
    parser.add_argument("--full-only", action="store_true", help="only the full-size part")
    parser.add_argument("--full-frames", type=int, default=16, help="full-size frames")
    parser.add_argument(
        "--full-opt-frames", type=int, default=None, help="iteration frames (default: as step)"
    )
    parser.add_argument("--full-repeats", type=int, default=1, help="full-size repeats (medians)")
    args = parser.parse_args()
    if args.size % 32:
        parser.error("--size must be a multiple of 32 (four UNet levels on an 8x latent)")
    if args.full_frames < 2 or not 2 <= (args.full_opt_frames or 2) <= args.full_frames:
        parser.error("--full-frames and --full-opt-frames: 2 <= iteration frames <= step frames")
    if args.threads:
        torch.set_num_threads(args.threads)

    report: dict = {"benchmark": "anyi2v", "machine": machine()}
    if not args.full_only:
        mid = run_midsize(args)
        print(
            f"mid-size: anyi2v {mid['anyi2v_s']:.2f} s, sampling alone {mid['sampling_s']:.2f} s "
            f"(inversion {mid['inversion_s']:.2f} s, optimisation {mid['optimisation_s']:.2f} s)"
            f": ratio {mid['ratio']:.2f} (cpu time {mid['ratio_cpu']:.2f})"
        )
        report |= mid
        gc.collect()
    if args.full or args.full_only:
        full = run_fullsize(args)
        print(
            f"full size: {full['full_frames']} frames, step {full['full_step_s']:.1f} s "
            f"(peak RSS {full['full_step_peak_rss_gib']:.1f} GiB), inversion call "
            f"{full['full_inversion_call_s']:.2f} s, iteration at {full['full_opt_frames']} "
            f"frames {full['full_opt_iteration_s']:.1f} s "
            f"(peak RSS {full['full_opt_iteration_peak_rss_gib']:.1f} GiB)"
        )
        report |= full
    print(json.dumps(report))


if __name__ == "__main__":
    main()
