"""Edge-aware upsampling of a mask found in a coarse grid, guided by the full-resolution photo.

Perception runs on at most about a megapixel (`anima.scene.PERCEPTION_MAX_PIXELS`); a mask
found there and brought to a 12-megapixel working size by nearest neighbour has staircase edges
several pixels wide. `upsample_mask` resizes the mask bilinearly (a soft mask whose 0.5 level is
the coarse outline) and filters it with the guided filter of He, Sun and Tang ("Guided Image
Filtering", ECCV 2010 / TPAMI 2013), the full-resolution colour photo as the guide (TPAMI
Sec. 3.5, the colour guide): in every window the output is a linear function of the guide's
colour fitted to the soft mask (Sec. 3.1), so where the window straddles an edge of the photo
the mask's transition moves onto that edge; thresholding at 0.5 gives the full-resolution mask.
This is the filter's joint-upsampling application (TPAMI experiments; also He and Sun, "Fast
Guided Filter", 2015): the radius is scaled with the upsampling factor so that every window
straddling the coarse outline also reaches the photo's edge it stands for.

The filter is written with OpenCV box filters (normalised sums over (2r+1)-square windows, so
its cost does not depend on the radius), in horizontal strips and only over the part of the
image near the mask's outline, so a 12-megapixel photo costs a fraction of a second.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import Tensor

GUIDE_RADIUS_PER_FACTOR = 2.0
"""Window radius, in working pixels, per unit of upsampling factor (working / perception
pixels): a coarse outline is off the photo's edge by up to about one perception pixel (its
quantisation plus the segmenter's own error), and windows of twice that radius reach across."""

GUIDE_EPSILON = 1e-3
"""The guided filter's regulariser (colour values in [0, 1]): edges of the photo whose colour
varies by more than about sqrt(epsilon) = 0.03 across a window steer the mask; flatter windows
(no edge in the photo) keep the bilinearly upsampled outline. It is a contrast, so it does not
change with the upsampling factor (only the radius does)."""

STRIP_ROWS = 512
"""Rows filtered at a time (plus the windows' reach above and below), which bounds the memory."""


def _box(values: np.ndarray, radius: int) -> np.ndarray:
    """The mean of ``values`` over the (2r+1)-square window around every pixel."""
    size = 2 * radius + 1
    return cv2.boxFilter(values, -1, (size, size), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, epsilon: float) -> np.ndarray:
    """The guided filter of He, Sun and Tang ("Guided Image Filtering", Sec. 3.1 for a grey
    guide, Sec. 3.5 for a colour one) of ``source`` (H, W) float32 with ``guide`` (H, W) or
    (H, W, 3) float32: in every (2r+1)-square window k, ``q = a_k . I + b_k`` with ``a_k`` the
    ridge-regression slope of the source on the guide (regulariser ``epsilon``) and ``b_k`` its
    intercept; the output at a pixel averages the models of every window that covers it."""
    guide = guide.astype(np.float32, copy=False)
    source = source.astype(np.float32, copy=False)
    mean_p = _box(source, radius)
    if guide.ndim == 2:
        mean_i = _box(guide, radius)
        cov = _box(guide * source, radius) - mean_i * mean_p
        var = _box(guide * guide, radius) - mean_i * mean_i
        a = cov / (var + epsilon)
        b = mean_p - a * mean_i
        return _box(a, radius) * guide + _box(b, radius)
    mean_i = _box(guide, radius)  # (H, W, 3)
    cov = _box(guide * source[..., None], radius) - mean_i * mean_p[..., None]
    r, g, b_ = (guide[..., c] for c in range(3))
    products = np.stack([r * r, r * g, r * b_, g * g, g * b_, b_ * b_], axis=-1)
    second = _box(products, radius)
    m = mean_i
    vrr = second[..., 0] - m[..., 0] * m[..., 0] + epsilon
    vrg = second[..., 1] - m[..., 0] * m[..., 1]
    vrb = second[..., 2] - m[..., 0] * m[..., 2]
    vgg = second[..., 3] - m[..., 1] * m[..., 1] + epsilon
    vgb = second[..., 4] - m[..., 1] * m[..., 2]
    vbb = second[..., 5] - m[..., 2] * m[..., 2] + epsilon
    # the inverse of the symmetric 3x3 (Sigma + epsilon U) by its adjugate
    irr = vgg * vbb - vgb * vgb
    irg = vgb * vrb - vrg * vbb
    irb = vrg * vgb - vgg * vrb
    igg = vrr * vbb - vrb * vrb
    igb = vrb * vrg - vrr * vgb
    ibb = vrr * vgg - vrg * vrg
    det = vrr * irr + vrg * irg + vrb * irb
    cr, cg, cb = cov[..., 0], cov[..., 1], cov[..., 2]
    slope = np.stack(
        [
            (irr * cr + irg * cg + irb * cb) / det,
            (irg * cr + igg * cg + igb * cb) / det,
            (irb * cr + igb * cg + ibb * cb) / det,
        ],
        axis=-1,
    )
    offset = mean_p - (slope * mean_i).sum(axis=-1)
    return (_box(slope, radius) * guide).sum(axis=-1) + _box(offset, radius)


def upsampling_factor(small: tuple[int, int], large: tuple[int, int]) -> float:
    """Working pixels per perception pixel (the mean of the two axes), for grids (H, W)."""
    return 0.5 * (large[0] / small[0] + large[1] / small[1])


def guide_radius(factor: float) -> int:
    """The guided filter's window radius for an upsampling ``factor`` (at least 1)."""
    return max(1, math.ceil(GUIDE_RADIUS_PER_FACTOR * factor))


def _outline_box(mask: np.ndarray, size: tuple[int, int], reach: int) -> tuple[int, ...] | None:
    """Rows and columns (y0, y1, x0, x1) of ``size`` within ``reach`` pixels of the outline of
    the coarse ``mask`` (its pixels next to a pixel of the other value), or None without one."""
    kernel = np.ones((3, 3), np.uint8)
    small = mask.astype(np.uint8)
    outline = cv2.dilate(small, kernel) != cv2.erode(small, kernel)
    rows, cols = np.nonzero(outline.any(axis=1))[0], np.nonzero(outline.any(axis=0))[0]
    if rows.size == 0:
        return None
    sy, sx = size[0] / mask.shape[0], size[1] / mask.shape[1]
    y0 = max(0, math.floor(rows[0] * sy) - reach)
    y1 = min(size[0], math.ceil((rows[-1] + 1) * sy) + reach)
    x0 = max(0, math.floor(cols[0] * sx) - reach)
    x1 = min(size[1], math.ceil((cols[-1] + 1) * sx) + reach)
    return y0, y1, x0, x1


def upsample_mask(mask: Tensor, guide: Tensor) -> Tensor:
    """A boolean (H, W) mask found in a coarser grid, brought to the size of ``guide`` (a
    (3, H, W) float image in [0, 1], the photo at that size) with its edges on the photo's
    edges: the bilinearly upsampled mask, guided-filtered (module docstring) and thresholded at
    0.5. Away from the coarse outline (beyond the windows' reach) this is the bilinear resize
    thresholded at 0.5, i.e. the coarse mask itself; a mask the filter would empty (a sliver
    of a few coarse pixels with no edge in the photo) is resized by nearest neighbour instead,
    so a selection never vanishes."""
    height, width = int(guide.shape[-2]), int(guide.shape[-1])
    small = mask.numpy().astype(bool)
    soft = cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    out = soft > 0.5
    factor = upsampling_factor(small.shape, (height, width))
    radius = guide_radius(factor)
    reach = 2 * radius + math.ceil(factor) + 1  # a window of models around a window of pixels
    box = _outline_box(small, (height, width), reach)
    if box is None:
        return torch.from_numpy(out)
    y0, y1, x0, x1 = box
    colour = guide.detach().float().cpu().numpy()[:, y0:y1, x0:x1].transpose(1, 2, 0)
    colour = np.ascontiguousarray(colour)
    pad = 2 * radius + 1  # rows a strip's result depends on above and below it
    for top in range(y0, y1, STRIP_ROWS):
        bottom = min(y1, top + STRIP_ROWS)
        lo, hi = max(y0, top - pad), min(y1, bottom + pad)
        piece = soft[lo:hi, x0:x1]
        if piece.min() == piece.max():  # constant: the filter returns it unchanged
            continue
        filtered = guided_filter(colour[lo - y0 : hi - y0], piece, radius, GUIDE_EPSILON)
        out[top:bottom, x0:x1] = filtered[top - lo : bottom - lo] > 0.5
    if not out.any():  # a sliver the photo shows no edge for: keep the coarse mask
        out = cv2.resize(small.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        out = out > 0
    return torch.from_numpy(out)
