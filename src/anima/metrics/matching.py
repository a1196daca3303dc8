"""Weight-free appearance matching of objects in a generated video: where, how big, how sure.

Each object's first-frame appearance (its masked bounding-box crop of frame 0) is searched for in
every frame with masked normalised cross-correlation (``cv2.matchTemplate``, ``TM_CCOEFF_NORMED``
on RGB, the zero-mean NCC of Lewis, "Fast normalized cross-correlation", 1995) over a geometric
grid of template scales (default 0.4x..2.5x, 25 steps, ~8 % apart) and, if expected centres are
given, only within ``search_radius`` pixels of the expected centre. Per frame the best (scale,
position) is kept; its score says how well the object is seen (low under an occluder, since the
NCC of a partly covered template falls roughly with the covered fraction), its scale is the
object's image scale relative to frame 0, refined between grid steps by a parabola through the
best score and its two neighbours in log-scale.

Scales at which the template would have fewer than ``min_pixels`` masked pixels are skipped:
tiny templates correlate well with anything (a 5x5 template's chance NCC maximum over a search
window is ~0.7), which would make hidden objects look visible. This bounds the smallest scale
that can be measured for small objects at 64x64 (a 14-px square can be measured down to ~0.45x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

DEFAULT_SCALES = tuple(float(s) for s in np.geomspace(0.4, 2.5, 25))
MIN_PIXELS = 36


@dataclass
class ObjectMatches:
    """Best appearance match per object and frame (K objects, F frames)."""

    score: torch.Tensor  # (K, F) NCC of the best match in [-1, 1]; -1 where nothing was tried
    scale: torch.Tensor  # (K, F) template scale of the best match (nan where nothing was tried)
    centre: torch.Tensor  # (K, F, 2) (x, y) centre of the best match, pixels


def _frames_hwc(video: torch.Tensor) -> np.ndarray:
    if video.dim() != 4 or video.shape[1] != 3:
        raise ValueError(f"expected a video (F, 3, H, W), got shape {tuple(video.shape)}")
    return np.ascontiguousarray(
        video.detach().to(torch.float32).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    )


def _templates(
    frame0: np.ndarray, mask: np.ndarray, scales: tuple[float, ...], min_pixels: int
) -> list[tuple[float, np.ndarray, np.ndarray] | None]:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = frame0[y0:y1, x0:x1]
    crop_mask = mask[y0:y1, x0:x1].astype(np.float32)
    out: list[tuple[float, np.ndarray, np.ndarray] | None] = []
    for s in scales:
        w, h = round((x1 - x0) * s), round((y1 - y0) * s)
        if w < 3 or h < 3:
            out.append(None)
            continue
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        t = cv2.resize(crop, (w, h), interpolation=interp)
        m = cv2.resize(crop_mask, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
        if int(m.sum()) < min_pixels:
            out.append(None)
            continue
        out.append((s, np.ascontiguousarray(t), m.astype(np.float32)))
    return out


def _best_in_region(
    image: np.ndarray,
    template: np.ndarray,
    mask: np.ndarray,
    centre: np.ndarray | None,
    radius: float,
) -> tuple[float, float, float]:
    """Best NCC and the matched template centre (x, y) in frame pixels."""
    height, width = image.shape[:2]
    h, w = template.shape[:2]
    if centre is None:
        x_lo, y_lo, x_hi, y_hi = 0, 0, width - w, height - h
    else:
        cx, cy = float(centre[0]) - (w - 1) / 2, float(centre[1]) - (h - 1) / 2
        x_lo, x_hi = max(0, math.floor(cx - radius)), min(width - w, math.ceil(cx + radius))
        y_lo, y_hi = max(0, math.floor(cy - radius)), min(height - h, math.ceil(cy + radius))
    if x_hi < x_lo or y_hi < y_lo:
        return -1.0, math.nan, math.nan
    region = image[y_lo : y_hi + h, x_lo : x_hi + w]
    result = cv2.matchTemplate(region, template, cv2.TM_CCOEFF_NORMED, mask=mask)
    result = np.where(np.isfinite(result), result, -1.0)
    iy, ix = np.unravel_index(int(np.argmax(result)), result.shape)
    return float(result[iy, ix]), x_lo + ix + (w - 1) / 2, y_lo + iy + (h - 1) / 2


def match_objects(
    video: torch.Tensor,
    masks0: torch.Tensor,
    centres: torch.Tensor | None = None,
    search_radius: float | None = None,
    scales: tuple[float, ...] = DEFAULT_SCALES,
    min_pixels: int = MIN_PIXELS,
) -> ObjectMatches:
    """Match each object's frame-0 appearance in every frame of ``video`` (F, 3, H, W).

    ``masks0`` (K, H, W) bool: the objects' masks in frame 0 (templates are cut from
    ``video[0]``). ``centres`` (K, F, 2): where each object's mask-box centre is expected per
    frame, searched within ``search_radius`` px (default: half the object's larger box side, at
    least 4 px); None searches whole frames. Frame 0 is matched too (score ~1, scale ~1).
    """
    frames = _frames_hwc(video)
    masks = masks0.detach().bool().cpu().numpy()
    k, f = masks.shape[0], frames.shape[0]
    score = np.full((k, f), -1.0)
    scale = np.full((k, f), math.nan)
    centre = np.full((k, f, 2), math.nan)
    log_step = math.log(scales[1] / scales[0]) if len(scales) > 1 else 0.0
    for obj in range(k):
        if not masks[obj].any():
            continue
        templates = _templates(frames[0], masks[obj], scales, min_pixels)
        ys, xs = np.nonzero(masks[obj])
        size = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        radius = max(4.0, size / 2) if search_radius is None else float(search_radius)
        expected = None if centres is None else centres[obj].detach().double().cpu().numpy()
        for t in range(f):
            c = None if expected is None else expected[t]
            if c is not None and not np.isfinite(c).all():
                continue
            found = [
                _best_in_region(frames[t], tpl[1], tpl[2], c, radius) if tpl else None
                for tpl in templates
            ]
            scores = np.array([r[0] if r else -np.inf for r in found])
            best = int(np.argmax(scores))
            if not np.isfinite(scores[best]):
                continue
            log_s = math.log(scales[best])
            if 0 < best < len(scales) - 1 and np.isfinite(scores[[best - 1, best + 1]]).all():
                left, mid, right = scores[best - 1], scores[best], scores[best + 1]
                curvature = left - 2 * mid + right
                if curvature < 0:
                    log_s += float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5)) * log_step
            score[obj, t] = scores[best]
            scale[obj, t] = math.exp(log_s)
            centre[obj, t] = found[best][1:]
    return ObjectMatches(
        torch.from_numpy(score).float(),
        torch.from_numpy(scale).float(),
        torch.from_numpy(centre).float(),
    )
