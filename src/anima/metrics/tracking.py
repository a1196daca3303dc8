"""A weight-free point tracker for generated videos: pyramidal Lucas-Kanade with a
forward-backward check.

LeviTor, DragNUWA and DragAnything re-track points in generated videos with learned trackers
(CoTracker) to compute ObjMC; those weights are not available here, so this module uses the
classical tracker: OpenCV's pyramidal Lucas-Kanade (Bouguet, "Pyramidal implementation of the
Lucas Kanade feature tracker", Intel 2001; ``cv2.calcOpticalFlowPyrLK``), chained frame to frame,
with the forward-backward error of Kalal, Mikolajczyk and Matas ("Forward-backward error:
automatic detection of tracking failures", ICPR 2010) to flag lost points.

Choices, made for the small videos of the toy world (64x64 and up):

- **Upscaling.** Frames whose shorter side is below ``MIN_SIDE`` (128 px) are upscaled by an
  integer factor (bicubic) so that the shorter side reaches it: on a 64x64 frame a 3-level
  pyramid's top level would be 8x8 pixels, too small for a 21x21 window; after 2x upscaling the
  pyramid can absorb motions of ~10 native pixels per frame and the 8-bit quantisation of the
  grey image matters less. Coordinates are mapped with pixel centres at integers on both grids
  (``x_up = (x + 0.5) * s - 0.5``).
- **Window and levels.** ``win_size`` 11 on the (upscaled) grid, i.e. ~5-6 native pixels at
  64x64: small enough that a window inside a 14-px object does not straddle the static
  background (larger windows, 15-31, gave 0.5-3 px errors there), and ``max_level`` 3, reduced
  automatically so the coarsest level keeps at least two windows across.
- **Constant-velocity prediction.** From the second step on, LK starts from the point's position
  plus its last displacement (``OPTFLOW_USE_INITIAL_FLOW``; the backward check starts from the
  mirrored guess): toy-world and user trajectories are
  smooth (PCHIP), so the residual motion the pyramid must absorb stays small. On textured 64x64
  clips the tracker is accurate to ~0.1 px for motions up to ~1/3 of the object's size per
  frame; faster motions of small objects lose points (flagged, not silently wrong).
- **Lost points.** A point is lost at frame t+1 if LK reports failure either way, the
  forward-backward distance exceeds ``fb_threshold`` (native pixels), or it leaves the frame. A
  lost point stays lost (frame-to-frame chaining cannot re-acquire it after an occlusion); its
  position is held at the last tracked one and its ``ok`` flag is False from then on.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

MIN_SIDE = 128
WIN_SIZE = 11
MAX_LEVEL = 3
FB_THRESHOLD = 1.0
_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 0.01)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def auto_upscale(size: tuple[int, int], min_side: int = MIN_SIDE) -> int:
    """Integer upscaling factor that brings the shorter side of ``size`` (H, W) to ``min_side``."""
    return max(1, math.ceil(min_side / min(size)))


def _grey_frames(video: torch.Tensor, scale: int) -> list[np.ndarray]:
    frames = video.detach().to(torch.float32).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    grey = np.rint((frames @ _LUMA) * 255).astype(np.uint8)
    if scale == 1:
        return list(grey)
    return [cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC) for g in grey]


def _lk(
    src: np.ndarray, dst: np.ndarray, p: np.ndarray, guess: np.ndarray, lk: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flags = cv2.OPTFLOW_USE_INITIAL_FLOW
    return cv2.calcOpticalFlowPyrLK(src, dst, p, guess.copy(), flags=flags, **lk)


def track_points(
    video: torch.Tensor,
    points0: torch.Tensor,
    upscale: int | None = None,
    win_size: int = WIN_SIZE,
    max_level: int = MAX_LEVEL,
    fb_threshold: float = FB_THRESHOLD,
    predict: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Track ``points0`` (N, 2) pixel positions (x, y) of frame 0 through ``video`` (F, 3, H, W).

    Returns ``tracks`` (N, F, 2) float32 positions in native pixels (frame 0 = ``points0``) and
    ``ok`` (N, F) bool, True while the point is tracked (see the module doc for when it is lost).
    ``upscale`` None picks :func:`auto_upscale`.
    """
    if video.dim() != 4 or video.shape[1] != 3:
        raise ValueError(f"expected a video (F, 3, H, W), got shape {tuple(video.shape)}")
    points = points0.detach().to(torch.float64).cpu().numpy().reshape(-1, 2)
    num_frames = int(video.shape[0])
    height, width = int(video.shape[-2]), int(video.shape[-1])
    n = points.shape[0]
    tracks = np.zeros((n, num_frames, 2), dtype=np.float64)
    ok = np.zeros((n, num_frames), dtype=bool)
    tracks[:, 0] = points
    ok[:, 0] = (
        (points[:, 0] >= 0)
        & (points[:, 0] <= width - 1)
        & (points[:, 1] >= 0)
        & (points[:, 1] <= height - 1)
    )
    if n == 0 or num_frames == 1:
        return torch.from_numpy(tracks).float(), torch.from_numpy(ok)

    scale = auto_upscale((height, width)) if upscale is None else int(upscale)
    grey = _grey_frames(video, scale)
    # Keep at least two windows across the coarsest level.
    levels = max_level
    while levels > 0 and min(height, width) * scale / 2**levels < 2 * win_size:
        levels -= 1
    lk = dict(winSize=(win_size, win_size), maxLevel=levels, criteria=_CRITERIA)

    for t in range(num_frames - 1):
        tracks[:, t + 1] = tracks[:, t]
        alive = np.flatnonzero(ok[:, t])
        if alive.size == 0:
            continue
        p0 = ((tracks[alive, t] + 0.5) * scale - 0.5).astype(np.float32).reshape(-1, 1, 2)
        shift = np.zeros_like(p0)
        if predict and t > 0:
            # Constant-velocity guess: smooth trajectories leave LK a small residual motion.
            velocity = np.where(ok[alive, t - 1, None], tracks[alive, t] - tracks[alive, t - 1], 0)
            shift = (velocity * scale).astype(np.float32).reshape(-1, 1, 2)
        p1, st1, _ = _lk(grey[t], grey[t + 1], p0, p0 + shift, lk)
        # The backward pass gets the mirrored guess, so the check is as fair as the forward pass.
        pb, st2, _ = _lk(grey[t + 1], grey[t], p1, p1 - shift, lk)
        fb = np.linalg.norm((pb - p0).reshape(-1, 2), axis=1) / scale
        new = (p1.reshape(-1, 2).astype(np.float64) + 0.5) / scale - 0.5
        good = (
            (st1.ravel() == 1)
            & (st2.ravel() == 1)
            & np.isfinite(fb)
            & (fb <= fb_threshold)
            & (new[:, 0] >= 0)
            & (new[:, 0] <= width - 1)
            & (new[:, 1] >= 0)
            & (new[:, 1] <= height - 1)
        )
        tracks[alive[good], t + 1] = new[good]
        ok[alive[good], t + 1] = True
    return torch.from_numpy(tracks).float(), torch.from_numpy(ok)
