"""LeviTorPipeline overhead on a mid-size random model; full-size SVD-xt step time and memory.

Mid-size part (default): a random 3-level SVD UNet (block channels 64, 128, 128), its
ControlNet (`SVDControlNetModel.from_unet`), the tiny VAE and CLIP encoder, at 128x192, 8
frames, 10 Euler steps with CFG (batch 2). ``overhead_ratio`` is the median wall time of a whole
`LeviTorPipeline.__call__` over ``steps`` times the median wall time of one denoising
evaluation (`LeviTorPipeline.predict_noise` on the very inputs the pipeline passed it, captured
from a warm-up call). Each repeat times one pipeline call, then ``steps`` isolated evaluations,
then the encoding (CLIP embedding + VAE encode) and the decoding alone, so that a machine whose
load drifts affects both sides of the ratio alike. ``overhead_ratio_cpu`` is the same ratio in
process CPU time. ``in_pipeline_step_s`` is the same evaluation timed inside the pipeline calls
and ``outside_steps_s`` a call's time outside its evaluations (encoding, decoding, loop), a
direct measure of the overhead that isolated-vs-in-pipeline timing noise does not affect.

Efficiency: ``step_flops`` is the floating-point work of one denoising evaluation, counted by
`torch.utils.flop_counter.FlopCounterMode` (matrix products and convolutions, 2 per
multiply-add), ``step_flop_per_s`` that work over ``step_s``, and ``step_peak_ratio`` the
achieved rate over ``matmul_peak_flop_per_s``, this machine's float32 matmul rate measured in
the same run (median of square products of ``--peak-size``). The full-size part reports the same
three for its step.

On a shared machine, other processes' load makes multi-threaded timings jump (an OpenMP thread
descheduled stalls every parallel region); ``--threads 1`` gives steadier figures.

Full-size part (``--fullsize``): the SVD-xt UNet (random weights, fp32, CPU) and its ControlNet,
one denoising step at 14 frames 320x576 (latents 40x72) with sequential CFG, i.e. two batch-1
`predict_noise` evaluations, under ``torch.no_grad()``. Reports the step time (median of
``--fullsize-repeats``), the RSS and peak RSS (``ru_maxrss``) after building the models, the
peak RSS of the process after the step(s), and the parameter counts. One step takes minutes on
a small CPU.

Prints one JSON object on its last line.

    python benchmarks/levitor.py [--repeats 3] [--threads N] [--fullsize [--fullsize-repeats 1]]
    python benchmarks/levitor.py --fullsize-only
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch
from diffusers import UNetSpatioTemporalConditionModel
from torch.utils.flop_counter import FlopCounterMode

from anima.methods.levitor.pipeline import LeviTorPipeline
from anima.models.svd import SVD_XT_UNET_CONFIG, clip_feature_extractor, svd_scheduler
from anima.models.svd_controlnet import SVDControlNetModel
from anima.models.tiny import tiny_clip_image_encoder, tiny_svd_unet, tiny_svd_vae

MID_CHANNELS = (64, 128, 128)
FULL_FRAMES, FULL_HEIGHT, FULL_WIDTH = 14, 320, 576
GIB = 1024**3


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def flops_of(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call, counted (not timed) by `FlopCounterMode`."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(size: int, repeats: int = 7) -> float:
    """This machine's float32 matmul rate (FLOP/s): median over square products of ``size``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    seconds = statistics.median(timed(lambda: torch.mm(a, b))[0] for _ in range(repeats))
    return 2 * size**3 / seconds


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def current_rss_gib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / GIB


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mid_pipeline(seed: int) -> LeviTorPipeline:
    unet = tiny_svd_unet(seed, block_out_channels=MID_CHANNELS)
    controlnet = SVDControlNetModel.from_unet(unet)
    pipe = LeviTorPipeline(
        vae=tiny_svd_vae(seed),
        image_encoder=tiny_clip_image_encoder(seed),
        unet=unet,
        scheduler=svd_scheduler(),
        feature_extractor=clip_feature_extractor(),
        controlnet=controlnet,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_midsize(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    pipe = mid_pipeline(args.seed)
    height, width, frames, steps = args.height, args.width, args.frames, args.steps
    image = torch.rand(3, height, width)
    control = torch.rand(frames, 3, height, width) * 255
    device = pipe._execution_device

    def call() -> torch.Tensor:
        generator = torch.Generator().manual_seed(args.seed)
        return pipe(image, control, num_inference_steps=steps, generator=generator)

    # `predict_noise` is wrapped for the whole run: it keeps the first call's inputs (exact
    # shapes and values, for the isolated timing) and times every evaluation inside the
    # pipeline (two clock reads a step), so that the time a call spends outside its
    # evaluations is measured directly too. The warm-up call also keeps the final latents.
    captured: list[tuple] = []
    inside: list[float] = []
    final: list[torch.Tensor] = []

    def predict(*inputs):
        if not captured:
            captured.append(inputs)
        start = time.perf_counter()
        noise = LeviTorPipeline.predict_noise(pipe, *inputs)
        inside.append(time.perf_counter() - start)
        return noise

    def keep_latents(_pipe, step, _t, tensors):
        if step == steps - 1:
            final.append(tensors["latents"])
        return tensors

    pipe.predict_noise = predict
    pipe(image, control, num_inference_steps=steps, callback_on_step_end=keep_latents)
    step_inputs, latents = captured[0], final[0]
    pixels = pipe.video_processor.preprocess(image[None], height=height, width=width)

    def step() -> None:
        LeviTorPipeline.predict_noise(pipe, *step_inputs)

    def encode() -> None:
        pipe.encode_image_embedding(image[None], device, True)
        pipe._encode_vae_image(pixels, device, 1, True)

    def decode() -> None:
        pipe.decode_latents(latents, frames, frames)

    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in ("pipeline", "step")}
    runs.update(encode=[], decode=[])
    in_pipeline: list[float] = []
    outside: list[float] = []
    with torch.no_grad():
        for _ in range(args.repeats):
            inside.clear()
            runs["pipeline"].append(timed(call))
            in_pipeline += inside
            outside.append(runs["pipeline"][-1][0] - sum(inside))
            runs["step"] += [timed(step) for _ in range(steps)]
            runs["encode"].append(timed(encode))
            runs["decode"].append(timed(decode))
        step_flops = flops_of(step)
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    return {
        "step_flops": step_flops,
        "step_flop_per_s": step_flops / wall["step"],
        "size": [height, width],
        "frames": frames,
        "steps": steps,
        "repeats": args.repeats,
        "cfg_batch": step_inputs[0].shape[0],
        "unet_block_out_channels": list(MID_CHANNELS),
        "unet_params": count(pipe.unet),
        "controlnet_params": count(pipe.controlnet),
        "pipeline_s": wall["pipeline"],
        "step_s": wall["step"],
        "encode_s": wall["encode"],
        "decode_s": wall["decode"],
        # The same evaluation timed inside the pipeline calls, and each call's time outside
        # its evaluations (encode + decode + Python loop and scheduler): step_s vs
        # in_pipeline_step_s shows how much of the ratio is timing noise.
        "in_pipeline_step_s": statistics.median(in_pipeline),
        "outside_steps_s": statistics.median(outside),
        "overhead_ratio": wall["pipeline"] / (steps * wall["step"]),
        "overhead_ratio_cpu": cpu["pipeline"] / (steps * cpu["step"]),
    }


def run_fullsize(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    with torch.no_grad():
        # Built one after the other; from_unet copies the encoder weights in place
        # (load_state_dict), so only the two models' own parameters are ever held.
        unet = UNetSpatioTemporalConditionModel(**SVD_XT_UNET_CONFIG).eval()
        controlnet = SVDControlNetModel.from_unet(unet).eval()
    gc.collect()
    build_peak, build_rss = peak_rss_gib(), current_rss_gib()
    models = SimpleNamespace(unet=unet, controlnet=controlnet)  # all `predict_noise` uses

    scheduler = svd_scheduler()
    scheduler.set_timesteps(25)
    t = scheduler.timesteps[0]
    latent_h, latent_w = FULL_HEIGHT // 8, FULL_WIDTH // 8
    sample = torch.randn(1, FULL_FRAMES, 8, latent_h, latent_w)
    embedding = torch.randn(1, 1, SVD_XT_UNET_CONFIG["cross_attention_dim"])
    time_ids = torch.tensor([[5.0, 100.0, 0.02]])
    control = torch.rand(1, FULL_FRAMES, 3, FULL_HEIGHT, FULL_WIDTH) * 255

    def step() -> None:
        for _ in range(2):  # sequential CFG: unconditional, then conditional branch
            LeviTorPipeline.predict_noise(models, sample, t, embedding, time_ids, control, 1.0)

    with torch.no_grad():
        times = [timed(step) for _ in range(args.fullsize_repeats)]
        step_flops = flops_of(step)
    step_s = statistics.median(w for w, _ in times)
    return {
        "fullsize_step_flops": step_flops,
        "fullsize_step_flop_per_s": step_flops / step_s,
        "fullsize_size": [FULL_HEIGHT, FULL_WIDTH],
        "fullsize_frames": FULL_FRAMES,
        "fullsize_repeats": args.fullsize_repeats,
        "fullsize_step_s": step_s,
        "fullsize_step_cpu_s": statistics.median(c for _, c in times),
        "fullsize_build_rss_gib": build_rss,
        "fullsize_build_peak_rss_gib": build_peak,
        "fullsize_peak_rss_gib": peak_rss_gib(),
        "fullsize_unet_params": count(unet),
        "fullsize_controlnet_params": count(controlnet),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="mid-size repeats")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--fullsize", action="store_true", help="also the full-size step")
    parser.add_argument("--fullsize-only", action="store_true", help="skip the mid-size part")
    parser.add_argument("--fullsize-repeats", type=int, default=1)
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul size for the peak")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    peak = matmul_peak(args.peak_size)
    report: dict = {"benchmark": "levitor", "matmul_peak_flop_per_s": peak}
    if not args.fullsize_only:
        mid = run_midsize(args)
        for key, value in mid.items():
            if key.endswith("_s"):
                print(f"{key:<18} {value * 1000:9.1f} ms")
        ratios = mid["overhead_ratio"], mid["overhead_ratio_cpu"]
        print("overhead_ratio     {:9.3f} x (cpu time {:.3f} x)".format(*ratios))
        mid["step_peak_ratio"] = mid["step_flop_per_s"] / peak
        print(
            f"step {mid['step_flop_per_s'] / 1e9:.2f} GFLOP/s = {mid['step_peak_ratio']:.3f} x "
            f"the float32 matmul peak ({peak / 1e9:.1f} GFLOP/s)"
        )
        report.update(mid)
        gc.collect()
    if args.fullsize or args.fullsize_only:
        full = run_fullsize(args)
        print(
            f"fullsize step {full['fullsize_step_s']:.1f} s, peak RSS "
            f"{full['fullsize_peak_rss_gib']:.2f} GiB"
        )
        full["fullsize_step_peak_ratio"] = full["fullsize_step_flop_per_s"] / peak
        print(f"fullsize step {full['fullsize_step_peak_ratio']:.3f} x the float32 matmul peak")
        report.update(full)
    report["machine"] = (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
