"""Metric throughput of `anima eval` on this machine, so that users can plan a suite.

(Issue 22, "Benchmark"; README, "Evaluation".)

For each metric family, the frames per second it scores: a generated video of ``--frames``
frames at ``--size`` x ``--size`` against a reference of the same shape (the family's model
built once, outside the timing), ``--repeats`` calls, one over the median seconds times the
frames. ``tiny``: the ``--weights tiny`` models; ``full`` (``--full``): the full-size
architectures with random weights, as a user's checkpoints would run:

- ``psnr_ssim_l1``: weight-free (PSNR, SSIM and L1 together);
- ``lpips``: AlexNet LPIPS (full: torchvision's AlexNet widths);
- ``fid``: the FID Inception-v3 (full: pytorch-fid's network, 299 px);
- ``fvd``: I3D on clips of 16 frames, every window (full: I3D at 224 px);
- ``cd_fvd``: VideoMAE (full: VideoMAE-v2 ViT-g/14 at 224 px, cd-FVD's; ``--giant-layers``
  of its 40 layers, the time scaled by 40 / layers);
- ``clip``: CLIP-I, CLIP-T and CLIP frame consistency together (full: ViT-B/32 at 224 px);
- ``dino_structure``: each frame against the reference's (a metric run scores frame 0
  against the condition; full: DINO ViT-B/8 at 224 px);
- ``d_rmse``: Depth Anything on both videos (full: Depth Anything V2 Small's shape);
- ``face``: Face-Det (OpenCV's Haar cascade) and Face-Cos with the tiny embedder (a user's
  embedder is a TorchScript file: no full size here);
- ``objmc``: the project's Lucas-Kanade tracker, 32 points (weight-free).

Prints one line a family and, last, one JSON object with every figure and the machine.

    python benchmarks/eval.py [--full] [--frames 16] [--size 256] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from machine import machine
from memory import peak_rss_gib

from anima.weights import Weights

print = functools.partial(print, flush=True)  # noqa: A001
TINY = Weights(builtin="tiny")
GIANT_LAYERS = 40


def timed(call: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def weight_free(video: torch.Tensor, reference: torch.Tensor) -> Callable[[], Any]:
    from anima.metrics.image import psnr, ssim

    def call() -> None:
        psnr(video, reference)
        ssim(video, reference)
        float((video - reference).abs().mean())

    return call


def lpips_family(full: bool) -> Callable[[torch.Tensor, torch.Tensor], Callable[[], Any]]:
    from anima.metrics.lpips import load_lpips, lpips_frames, random_lpips

    model = random_lpips("alex") if full else load_lpips(TINY)
    return lambda video, reference: lambda: lpips_frames(video, reference, model)


def fid_family(full: bool):
    from anima.metrics.features import InceptionFeatures, frame_features, load_inception
    from anima.models.inception import fid_inception

    extractor = (
        InceptionFeatures(fid_inception(random=True), scripted=False).eval()
        if full
        else load_inception(TINY)
    )

    def make(video: torch.Tensor, reference: torch.Tensor) -> Callable[[], Any]:
        from anima.metrics.frechet import frechet_from_features

        return lambda: frechet_from_features(
            frame_features(extractor, video), frame_features(extractor, reference)
        )

    return make


def clip_feature_family(extractor: Any, stride: int = 1):
    def make(video: torch.Tensor, reference: torch.Tensor) -> Callable[[], Any]:
        from anima.metrics.features import clip_features
        from anima.metrics.frechet import frechet_from_features

        length = min(16, int(video.shape[0]) - 1)
        return lambda: frechet_from_features(
            clip_features(extractor, video, length, stride),
            clip_features(extractor, reference, length, stride),
        )

    return make


def fvd_family(full: bool):
    from anima.metrics.features import I3DFeatures, load_i3d
    from anima.models.inception import random_i3d

    return clip_feature_family(I3DFeatures(random_i3d()).eval() if full else load_i3d(TINY))


def cd_fvd_family(full: bool, giant_layers: int):
    from anima.metrics.features import load_videomae, random_videomae, videomae_v2_giant_config

    if not full:
        return clip_feature_family(load_videomae(TINY))
    config = videomae_v2_giant_config()
    config.num_hidden_layers = giant_layers
    return clip_feature_family(random_videomae(config))


def clip_family(full: bool):
    from anima.metrics.clip import (
        ClipModel,
        clip_frame_consistency,
        clip_i,
        clip_t,
        load_clip,
    )

    clip = load_clip(TINY)
    if full:
        from transformers import CLIPConfig, CLIPModel

        tiny_text = clip.model.config.text_config  # the tiny tokenizer's vocabulary
        text = {
            key: getattr(tiny_text, key)
            for key in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")
        }
        model = CLIPModel(CLIPConfig(text_config=text)).eval()
        clip = ClipModel(
            model, clip.tokenizer, 224, (224, 224), clip.mean, clip.std, torch.device("cpu")
        )

    def make(video: torch.Tensor, reference: torch.Tensor) -> Callable[[], Any]:
        def call() -> None:
            clip_i(video, reference[0], clip)
            clip_t(video, "a rocket lifting off", clip)
            clip_frame_consistency(video, clip)

        return call

    return make


def dino_family(full: bool):
    from anima.metrics.structure import dino_structure_similarity, last_key_projection, load_dino

    dino = load_dino(TINY)
    if full:
        from transformers import ViTConfig, ViTModel

        dino.model = ViTModel(ViTConfig(patch_size=8), add_pooling_layer=False).eval()
        dino.key_projection = last_key_projection(dino.model)
        dino.size = 224

    def make(video: torch.Tensor, reference: torch.Tensor) -> Callable[[], Any]:
        pairs = list(zip(video, reference, strict=True))
        return lambda: [dino_structure_similarity(a, b, dino) for a, b in pairs]

    return make


def depth_family(full: bool):
    from anima.metrics.depth_error import depth_rmse, load_depth_fn

    if not full:
        depth = load_depth_fn(TINY)
    else:
        depth = _full_depth_anything()
    return lambda video, reference: lambda: depth_rmse(video, reference, depth)


def _full_depth_anything() -> Callable[[torch.Tensor], torch.Tensor]:
    """Depth Anything V2 Small's shape (DINOv2-S backbone, 518 px) with random weights."""
    import tempfile
    from pathlib import Path

    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    from anima.perception.depth import DepthAnythingEstimator

    backbone = Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        patch_size=14,
        image_size=518,
        out_indices=[3, 6, 9, 12],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=384,
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
    )
    with tempfile.TemporaryDirectory() as tmp:
        DepthAnythingForDepthEstimation(config).save_pretrained(tmp)
        DPTImageProcessor(
            size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14
        ).save_pretrained(tmp)
        return DepthAnythingEstimator(Path(tmp)).predict_raw


def face_family(full: bool):
    from anima.metrics.face import face_cosine, face_detection_rate, load_face_embedder

    if full:
        return None
    embedder = load_face_embedder(TINY)

    def make(video: torch.Tensor, reference: torch.Tensor) -> Callable[[], Any]:
        def call() -> None:
            face_detection_rate(video)
            face_cosine(video, reference, embedder)

        return call

    return make


def objmc_family(video: torch.Tensor, reference: torch.Tensor) -> Callable[[], Any]:
    from anima.metrics.tracking import track_points
    from anima.metrics.trajectory import objmc

    height, width = video.shape[-2:]
    grid = torch.stack(
        torch.meshgrid(
            torch.linspace(8, width - 8, 8), torch.linspace(8, height - 8, 4), indexing="xy"
        ),
        dim=-1,
    ).reshape(-1, 2)

    def call() -> None:
        tracks, ok = track_points(video, grid)
        objmc(tracks, tracks, ok)

    return call


def test_video(frames: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth moving pattern and a noisier copy (any content times the same)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, size // 8, size // 8, generator=generator)
    base = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear")
    video = torch.cat([torch.roll(base, shifts=2 * f, dims=-1) for f in range(frames)])
    noise = 0.05 * torch.randn(video.shape, generator=generator)
    return video, (video + noise).clamp(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also the full-size architectures")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--giant-layers", type=int, default=2, help="cd-FVD ViT-g layers built")
    parser.add_argument("--only", nargs="*", default=None, help="families to time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    video, reference = test_video(args.frames, args.size)
    builders: dict[str, Callable[[bool], Any]] = {
        "psnr_ssim_l1": lambda full: None if full else weight_free,
        "lpips": lpips_family,
        "fid": fid_family,
        "fvd": fvd_family,
        "cd_fvd": lambda full: cd_fvd_family(full, args.giant_layers),
        "clip": clip_family,
        "dino_structure": dino_family,
        "d_rmse": depth_family,
        "face": face_family,
        "objmc": lambda full: None if full else objmc_family,
    }
    report: dict[str, Any] = {"benchmark": "eval", "machine": machine(), "fps": {}}
    report |= {"frames": args.frames, "size": args.size, "repeats": args.repeats}
    for name, build in builders.items():
        if args.only and name not in args.only:
            continue
        for kind in ("tiny", "full") if args.full else ("tiny",):
            make = build(kind == "full")
            if make is None:
                continue
            with torch.no_grad():
                seconds = timed(make(video, reference), args.repeats)
            if name == "cd_fvd" and kind == "full":
                seconds *= GIANT_LAYERS / args.giant_layers  # the layers dominate the cost
            fps = args.frames / seconds
            report["fps"].setdefault(name, {})[kind] = fps
            print(f"{name:<15} {kind:<5} {fps:10.2f} frames/s ({seconds:.3f} s a video)")
    report["peak_rss_gib"] = peak_rss_gib()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
