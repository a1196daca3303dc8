"""Spec -> scene -> 16-frame render -> LeviTor control points -> control maps, at 288x512.

One object covering about 15 % of the image moves across and away; perception comes from files
(a depth .npy and a mask PNG), so no model runs. Prints one JSON object on its last line with the
median of 5 runs for the whole clip (``median_s``) and for each stage.

    python benchmarks/controls.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anima.animation import build_animation
from anima.control_points import compute_control_points
from anima.methods.levitor.controls import control_maps, first_frame_depth_range
from anima.render import render
from anima.scene import build_scene
from anima.spec import load_spec

HEIGHT, WIDTH, FRAMES = 288, 512, 16
REPO = Path(__file__).resolve().parents[1]


def write_inputs(folder: Path) -> Path:
    photo = Image.open(REPO / "examples" / "rocket.jpg").convert("RGB").resize((WIDTH, HEIGHT))
    photo.save(folder / "image.png")
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    radius = np.sqrt(0.15 * HEIGHT * WIDTH / np.pi)
    mask = (xs - 180) ** 2 + (ys - 150) ** 2 <= radius**2
    Image.fromarray((mask * 255).astype(np.uint8)).save(folder / "mask.png")
    depth = np.where(mask, 4.0, 6.0 + ys / HEIGHT * 10.0).astype(np.float32)
    np.save(folder / "depth.npy", depth)
    spec = {
        "version": 1,
        "image": "image.png",
        "depth": "depth.npy",
        "num_frames": FRAMES,
        "objects": [
            {
                "id": 1,
                "mask": "mask.png",
                "trajectory": [
                    {"t": 0, "x": 180, "y": 150, "depth": 4.0},
                    {"t": 1, "x": 330, "y": 120, "depth": 7.0},
                ],
            }
        ],
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    return folder / "spec.json"


def run_once(spec_path: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    start = time.perf_counter()
    spec = load_spec(spec_path)
    scene = build_scene(spec)
    times["scene_s"] = time.perf_counter() - start

    mark = time.perf_counter()
    result = render(scene, build_animation(spec, scene))
    times["render_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    points = compute_control_points(result.instance, result.distance, spec.moved_ids)
    times["points_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    maps = control_maps(points, scene.size, first_frame_depth_range(result.distance))
    times["maps_s"] = time.perf_counter() - mark
    assert maps.shape == (FRAMES, 3, HEIGHT, WIDTH)
    times["total_s"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = write_inputs(Path(tmp))
        run_once(spec_path)  # warm-up: imports, allocator
        runs = [run_once(spec_path) for _ in range(args.runs)]
    figures = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    for key, value in figures.items():
        print(f"{key:<10} {value * 1000:8.1f} ms")
    report = {
        "benchmark": "controls",
        "size": [HEIGHT, WIDTH],
        "frames": FRAMES,
        "runs": args.runs,
        "median_s": figures["total_s"],
        "median_stage_s": {k: v for k, v in figures.items() if k != "total_s"},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.python_version()}, torch {torch.__version__}",
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
