"""Pictures the studio shows: the photo with masks and paths, the depth colour map, and the
preview frames with LeviTor's control points drawn on them.

Everything returns uint8 (H, W, 3) RGB arrays (``(F, H, W, 3)`` for frames) at the working size,
so a click on a picture is a pixel of the working image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from anima.control_points import ControlPoints
from anima.io import to_uint8
from anima.palette import colour
from anima.studio.state import ROTATION_AXES, rotation_of, rotation_text

MASK_ALPHA = 0.45


def _scale(size: tuple[int, int]) -> float:
    """Line and marker size unit: 1 at 512 pixels on the shorter side."""
    return max(0.5, min(size) / 512)


def image_rgb(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float image -> (H, W, 3) uint8."""
    return np.ascontiguousarray(to_uint8(image).transpose(1, 2, 0))


def depth_colours(distance: torch.Tensor) -> np.ndarray:
    """A distance map as colours (turbo colour map on inverse distance: near is red, far is
    blue), scaled to the map's own range."""
    inverse = 1.0 / distance.double().clamp_min(1e-6).numpy()
    low, high = float(inverse.min()), float(inverse.max())
    norm = (inverse - low) / (high - low) if high > low else np.zeros_like(inverse)
    grey = np.round(norm * 255).astype(np.uint8)
    return np.ascontiguousarray(cv2.applyColorMap(grey, cv2.COLORMAP_TURBO)[..., ::-1])


def _label(canvas: np.ndarray, text: str, at: tuple[int, int], unit: float) -> None:
    """White text with a dark outline at ``at`` (bottom-left). OpenCV's fonts are ASCII: a
    degree sign in ``text`` is drawn as a small raised ring."""
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.45 * unit, max(1, round(unit))
    pieces = text.split("°")
    for width, fill in ((thick + 2, (0, 0, 0)), (thick, (255, 255, 255))):
        x = at[0]
        for i, piece in enumerate(pieces):
            cv2.putText(canvas, piece, (x, at[1]), font, scale, fill, width, cv2.LINE_AA)
            (w, h), _ = cv2.getTextSize(piece, font, scale, thick)
            x += w
            if i < len(pieces) - 1:
                ring = max(1, round(2 * unit))
                cv2.circle(canvas, (x + ring + 1, at[1] - h + ring), ring, fill, width, cv2.LINE_AA)
                x += 2 * ring + 3


def _rotation_arcs(
    canvas: np.ndarray, at: tuple[int, int], key: dict[str, Any], rgb: Any, unit: float
) -> None:
    """A path point's rotation as arrowed arcs around it, one for each turned axis, sweeping
    its angle (a full ring from 360 degrees on): yaw on a flat ellipse (a turntable), pitch on
    an upright one, roll on a circle; the arrow points the way it turns."""
    radius = max(16, round(30 * unit))
    shapes = {
        "pitch": ((radius * 0.4, radius), 270.0),
        "yaw": ((radius, radius * 0.4), 0.0),
        "roll": ((radius, radius), 270.0),
    }
    width = max(1, round(unit))
    for axis, angle in zip(ROTATION_AXES, rotation_of(key), strict=True):
        if not angle:
            continue
        (a, b), start = shapes[axis]
        sweep = math.copysign(min(abs(angle), 360.0), angle)
        end = start + sweep
        axes = (max(1, round(a)), max(1, round(b)))
        for line, fill in ((width + 2, (0, 0, 0)), (width, rgb)):
            cv2.ellipse(canvas, at, axes, 0.0, start, end, fill, line, cv2.LINE_AA)
        tail = _on_ellipse(at, a, b, end - math.copysign(min(25.0, abs(sweep)), sweep))
        head = _on_ellipse(at, a, b, end)
        for line, fill in ((width + 2, (0, 0, 0)), (width, rgb)):
            cv2.arrowedLine(canvas, tail, head, fill, line, cv2.LINE_AA, 0, 0.9)


def _on_ellipse(at: tuple[int, int], a: float, b: float, degrees: float) -> tuple[int, int]:
    """The pixel at angle ``degrees`` (clockwise in the picture, from +x) on an axis-aligned
    ellipse about ``at`` with half-axes ``a`` (x) and ``b`` (y), as `cv2.ellipse` draws it."""
    rad = math.radians(degrees)
    return _point((at[0] + a * math.cos(rad), at[1] + b * math.sin(rad)))


def _point(xy: Any) -> tuple[int, int]:
    return int(round(float(xy[0]))), int(round(float(xy[1])))


def canvas(
    image: torch.Tensor,
    instance: torch.Tensor | None,
    objects: list[dict[str, Any]],
    active: int | None,
    keyframe: int | None,
    polygon: Sequence[Sequence[float]] = (),
    query_points: dict[str, list[list[float]]] | None = None,
    box_corner: Sequence[float] | None = None,
) -> np.ndarray:
    """The photo with each object's mask tinted in its colour (the active one outlined
    thickly), its selection clicks as crosses, its box, its query points (AnyI2V) as diamonds
    and its path: numbered points joined by arrows, labelled with their depth and rotation (a
    turned point also gets arrowed arcs: `_rotation_arcs`); the point the depth slider edits is
    ringed. ``polygon`` is the outline being drawn: its corners as dots joined by a white line,
    the last one ringed; ``box_corner`` the first corner of a box being drawn, ringed."""
    out = image_rgb(image).astype(np.float32)
    size = out.shape[:2]
    unit = _scale(size)
    ids = [o["id"] for o in objects]
    if instance is not None:
        for object_id in ids:
            mask = (instance == object_id).numpy()
            out[mask] = (1 - MASK_ALPHA) * out[mask] + MASK_ALPHA * np.array(colour(object_id))
    out = np.ascontiguousarray(np.clip(out, 0, 255).astype(np.uint8))
    if instance is not None:
        for object_id in ids:
            mask = (instance == object_id).numpy().astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            width = max(1, round((3 if object_id == active else 1) * unit))
            cv2.drawContours(out, contours, -1, colour(object_id), width, cv2.LINE_AA)
    for obj in objects:
        rgb = colour(obj["id"])
        for x, y in obj.get("points") or []:
            at = _point((x, y))
            arm = max(3, round(6 * unit))
            cv2.drawMarker(out, at, (0, 0, 0), cv2.MARKER_CROSS, arm * 2 + 2, 3)
            cv2.drawMarker(out, at, (255, 255, 255), cv2.MARKER_CROSS, arm * 2, 1)
        box = obj.get("box")
        if box is not None:
            cv2.rectangle(out, _point(box[:2]), _point(box[2:]), rgb, max(1, round(unit)))
        for x, y in (query_points or {}).get(str(obj["id"]), []):
            arm = max(3, round(5 * unit))
            cv2.drawMarker(out, _point((x, y)), (0, 0, 0), cv2.MARKER_DIAMOND, arm * 2 + 2, 3)
            cv2.drawMarker(out, _point((x, y)), rgb, cv2.MARKER_DIAMOND, arm * 2, 2)
        path = obj.get("trajectory", [])
        points = [_point((k["x"], k["y"])) for k in path]
        for a, b in zip(points, points[1:], strict=False):
            cv2.arrowedLine(out, a, b, (0, 0, 0), max(2, round(3 * unit)), cv2.LINE_AA, 0, 0.08)
            cv2.arrowedLine(out, a, b, rgb, max(1, round(2 * unit)), cv2.LINE_AA, 0, 0.08)
        for at, key in zip(points, path, strict=True):
            _rotation_arcs(out, at, key, rgb, unit)
        radius = max(3, round(5 * unit))
        for i, (at, key) in enumerate(zip(points, path, strict=True)):
            cv2.circle(out, at, radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
            cv2.circle(out, at, radius, rgb, -1, cv2.LINE_AA)
            if obj["id"] == active and i == keyframe:
                cv2.circle(out, at, radius + 4, (255, 255, 255), max(1, round(2 * unit)))
            turned = rotation_text(key.get("rotation"))
            text = f"{i + 1}: {key['depth']:.3g}" + (f", {turned}" if turned else "")
            _label(out, text, (at[0] + radius + 3, at[1] - 3), unit)
    _draw_open_polygon(out, polygon, unit)
    if box_corner is not None:
        _draw_open_polygon(out, [box_corner], unit)
    return out


def _draw_open_polygon(out: np.ndarray, polygon: Sequence[Sequence[float]], unit: float) -> None:
    """The corners of a polygon being drawn, joined in order (a dashed closing edge would
    suggest it is closed already: it is not drawn)."""
    if not polygon:
        return
    corners = [_point(c) for c in polygon]
    line = np.array(corners, np.int32)
    if len(corners) > 1:
        cv2.polylines(out, [line], False, (0, 0, 0), max(2, round(3 * unit)), cv2.LINE_AA)
        cv2.polylines(out, [line], False, (255, 255, 255), max(1, round(unit)), cv2.LINE_AA)
    radius = max(2, round(3 * unit))
    for at in corners:
        cv2.circle(out, at, radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
        cv2.circle(out, at, radius, (255, 255, 255), -1, cv2.LINE_AA)
    cv2.circle(out, corners[-1], radius + 4, (255, 255, 255), max(1, round(unit)), cv2.LINE_AA)


def control_points_overlay(frames: torch.Tensor, points: ControlPoints | None) -> np.ndarray:
    """Frames (F, 3, H, W) as uint8 (F, H, W, 3) with LeviTor's K-means control points drawn:
    each visible point a dot in its object's colour, with a trail of its earlier positions."""
    video = np.ascontiguousarray(to_uint8(frames).transpose(0, 2, 3, 1))
    if points is None or points.num_points == 0:
        return video
    unit = _scale(video.shape[1:3])
    radius = max(2, round(4 * unit))
    xy, visible = points.xy.numpy(), points.visible.numpy()
    for f in range(min(len(video), points.num_frames)):
        frame = video[f]
        for n in range(points.num_points):
            rgb = colour(int(points.instance[n]))
            trail = [_point(xy[g, n]) for g in range(f + 1) if visible[g, n]]
            if len(trail) > 1:
                cv2.polylines(frame, [np.array(trail, np.int32)], False, rgb, 1, cv2.LINE_AA)
            if visible[f, n]:
                at = _point(xy[f, n])
                cv2.circle(frame, at, radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
                cv2.circle(frame, at, radius, rgb, -1, cv2.LINE_AA)
    return video
