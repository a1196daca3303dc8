"""I2V3D keyframes' cost: sampling with the guidance over the same without, and a full-size step.

Mid-size part (default): a random `UNet2DConditionModel` of SDXL's structure (three levels,
``up_blocks[0..1]`` with cross-attention, "text_time" added conditioning, two layers a block) at
block channels 64, 128, 256 with a depth `ControlNetModel` made from it, the tiny VAE and text
encoders; ``--keyframes`` keyframes (4: one window) at ``--size`` (128) pixels, the release's
schedule but for the steps (``--steps``, 20 by default, the release's 50: the ratio does not
depend on it; CFG 7.5; ControlNet scale 1). Both runs sample
the same ``[source, uncond, cond]`` batch from the same inversion; the guided run adds the
release's hooks (`anima.methods.i2v3d.keyframes.WindowGuidance`: residual injection on 60 % of
the steps, Q/K injection on all, extended attention over the window with the
foreground/background rule), the other has none (``Guidance(enabled=False)``). Only the
sampling is timed (the inversion, the same for both, is timed apart: ``inversion_s``);
``per_keyframe_s`` is a run's median over the keyframes. ``ratio`` is the guided median over
the plain one; each repeat runs one of each, alternately, so that load drift affects both
alike; ``ratio_cpu`` the same in process CPU time.

Full-size part (``--full``, minutes on a CPU; not part of the default run): SDXL's UNet config
(320, 640, 1280 channels, 1, 2, 10 transformer layers, cross-attention 2048, "text_time" with
256 sinusoids) and a depth ControlNet made from it (controlnet-depth-sdxl-1.0's architecture),
random weights (nothing downloaded), float32 on the CPU, at 576x1024 (latents 72x128): one
guided denoising step of one keyframe (batch 3: source, uncond, cond; ControlNet + UNet under
the hooks), timed after a warm-up, with the process's peak RSS during it (``VmHWM``, reset
through ``/proc/self/clear_refs``; Linux).

Interpolation (I2V3D §3.3, always run): the method's interpolation stage
(`I2V3DMethod.interpolate`: windows of 16 frames sharing their keyframes) with the tiny random
SVD and temporal depth ControlNet (``--weights tiny``) at 64x64, the release's 25 steps, on a
16-frame and a 61-frame clip (1 and 4 windows): ``per_frame_ratio`` is the 61-frame run's time
per output frame over the 16-frame run's (the method is linear in length: 4 windows make 61
frames, so the ideal is 16 x 4 / 61 = 1.05).

Full-size interpolation step (``--full-svd``, minutes and about 20 GB on a CPU): SVD-xt's UNet
config and a temporal ControlNet made from it, random weights, float32, one branch of one
interpolation pass at 576x1024 over 16 frames (ControlNet + UNet), with peak RSS.

Prints one JSON object on its last line.

    python benchmarks/i2v3d.py [--repeats 3] [--steps 20] [--size 128] [--keyframes 4]
    python benchmarks/i2v3d.py --full [--full-svd] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from memory import peak_rss_gib, reset_peak_rss

from anima.attention import StepCounter
from anima.methods.i2v3d.keyframes import Guidance, WindowGuidance, depth_condition
from anima.methods.i2v3d.loading import i2v3d_scheduler
from anima.methods.i2v3d.pipeline import I2V3DKeyframePipeline, Text
from anima.models.seeding import seeded
from anima.models.tiny_sd import tiny_sd_vae, tiny_text_encoder, tiny_tokenizer
from anima.models.tiny_sdxl import TINY_TEXT_ENCODER_2_DIM, tiny_text_encoder_2

GIB = 1024**3
MID_CHANNELS = (64, 128, 256)
SDXL_CHANNELS = (320, 640, 1280)
FULL_SIZE = (576, 1024)
PROMPT, NEGATIVE = "a toy robot walking on a table", "ugly, blurry, low res"


def sdxl_unet(
    channels: tuple[int, ...],
    cross_attention_dim: int,
    pooled_dim: int,
    time_dim: int,
    transformer_layers: tuple[int, ...],
    heads: tuple[int, ...],
    seed: int = 0,
) -> UNet2DConditionModel:
    """A random UNet of SDXL's structure at ``channels``."""
    with seeded(seed):
        return UNet2DConditionModel(
            sample_size=128,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=channels,
            layers_per_block=2,
            transformer_layers_per_block=transformer_layers,
            attention_head_dim=heads,
            cross_attention_dim=cross_attention_dim,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=pooled_dim + 6 * time_dim,
        ).eval()


def controlnet_of(unet: UNet2DConditionModel, seed: int = 1) -> ControlNetModel:
    """A depth ControlNet made from ``unet`` with small random zero convs (so it acts)."""
    with seeded(seed), torch.no_grad():
        controlnet = ControlNetModel.from_unet(unet)
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.normal_(std=0.02)
    return controlnet.eval()


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def scene(count: int, size: tuple[int, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Rendered keyframes with a foreground box moving right and a strip not visible."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    images = torch.rand(count, 3, height, width, generator=generator)
    distance = 5.0 + torch.rand(count, height, width, generator=generator)
    foreground = torch.zeros(count, height, width, dtype=torch.bool)
    for k in range(count):
        x0 = width // 8 + k * width // (4 * count)
        foreground[k, height // 4 : 3 * height // 4, x0 : x0 + width // 3] = True
        distance[k][foreground[k]] = 2.0
    visible = torch.ones(count, height, width, dtype=torch.bool)
    visible[:, :, -width // 8 :] = False
    return {
        "images": images,
        "depth": depth_condition(distance),
        "foreground": foreground,
        "visible": visible,
    }


def mid_pipeline() -> I2V3DKeyframePipeline:
    unet = sdxl_unet(MID_CHANNELS, 32 + TINY_TEXT_ENCODER_2_DIM, 32, 8, (1, 1, 1), (2, 4, 8))
    pipe = I2V3DKeyframePipeline(
        vae=tiny_sd_vae().eval(),
        text_encoder=tiny_text_encoder().eval(),
        tokenizer=tiny_tokenizer(),
        unet=unet,
        controlnet=controlnet_of(unet),
        scheduler=i2v3d_scheduler(),
        text_encoder_2=tiny_text_encoder_2().eval(),
        tokenizer_2=tiny_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def mid_size(args: argparse.Namespace) -> dict[str, Any]:
    pipe = mid_pipeline()
    inputs = scene(args.keyframes, (args.size, args.size))
    inversion: list[float] = []
    invert = pipe.invert

    def timed_invert(*a: Any, **k: Any) -> torch.Tensor:
        wall, _cpu, out = timed(lambda: invert(*a, **k))
        inversion.append(wall)
        return out

    pipe.invert = timed_invert  # type: ignore[method-assign]

    def run(guidance: Guidance) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            return pipe(
                **inputs,
                prompt=PROMPT,
                negative_prompt=NEGATIVE,
                num_inference_steps=args.steps,
                guidance=guidance,
                generator=torch.Generator().manual_seed(0),
                output_type="latent",
            )

        return call

    guided, plain = run(Guidance()), run(Guidance(enabled=False))
    times: dict[str, list[tuple[float, float]]] = {"guided": [], "plain": []}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, call in (("guided", guided), ("plain", plain)):
                before = len(inversion)
                wall, cpu, _ = timed(call)
                spent = inversion[before]
                times[name].append((wall - spent, cpu - spent))
    median = {
        name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
        for name, runs in times.items()
    }
    count = args.keyframes
    return {
        "mid_channels": list(MID_CHANNELS),
        "keyframes": count,
        "size": args.size,
        "steps": args.steps,
        "repeats": args.repeats,
        "guided_sampling_s": median["guided"][0],
        "plain_sampling_s": median["plain"][0],
        "guided_per_keyframe_s": median["guided"][0] / count,
        "plain_per_keyframe_s": median["plain"][0] / count,
        "inversion_s": statistics.median(inversion),
        "ratio": median["guided"][0] / median["plain"][0],
        "ratio_cpu": median["guided"][1] / median["plain"][1],
    }


def full_size() -> dict[str, Any]:
    unet = sdxl_unet(SDXL_CHANNELS, 2048, 1280, 256, (1, 2, 10), (5, 10, 20))
    controlnet = controlnet_of(unet)
    pipe = I2V3DKeyframePipeline(
        vae=tiny_sd_vae().eval(),
        text_encoder=tiny_text_encoder().eval(),
        tokenizer=tiny_tokenizer(),
        unet=unet,
        controlnet=controlnet,
        scheduler=i2v3d_scheduler(),
        text_encoder_2=tiny_text_encoder_2().eval(),
        tokenizer_2=tiny_tokenizer(),
    )
    height, width = FULL_SIZE
    inputs = scene(1, FULL_SIZE)
    generator = torch.Generator().manual_seed(0)
    text = Text(
        torch.randn(1, 77, 2048, generator=generator),
        torch.randn(1, 1280, generator=generator),
        torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32),
    )
    latents = torch.randn(1, 4, height // 8, width // 8, generator=generator)
    source = torch.randn(1, 4, height // 8, width // 8, generator=generator)
    hooks = {
        (0, 1): WindowGuidance(
            unet, Guidance(), "sdxl", 50, inputs["foreground"], inputs["visible"], StepCounter()
        )
    }
    t = torch.tensor(981)

    def step() -> torch.Tensor:
        return pipe.step_noise(
            [range(1)], hooks, latents, source, t, (text, text, text), inputs["depth"], 1.0, 7.5
        )

    with torch.no_grad():
        step()  # warm-up
        gc.collect()
        reset_peak_rss()
        wall, cpu, _ = timed(step)
    return {
        "full_size": list(FULL_SIZE),
        "full_unet_params": sum(p.numel() for p in unet.parameters()),
        "full_controlnet_params": sum(p.numel() for p in controlnet.parameters()),
        "full_step_s": wall,
        "full_step_cpu_s": cpu,
        "full_step_peak_rss_gib": peak_rss_gib(),
    }


def interpolation_run(frames: int, steps: int) -> float:
    """Seconds of `I2V3DMethod.interpolate` over ``frames`` frames at 64x64 (tiny models)."""
    from anima.methods.i2v3d import I2V3DControls, I2V3DMethod, I2V3DOptions, video_keyframes
    from anima.render import RenderResult
    from anima.spec import MotionSpec
    from anima.weights import Weights

    size = (64, 64)
    options = I2V3DOptions(interpolation_steps=steps, lora=None)
    method = I2V3DMethod(options, Weights(builtin="tiny"), torch.device("cpu"), torch.float32)
    generator = torch.Generator().manual_seed(0)
    distance = 3 + torch.rand(frames, *size, generator=generator)
    render = RenderResult(
        torch.rand(frames, 3, *size, generator=generator),
        distance,
        torch.zeros(frames, *size, dtype=torch.int64),
        torch.rand(frames, *size, generator=generator) > 0.2,
    )
    spec = MotionSpec.model_validate({"version": 1, "image": "x.png", "num_frames": frames})
    keys = video_keyframes(frames, options.keyframe_every)
    controls = I2V3DControls(
        spec,
        None,
        render,
        keys,
        depth_condition(distance),
        render.instance > 0,
        render.visible,
        size,
    )
    keyframes = torch.rand(len(keys), 3, *size, generator=generator)
    with torch.no_grad():
        method.interpolate(controls, keyframes)  # warm-up (loads the pipeline)
        wall, _cpu, video = timed(lambda: method.interpolate(controls, keyframes))
    assert video.shape[0] == frames
    return wall


def interpolation(args: argparse.Namespace) -> dict[str, Any]:
    runs = {
        frames: statistics.median(
            interpolation_run(frames, args.interpolation_steps) for _ in range(args.repeats)
        )
        for frames in (16, 61)
    }
    per_frame = {frames: seconds / frames for frames, seconds in runs.items()}
    return {
        "interpolation_steps": args.interpolation_steps,
        "interpolation_16_s": runs[16],
        "interpolation_61_s": runs[61],
        "per_frame_ratio": per_frame[61] / per_frame[16],
    }


def full_svd_step() -> dict[str, Any]:
    from diffusers import UNetSpatioTemporalConditionModel

    from anima.models.svd import SVD_XT_UNET_CONFIG
    from anima.models.svd_controlnet import SVDControlNetModel
    from anima.models.unet_residuals import unet_residuals

    frames, (height, width) = 16, FULL_SIZE
    with seeded(0):
        unet = UNetSpatioTemporalConditionModel(**SVD_XT_UNET_CONFIG).eval()
        controlnet = SVDControlNetModel.from_unet(unet).eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, frames, 8, height // 8, width // 8, generator=generator)
    embedding = torch.randn(1, 1, 1024, generator=generator)
    time_ids = torch.tensor([[29.0, 127.0, 0.02]])
    control = torch.rand(1, frames, 3, height, width, generator=generator) * 2 - 1
    t = torch.tensor(1.0)

    def step() -> torch.Tensor:
        down, mid = controlnet(
            sample,
            t,
            encoder_hidden_states=embedding,
            added_time_ids=time_ids,
            controlnet_cond=control,
        )
        with unet_residuals(unet, down, mid):
            return unet(sample, t, encoder_hidden_states=embedding, added_time_ids=time_ids)[0]

    with torch.no_grad():
        gc.collect()
        reset_peak_rss()
        wall, cpu, _ = timed(step)
    return {
        "svd_frames": frames,
        "svd_step_s": wall,
        "svd_step_cpu_s": cpu,
        "svd_step_peak_rss_gib": peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--keyframes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--full", action="store_true", help="also the full-size SDXL step")
    parser.add_argument("--interpolation-steps", type=int, default=25)
    parser.add_argument(
        "--full-svd", action="store_true", help="also a full-size SVD + ControlNet step"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    results |= mid_size(args)
    print(
        f"sampling a keyframe: {results['guided_per_keyframe_s']:.3f}s guided, "
        f"{results['plain_per_keyframe_s']:.3f}s plain (ratio {results['ratio']:.2f})",
        file=sys.stderr,
    )
    results |= interpolation(args)
    print(
        f"interpolation: {results['interpolation_16_s']:.2f}s for 16 frames, "
        f"{results['interpolation_61_s']:.2f}s for 61 (per-frame ratio "
        f"{results['per_frame_ratio']:.3f})",
        file=sys.stderr,
    )
    if args.full:
        results |= full_size()
    if args.full_svd:
        results |= full_svd_step()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
