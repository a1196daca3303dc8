"""The memory guard: a run's peak memory, estimated before any work, against what is available.

The coarse render (`anima.render.render`) holds every frame of every channel at the working
size (H, W) until the video is written: RGB float32 (three copies at the peak: the render's own,
its clamped result and the pipeline's output), planar distance float32, instance ids int64,
visibility and holes (bool), then the encoder's float temporaries and its uint8 copy. Besides
these, the scene's per-pixel maps, the background plate, the point groups and one frame's
z-buffer work scale with H x W only, and the interpreter with torch is a fixed base. So::

    peak ~ BASE_BYTES + H W (PIXEL_BYTES + CAMERA_PIXEL_BYTES [camera moves])
               + F H W FRAME_PIXEL_BYTES + model weights (file sizes)

with the constants fitted to peak RSS of ``anima animate`` (``benchmarks/scale.py``: one disc
moving, static camera, 2 CPU threads, torch 2.13) and rounded up so that the estimate is an
upper bound within about 1.5x:

    ==============  ======  ========  ==========  =====
    size (H x W)    frames  peak RSS  estimate    ratio
    ==============  ======  ========  ==========  =====
    756 x 1008      16      1.29 GiB  1.73 GiB    1.34
    756 x 1008      64      3.87 GiB  4.73 GiB    1.22
    756 x 1008      128     7.32 GiB  8.72 GiB    1.19
    1512 x 2016     16      4.06 GiB  5.15 GiB    1.27
    1512 x 2016     48      10.9 GiB  13.1 GiB    1.20
    3024 x 4032     16      14.6 GiB  18.8 GiB    1.29
    ==============  ======  ========  ==========  =====

Model-based methods add their models' weight files at their size on disk (loading goes through
host memory); perception models (when the spec gives no depth file or no mask) and a moving
camera's extra (``CAMERA_PIXEL_BYTES``, a guess) are not measured.

The limit is ``MemAvailable`` of ``/proc/meminfo`` (Linux; elsewhere the guard is skipped),
or the environment variable ``ANIMA_MEMORY_LIMIT``: bytes, or a number with a unit (``512MiB``,
``8GiB``, ``16G``), or ``off`` (or ``0``) to disable the guard. The guard runs in
`anima.preflight.check_spec`, so ``anima spec validate`` reports it too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from anima.errors import InputError
from anima.methods.base import Method
from anima.scene import working_size
from anima.spec import MotionSpec
from anima.weights import Weights

MEMORY_LIMIT_ENV = "ANIMA_MEMORY_LIMIT"
BASE_BYTES = 600 * 2**20  # interpreter, torch, numpy, OpenCV, PIL: fitted ~0.36 GiB
PIXEL_BYTES = 200  # per working pixel: scene, plate, point tables, one frame's z-buffer (~91)
CAMERA_PIXEL_BYTES = 300  # per working pixel with a moving camera (the plate is splatted):
# a conservative guess from the point-group layout, not measured
FRAME_PIXEL_BYTES = 88  # per pixel and frame: all frames' channels, encoder copies (~76)

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 2**40,
}


@dataclass(frozen=True)
class MemoryEstimate:
    """An estimated peak (bytes) and its parts."""

    total: int
    parts: dict[str, int]


def parse_bytes(text: str, where: str = f"${MEMORY_LIMIT_ENV}") -> int:
    """Bytes from ``'12345'``, ``'8GiB'``, ``'1.5G'`` or ``'512 MiB'`` (G/GB are 10^9, GiB
    2^30); an `InputError` naming ``where`` otherwise."""
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", text)
    unit = found.group(2).lower() if found else ""
    if not found or unit not in _UNITS:
        raise InputError(f"cannot read '{text}' as a memory size (e.g. 8GiB, 512MiB)", where)
    return int(float(found.group(1)) * _UNITS[unit])


def available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes; None where it cannot be read."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemAvailable:\s+([0-9]+)\s*kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def memory_limit() -> tuple[int | None, str]:
    """The limit the guard compares with, and where it comes from: ``$ANIMA_MEMORY_LIMIT``
    (``off``: no limit), else ``MemAvailable``; (None, why) when there is none."""
    value = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if value.lower() in {"off", "none", "0"}:
        return None, f"${MEMORY_LIMIT_ENV}={value}"
    if value:
        return parse_bytes(value), f"${MEMORY_LIMIT_ENV}={value}"
    available = available_memory()
    if available is None:
        return None, "no /proc/meminfo"
    return available, "MemAvailable"


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def model_bytes(method: type[Method], weights: Weights) -> int:
    """The size on disk of the weight files the method loads (0 for weight-free methods)."""
    total = 0
    for component in method.components:
        folder = weights.component_dir(component)
        if folder is not None:
            total += _folder_bytes(folder)
    return total


def estimate_spec_peak(spec: MotionSpec, size: tuple[int, int], models: int = 0) -> MemoryEstimate:
    """The estimated peak memory of animating ``spec`` at the working ``size`` (H, W), with
    ``models`` bytes of model weights (see the module docstring)."""
    pixels = int(size[0]) * int(size[1])
    per_pixel = PIXEL_BYTES + (CAMERA_PIXEL_BYTES if spec.camera is not None else 0)
    parts = {
        "base": BASE_BYTES,
        "scene": pixels * per_pixel,
        "frames": pixels * spec.num_frames * FRAME_PIXEL_BYTES,
        "models": models,
    }
    return MemoryEstimate(sum(parts.values()), parts)


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"


def check_memory(spec: MotionSpec, method: type[Method], weights: Weights) -> MemoryEstimate:
    """Refuse, with one `InputError` line, a run whose estimated peak memory exceeds the limit
    (`memory_limit`); returns the estimate otherwise. Reads the image's header only."""
    size = working_size(spec)
    estimate = estimate_spec_peak(spec, size, model_bytes(method, weights))
    limit, source = memory_limit()
    if limit is None or estimate.total <= limit:
        return estimate
    height, width = size
    raise InputError(
        f"not enough memory: {spec.num_frames} frames at {width}x{height} need an estimated "
        f"{_gib(estimate.total)} but the limit is {_gib(limit)} ({source}); lower the spec's "
        f"`size` or `num_frames` (--frames), or set ${MEMORY_LIMIT_ENV}",
        spec.where,
    )
