"""LeviTor's control maps drawn as the authors' release draws them (LeviTor §3.2).

The released ControlNet was trained on maps drawn by the authors' code, which differ from ours
(`anima.methods.levitor.controls.control_maps`) in ways the model notices. This module draws
the "release" convention point for point and pixel for pixel, from points placed by
`anima.control_points.compute_release_control_points`:

- positions: each point's centre ``(x, y)`` truncated with ``int()`` to a pixel ``(c, r)``;
- the disc: a 200 px uint8 template (a Gaussian with sigma 40 px inside the template's
  inscribed circle, peak 255) resized bilinearly (OpenCV's ``INTER_LINEAR``) to the point's box
  and pasted into it. The box is rows ``[r - 10, r + 10)`` and columns ``[c - 10, c + 10)``
  (20x20 px whatever the image size, so the disc's centre sits at ``c - 0.5``), clamped to rows
  ``[1, H - 1)`` and columns ``[1, W - 1)``: the template is squeezed into a clamped box (its
  peak moves inwards), and the first and last rows and columns are never drawn. A point whose
  pixel is outside the image is skipped;
- overlap: points are drawn in order (object id, then cluster index) and each overwrites its
  whole box in all three channels, the template's zero corners included;
- channel 1: the object's own id (ids 1, 3, 7 stay 1, 3, 7) where the pasted template is
  non-zero, 0 elsewhere in the box; channel 2: the point's depth value (`release_depth_values`)
  likewise. Every value is an integer, stored as float32 like the release's maps.

Conventions: as `anima.control_points` (docs/architecture.md, "Conventions").
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
from torch import Tensor

from anima.control_points import ControlPoints

#: Half the side of the pasted box (the release demo's ``gaussian_r``): 20x20 px at any size.
RELEASE_HALF_SIDE = 10
#: The heatmap template: side in pixels and the Gaussian's sigma in template pixels.
TEMPLATE_PIXELS, TEMPLATE_SIGMA = 200, 40.0
#: The release keeps ids and depth values in uint8 arrays.
MAX_CHANNEL_VALUE = 255


@functools.lru_cache(maxsize=1)
def heatmap_template() -> np.ndarray:
    """``(200, 200)`` uint8: the release's Gaussian (sigma 40 px around pixel (100, 100)) cut to
    the inscribed circle (OpenCV's filled circle of radius 100), scaled to a peak of 255 and
    truncated to integers. Read-only."""
    side = TEMPLATE_PIXELS
    offsets = np.arange(side, dtype=np.float64) - side / 2
    squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
    density = np.exp(-0.5 * squared / TEMPLATE_SIGMA**2) / (2 * np.pi * TEMPLATE_SIGMA**2)
    centre = (side // 2, side // 2)
    circle = cv2.circle(np.zeros((side, side), np.float32), centre, side // 2, 1, thickness=-1)
    gauss = density.astype(np.float32) * circle
    gauss = gauss / gauss.max()
    template = (gauss / gauss.max() * 255).astype(np.uint8)
    template.flags.writeable = False
    return template


@functools.lru_cache(maxsize=64)
def resized_template(height: int, width: int) -> np.ndarray:
    """The template resized to ``(height, width)`` with OpenCV's bilinear ``INTER_LINEAR``, as
    the release pastes it into a box of that size. Read-only uint8."""
    patch = cv2.resize(heatmap_template(), (width, height), interpolation=cv2.INTER_LINEAR)
    patch.flags.writeable = False
    return patch


def release_depth_values(distance: Tensor, depth_range: tuple[float, float]) -> Tensor:
    """The release's integer depth value (0..255, larger = nearer) of points at ``distance``.

    The release normalises the first image's disparity (Depth Anything's) min-max to 0..255 and
    casts it to uint8 (truncation). Disparity here is ``1 / distance``, whose min and max over
    frame 0 are ``1 / far`` and ``1 / near`` (``depth_range = (near, far)``, from
    `anima.methods.levitor.controls.first_frame_depth_range`), so the value is
    ``floor(255 * (1/d - 1/far) / (1/near - 1/far))``. Points outside frame 0's range are
    clamped: nearer than its nearest pixel gives 255, farther than its farthest gives 0. The
    release reads each value back as ``round(1 / (1 / value))`` and writes 0 where that is 1:
    a value of 1 becomes 0 here too. A degenerate range (``far <= near``) gives 255 for
    ``d <= near`` and 0 beyond.

    Returns:
        int64 values, ``distance``'s shape.
    """
    near, far = depth_range
    if near <= 0:
        raise ValueError(f"near must be positive, got {near}")
    d = distance.to(torch.float64)
    if far <= near:
        value = torch.where(d <= near, float(MAX_CHANNEL_VALUE), 0.0)
    else:
        low, high = 1.0 / far, 1.0 / near
        normalised = (1.0 / d.clamp_min(1e-12) - low) / (high - low) * MAX_CHANNEL_VALUE
        value = torch.floor(normalised.clamp(0.0, float(MAX_CHANNEL_VALUE)))
    value = value.to(torch.int64)
    return torch.where(value == 1, 0, value)


def truncated_pixels(xy: Tensor) -> tuple[Tensor, Tensor]:
    """``(cols, rows)`` int64 of points ``(..., 2)`` truncated towards zero, as ``int()``."""
    pixels = torch.trunc(xy.to(torch.float64)).to(torch.int64)
    return pixels[..., 0], pixels[..., 1]


def clamped_box(centre: int, length: int) -> tuple[int, int]:
    """``[start, stop)`` of a box side around ``centre``: ``[c - 10, c + 10)`` clamped to
    ``[1, length - 1)``."""
    return max(centre - RELEASE_HALF_SIDE, 1), min(centre + RELEASE_HALF_SIDE, length - 1)


def paste_point(frame: np.ndarray, col: int, row: int, obj: int, depth: int) -> None:
    """Draw one point into ``frame`` (``(3, H, W)`` float32, in place) the release's way: its
    box gets the resized template, and the id and depth where the template is non-zero.
    Nothing is drawn for a pixel outside the image or a box with no area."""
    height, width = frame.shape[-2:]
    if not (0 <= col < width and 0 <= row < height):
        return
    top, bottom = clamped_box(row, height)
    left, right = clamped_box(col, width)
    if bottom - top < 1 or right - left < 1:
        return
    patch = resized_template(bottom - top, right - left)
    covered = patch != 0
    frame[0, top:bottom, left:right] = patch
    frame[1, top:bottom, left:right] = obj * covered
    frame[2, top:bottom, left:right] = depth * covered


def release_control_maps(
    points: ControlPoints, size: tuple[int, int], depth_range: tuple[float, float]
) -> Tensor:
    """Per-frame 3-channel control images drawn the release's way (see the module docstring).

    Args:
        points: control points in pixel coordinates of ``size``, ordered as the release draws
            them (object id, then cluster: `compute_release_control_points`); invisible points
            are not drawn.
        size: ``(H, W)`` of the maps.
        depth_range: ``(near, far)``, frame 0's distance range (`release_depth_values`).

    Returns:
        ``(F, 3, H, W)`` float32 holding integers 0..255.
    """
    ids = points.instance
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > MAX_CHANNEL_VALUE):
        raise ValueError(
            f"object ids must lie in 0..{MAX_CHANNEL_VALUE} for the release's uint8 id channel, "
            f"got {int(ids.min())}..{int(ids.max())}"
        )
    maps = np.zeros((points.num_frames, 3, *size), dtype=np.float32)
    cols, rows = truncated_pixels(points.xy)
    depth = release_depth_values(points.distance, depth_range)
    for f in range(points.num_frames):
        for i in range(points.num_points):
            if bool(points.visible[f, i]):
                paste_point(
                    maps[f], int(cols[f, i]), int(rows[f, i]), int(ids[i]), int(depth[f, i])
                )
    return torch.from_numpy(maps)
