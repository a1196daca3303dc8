"""`coarse` on a phone-sized photo (4032x3024 by default) at 16, 64 and 128 frames.

The photo is synthetic (numpy: a textured background and one textured disc), with a mask PNG
and a depth .npy, so that no perception model runs; the disc moves across and away. Each length
runs ``anima animate`` in a fresh subprocess under the memory guard (`anima.memory`): a length
whose estimate exceeds the memory available is reported as "refused by the memory guard"
instead of being run (and killed). For each length: wall time, peak RSS of anima's process
(its ``VmHWM``), of the video encoder (ffmpeg, a process of its own) and of the two together
(sampled every 50 ms, Linux ``/proc``), the render time and
megapixels rendered per second (frames x H x W / render time), and the guard's estimate.
The render time is the ``prepare`` stage (the point groups) plus the ``frames`` time (making
the frames, which stream into the encoder; the encoder's own time is ``write``).
The last line is one JSON object with the machine and the ratios peak RSS 128/16 and
time-per-frame 128/16 (the last length over the first; null when either did not run).

    python benchmarks/scale.py [--frames 16 64 128] [--size 3024 4032]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anima.memory import estimate_spec_peak, memory_limit
from anima.spec import load_spec


def write_inputs(folder: Path, height: int, width: int) -> Path:
    """A textured photo with one disc (mask PNG, depth .npy) and its spec; the spec's path."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack(
        [
            0.5 + 0.25 * np.sin(xs / 37.0) * np.cos(ys / 53.0),
            0.4 + 0.3 * ys / height,
            0.5 + 0.2 * np.sin((xs + ys) / 91.0),
        ],
        axis=-1,
    )
    background += rng.normal(0.0, 0.04, background.shape).astype(np.float32)
    cx, cy, radius = 0.35 * width, 0.55 * height, 0.12 * min(height, width)
    mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
    disc = np.stack([0.9 + 0.1 * np.sin(xs / 11.0), 0.3 + 0.2 * np.cos(ys / 7.0), 0.2 + 0 * xs], -1)
    photo = np.where(mask[..., None], disc, background)
    Image.fromarray((np.clip(photo, 0, 1) * 255).astype(np.uint8)).save(folder / "image.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(folder / "mask.png")
    depth = np.where(mask, 4.0, 6.0 + ys / height * 10.0).astype(np.float32)
    np.save(folder / "depth.npy", depth)
    spec = {
        "version": 1,
        "image": "image.png",
        "depth": "depth.npy",
        "num_frames": 16,
        "objects": [
            {
                "id": 1,
                "mask": "mask.png",
                "trajectory": [
                    {"t": 0, "x": cx, "y": cy, "depth": 4.0},
                    {"t": 1, "x": cx + 0.3 * width, "y": cy - 0.1 * height, "depth": 6.0},
                ],
            }
        ],
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    return folder / "spec.json"


def _status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` field in KiB (VmHWM: peak RSS so far, VmRSS: RSS now); 0 once the
    process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(rf"^{field}:\s+([0-9]+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


class PeakSampler(threading.Thread):
    """Samples the run's processes every 50 ms: the peak RSS of anima itself (its VmHWM), of
    its encoder (ffmpeg, a process of its own) and of the two together."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.done = pid, threading.Event()
        self.anima = self.encoder = self.together = 0

    def run(self) -> None:
        while not self.done.wait(0.05):
            anima = _status_kib(self.pid, "VmHWM")
            if anima == 0:
                continue
            self.anima = max(self.anima, anima)
            children = _children(self.pid)
            for child in children:
                self.encoder = max(self.encoder, _status_kib(child, "VmHWM"))
            now = _status_kib(self.pid, "VmRSS") + sum(_status_kib(c, "VmRSS") for c in children)
            self.together = max(self.together, now)


def run_length(spec_path: Path, frames: int, folder: Path) -> dict:
    """One ``anima animate`` subprocess at ``frames`` frames: its numbers, or why it did not
    run."""
    out = folder / f"out_{frames}.mp4"
    command = [sys.executable, "-m", "anima.entry", "animate", str(spec_path), "-o", str(out)]
    command += ["--frames", str(frames)]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
        sampler = PeakSampler(process.pid)
        sampler.start()
        process.wait()
        wall = time.perf_counter() - start
        sampler.done.set()
        sampler.join()
        log.seek(0)
        stderr = log.read()
    row: dict = {"frames": frames, "exit": process.returncode, "wall_s": round(wall, 2)}
    if process.returncode == 2 and "memory" in stderr:
        row["result"] = "refused by the memory guard"
        row["message"] = stderr.strip().splitlines()[-1]
        return row
    if process.returncode != 0:
        row["result"] = "failed"
        row["message"] = stderr.strip()[-500:]
        return row
    stages = {name: float(value) for name, value in re.findall(r"(\w+) ([0-9.]+)s", stderr)}
    # The render: building the point groups (prepare) and making the frames, which stream to
    # the encoder (its own time is ``write``).
    render_s = stages.get("prepare", float("nan")) + stages.get("frames", float("nan"))
    height, width = load_spec(spec_path).size or _image_size(spec_path)
    row |= {
        "result": "ok",
        "peak_rss_gib": round(sampler.anima / 2**20, 3),
        "encoder_peak_rss_gib": round(sampler.encoder / 2**20, 3),
        "together_peak_rss_gib": round(sampler.together / 2**20, 3),
        "scene_s": stages.get("scene"),
        "render_s": round(render_s, 2),
        "write_s": stages.get("write"),
        "megapixels_per_s": round(frames * height * width / 1e6 / render_s, 2),
        "wall_per_frame_s": round(wall / frames, 3),
    }
    return row


def _image_size(spec_path: Path) -> tuple[int, int]:
    with Image.open(spec_path.parent / "image.png") as img:
        return img.size[1], img.size[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--size", type=int, nargs=2, default=[3024, 4032], metavar=("H", "W"))
    args = parser.parse_args()
    height, width = args.size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec_path = write_inputs(folder, height, width)
        limit, source = memory_limit()
        for frames in args.frames:
            spec = load_spec(spec_path).model_copy(update={"num_frames": frames})
            estimate = estimate_spec_peak(spec, (height, width))
            row = run_length(spec_path, frames, folder)
            row["estimate_gib"] = round(estimate.total / 2**30, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary: dict = {
        "benchmark": "scale",
        "size": [height, width],
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "memory_limit_gib": round(limit / 2**30, 3) if limit is not None else None,
        "memory_limit_source": source,
        "runs": rows,
    }
    first, last = rows[0], rows[-1]
    label = f"{last['frames']}/{first['frames']}"
    both = len(rows) >= 2 and first["result"] == last["result"] == "ok"
    summary[f"peak_rss_ratio_{label}"] = (
        round(last["peak_rss_gib"] / first["peak_rss_gib"], 3) if both else None
    )
    summary[f"render_time_per_frame_ratio_{label}"] = (
        round((last["render_s"] / last["frames"]) / (first["render_s"] / first["frames"]), 3)
        if both
        else None
    )
    summary[f"time_per_frame_ratio_{label}"] = (
        round(last["wall_per_frame_s"] / first["wall_per_frame_s"], 3) if both else None
    )
    if not both:
        summary["note"] = f"ratios need both {label} lengths to run; see runs"
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
