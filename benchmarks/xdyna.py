"""X-Dyna sliding-window sampling: time per frame of a 64-frame video vs a 16-frame one.

A mid-size random X-Dyna stack (SD-style UNet 64/128/256 channels with AnimateDiff motion
modules, Dynamics-Adapter, pose and face ControlNets, 8x VAE) samples 128x128 videos with CFG,
windows of 16 frames overlapping by 4, on the pipeline's default path. CFG runs because a prompt
("a person dancing") is passed against the empty negative prompt: with equal prompts (e.g. none
at all) the pipeline skips the unconditional branch, which changes nothing. ``window_scaling``
is (seconds per frame at 64 frames) / (seconds per frame at 16 frames), medians of ``--runs``
runs each; 1.0 would be perfectly linear. The ControlNets run once per frame and step
(`WindowResiduals`) and the reference frame once per step (`XDynaPipeline.reference_features`),
but the UNet with its motion modules must see every window whole: a 64-frame video makes 5
window passes of 16 frames plus 1 reference pass, 81 frame-passes a step, where a 16-frame one
makes 16 + 1 = 17, so the UNet alone would scale by ``unet_frames_ratio`` = (81 / 64) /
(17 / 16) = 1.19; ``window_scaling`` lies between that and 1.0 by the ControlNets' share of the
work. ``window_scaling_overlap_0`` is the same ratio with windows that do not overlap (4
windows for 64 frames): how linear the machinery itself is.

    python benchmarks/xdyna.py [--runs 3] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from diffusers import ControlNetModel, MotionAdapter, UNet2DConditionModel

from anima.methods.xdyna.adapter import DynamicsAdapter
from anima.methods.xdyna.pipeline import XDynaPipeline
from anima.models.tiny import seeded
from anima.models.tiny_sd import (
    motion_unet,
    tiny_sd_vae,
    tiny_text_encoder,
    tiny_tokenizer,
    xdyna_scheduler,
)
from anima.sampling.windows import sliding_windows

SIZE, WINDOW, OVERLAP = 128, 16, 4
#: Differs from the (empty) negative prompt, so that classifier-free guidance runs.
PROMPT = "a person dancing"
CHANNELS = (64, 128, 256)


def mid_size_pipeline() -> XDynaPipeline:
    with seeded(0):
        unet2d = UNet2DConditionModel(
            sample_size=16,
            block_out_channels=CHANNELS,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=2,
            cross_attention_dim=32,
            attention_head_dim=8,
        )
        adapter = MotionAdapter(
            block_out_channels=CHANNELS,
            motion_layers_per_block=2,
            motion_num_attention_heads=8,
            motion_max_seq_length=24,
            use_motion_mid_block=False,
        )
        unet = motion_unet(unet2d, adapter)
        pose = ControlNetModel.from_unet(unet2d, conditioning_channels=3)
        face = ControlNetModel.from_unet(unet2d, conditioning_channels=6)
    pipe = XDynaPipeline(
        tiny_sd_vae(),
        tiny_text_encoder(),
        tiny_tokenizer(),
        unet,
        DynamicsAdapter.from_unet(unet),
        pose,
        xdyna_scheduler(),
        face,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seconds(pipe: XDynaPipeline, frames: int, steps: int, overlap: int = OVERLAP) -> float:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, SIZE, SIZE, generator=g)
    pose = torch.rand(frames, 3, SIZE, SIZE, generator=g)
    face = torch.rand(frames, 6, SIZE, SIZE, generator=g)
    start = time.perf_counter()
    pipe(
        image,
        pose,
        face,
        prompt=PROMPT,
        num_inference_steps=steps,
        window=WINDOW,
        overlap=overlap,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    pipe = mid_size_pipeline()
    seconds(pipe, 4, 1)  # warm-up
    times = {n: [seconds(pipe, n, args.steps) for _ in range(args.runs)] for n in (16, 64)}
    medians = {n: statistics.median(t) for n, t in times.items()}
    no_overlap = statistics.median(seconds(pipe, 64, args.steps, 0) for _ in range(args.runs))
    per_frame = {n: medians[n] / n for n in medians}
    # per step: every window's generated frames, plus the reference alone once
    unet_frames = {n: sum(map(len, sliding_windows(n, WINDOW, OVERLAP))) + 1 for n in medians}
    unet_ratio = (unet_frames[64] / 64) / (unet_frames[16] / 16)
    scaling = per_frame[64] / per_frame[16]
    for n in medians:
        print(f"{n:3d} frames: median {medians[n]:.2f} s, {per_frame[n] * 1000:.1f} ms/frame")
    print(
        json.dumps(
            {
                "window_scaling": round(scaling, 3),
                "unet_frames_ratio": round(unet_ratio, 3),
                "window_scaling_overlap_0": round((no_overlap / 64) / per_frame[16], 3),
                "median_s": {str(n): round(m, 3) for n, m in medians.items()},
                "runs": args.runs,
                "steps": args.steps,
                "size": [SIZE, SIZE],
                "window": WINDOW,
                "overlap": OVERLAP,
                "machine": f"{platform.machine()} {torch.get_num_threads()} threads, "
                f"torch {torch.__version__}",
            }
        )
    )


if __name__ == "__main__":
    main()
