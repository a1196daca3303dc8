"""The memory guard: a run's peak memory, estimated before any work, against what is available.

Frames stream (`anima.stream`): a method that makes its frames one at a time (``coarse``) holds
one or two frames at the working size (H, W) whatever the clip's length, besides the scene's
per-pixel maps, the background plate, the point groups and one frame's z-buffer work; the
interpreter with torch is a fixed base. A method that makes its clip at once holds it (its
frames and the intermediates of its pipeline). The video encoder is a process of its own
(ffmpeg, libx264 ``medium``) whose memory grows with the frames in its look-ahead (40 frames).
So::

    anima   ~ BASE_BYTES + H W (PIXEL_BYTES + CAMERA_PIXEL_BYTES [camera moves])
              + F P_points POINTS_FRAME_BYTES            [a streaming method: the shown points]
              + F H W CLIP_PIXEL_BYTES                    [a method that makes its clip at once]
              + model weights (file sizes)
    encoder ~ ENCODER_BASE_BYTES + H W (ENCODER_PIXEL_BYTES + min(F, 40) ENCODER_FRAME_BYTES)

where P_points is the pixels of the small render the shown control points come from
(`anima.control_points.POINTS_RENDER_MAX_SIDE`). The constants are fitted to the peak RSS of
``anima animate`` and of its ffmpeg (``benchmarks/scale.py``: one disc moving, static camera,
2 CPU threads, torch 2.13, this 2-core x86_64 machine) and rounded up, so that the estimate is an
upper bound within about 1.35x:

    ============  ======  ==========  ===========  ===========  ========  =====
    size (H x W)  frames  anima peak  ffmpeg peak  sum of both  estimate  ratio
    ============  ======  ==========  ===========  ===========  ========  =====
    756 x 1008    16      0.42 GiB    0.12 GiB     0.54 GiB     0.65 GiB  1.21
    756 x 1008    64      0.42 GiB    0.21 GiB     0.63 GiB     0.84 GiB  1.34
    1512 x 2016   16      0.71 GiB    0.33 GiB     1.04 GiB     1.23 GiB  1.18
    1512 x 2016   64      0.74 GiB    0.69 GiB     1.43 GiB     1.73 GiB  1.21
    3024 x 4032   16      1.89 GiB    1.15 GiB     3.04 GiB     3.55 GiB  1.17
    3024 x 4032   128     1.93 GiB    2.34 GiB     4.27 GiB     5.39 GiB  1.26
    ============  ======  ==========  ===========  ===========  ========  =====

(The two peaks need not coincide: the largest sum sampled at one time was 2.50 and 4.19 GiB at
3024 x 4032.) Model-based methods add their models'
weight files at their size on disk (loading goes through host memory); perception models (when
the spec gives no depth file or no mask) and a moving camera's extra (``CAMERA_PIXEL_BYTES``, a
guess) are not measured; ``CLIP_PIXEL_BYTES`` is the former whole-clip coarse render's fit (a
generous bound for a method that holds its clip at the working size or below).

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

from pydantic import BaseModel

from anima.control_points import POINTS_RENDER_MAX_SIDE
from anima.errors import InputError
from anima.methods.base import Method
from anima.scene import working_size
from anima.spec import MotionSpec
from anima.weights import Weights

MEMORY_LIMIT_ENV = "ANIMA_MEMORY_LIMIT"
BASE_BYTES = 400 * 2**20  # interpreter, torch, numpy, OpenCV, PIL: fitted 0.32 GiB
PIXEL_BYTES = 160  # per working pixel: scene, plate, point tables, a frame's work (fitted 139)
CAMERA_PIXEL_BYTES = 300  # per working pixel with a moving camera (the plate is splatted):
# a conservative guess from the point-group layout, not measured
POINTS_FRAME_BYTES = 40  # per pixel and frame of the shown points' small render (its channels
# and masks: 25 + 1 per object)
CLIP_PIXEL_BYTES = 88  # per pixel and frame of a clip made at once (its channels and copies)
ENCODER_BASE_BYTES = 40 * 2**20  # ffmpeg and libx264 at a small size
ENCODER_PIXEL_BYTES = 16  # per pixel: the encoder's own frames (fitted with the next)
ENCODER_FRAME_BYTES = 6  # per pixel and frame in the look-ahead (fitted 4.5-6.5)
ENCODER_LOOKAHEAD = 40  # libx264 medium's rc-lookahead: frames beyond it add nothing

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


def model_bytes(method: type[Method], weights: Weights, options: BaseModel | None = None) -> int:
    """The size on disk of the weight files the method loads with ``options`` (0 for
    weight-free methods): only the backbone a run reads, where options choose one."""
    total = 0
    for component in method.used_components(options):
        folder = weights.component_dir(component)
        if folder is not None:
            total += _folder_bytes(folder)
    return total


def estimate_spec_peak(
    spec: MotionSpec, size: tuple[int, int], models: int = 0, streams: bool = True
) -> MemoryEstimate:
    """The estimated peak memory of animating ``spec`` at the working ``size`` (H, W), with
    ``models`` bytes of model weights, by a method that makes its frames one at a time
    (``streams``) or its whole clip at once (see the module docstring)."""
    pixels = int(size[0]) * int(size[1])
    per_pixel = PIXEL_BYTES + (CAMERA_PIXEL_BYTES if spec.camera is not None else 0)
    frames = spec.num_frames
    if streams:
        side = min(1.0, POINTS_RENDER_MAX_SIDE / max(size))
        clip = frames * int(size[0] * side) * int(size[1] * side) * POINTS_FRAME_BYTES
    else:
        clip = frames * pixels * CLIP_PIXEL_BYTES
    lookahead = min(frames, ENCODER_LOOKAHEAD)
    parts = {
        "base": BASE_BYTES,
        "scene": pixels * per_pixel,
        "frames": clip,
        "models": models,
        "encoder": ENCODER_BASE_BYTES
        + pixels * (ENCODER_PIXEL_BYTES + lookahead * ENCODER_FRAME_BYTES),
    }
    return MemoryEstimate(sum(parts.values()), parts)


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"


def check_memory(
    spec: MotionSpec, method: type[Method], weights: Weights, options: BaseModel | None = None
) -> MemoryEstimate:
    """Refuse, with one `InputError` line, a run whose estimated peak memory exceeds the limit
    (`memory_limit`); returns the estimate otherwise. Reads the image's header only."""
    size = working_size(spec)
    models = model_bytes(method, weights, options)
    estimate = estimate_spec_peak(spec, size, models, method.streams)
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
