"""Object masks from a box, from clicked points or from a polygon.

* :func:`mask_from_box`: GrabCut (Rother, Kolmogorov and Blake, "GrabCut: Interactive
  Foreground Extraction using Iterated Graph Cuts", SIGGRAPH 2004) initialised with the box.
* :func:`mask_from_points`: Segment Anything (Kirillov et al., "Segment Anything", ICCV 2023) in
  transformers format when a local checkpoint is given (:class:`SamSegmenter`), else GrabCut
  seeded by the points.
* :func:`mask_from_polygon`: an exact outline drawn by hand, rasterised with OpenCV's
  ``fillPoly`` (no perception, no image needed).

Masks are boolean (H, W) tensors on the CPU. GrabCut's GMM initialisation uses OpenCV's global
RNG; it is reseeded before every call so results are deterministic.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from anima.errors import InputError
from anima.perception.common import check_image, image_to_uint8, load_local, require_model_dir

GRABCUT_ITERATIONS = 5
GRABCUT_SEED = 0
SAM_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")

Box = tuple[float, float, float, float]
Point = tuple[float, float]


# --------------------------------------------------------------------------- GrabCut core


def _run_grabcut(pixels: np.ndarray, labels: np.ndarray, rect: tuple[int, int, int, int] | None):
    """Run GrabCut in place on ``labels``; return the foreground, or None if OpenCV refuses.

    With ``rect`` the labels are initialised from the rectangle (GC_INIT_WITH_RECT), otherwise
    from ``labels`` themselves (GC_INIT_WITH_MASK). OpenCV raises when one of the two colour
    models has too few samples (e.g. a box covering the whole image).
    """
    background = np.zeros((1, 65), np.float64)
    foreground = np.zeros((1, 65), np.float64)
    mode = cv2.GC_INIT_WITH_RECT if rect is not None else cv2.GC_INIT_WITH_MASK
    cv2.setRNGSeed(GRABCUT_SEED)
    try:
        cv2.grabCut(pixels, labels, rect, background, foreground, GRABCUT_ITERATIONS, mode)
    except cv2.error:
        return None
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def _clip_box(box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Clip (x0, y0, x1, y1) to the image; return the covered pixels as (x0, y0, x1, y1) ints.

    Pixel (i, j) covers [i, i+1) x [j, j+1); a box with no area inside the image is an error.
    """
    height, width = size
    if len(box) != 4 or not all(math.isfinite(float(v)) for v in box):
        raise InputError(f"box must be four finite numbers (x0, y0, x1, y1), got {box}", "box")
    x0, y0, x1, y1 = (float(v) for v in box)
    left, top = max(0, math.floor(x0)), max(0, math.floor(y0))
    right, bottom = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    if right <= left or bottom <= top or x1 <= x0 or y1 <= y0:
        raise InputError(f"box {box} has no area inside the {width}x{height} image", "box")
    return left, top, right, bottom


def mask_from_box(image: Tensor, box: Box) -> Tensor:
    """Foreground mask of the object in ``box`` = (x0, y0, x1, y1), pixels, by GrabCut.

    GrabCut (Rother et al., 2004) is initialised with the box as the rectangle (outside: sure
    background, inside: probable foreground) and run for :data:`GRABCUT_ITERATIONS` iterations;
    the result is the (probable) foreground. When GrabCut finds nothing or cannot run (e.g. the
    box covers the whole image, leaving no background samples) the box itself is returned.
    """
    height, width = check_image(image)
    left, top, right, bottom = _clip_box(box, (height, width))
    labels = np.zeros((height, width), np.uint8)
    rect = (left, top, right - left, bottom - top)
    found = _run_grabcut(image_to_uint8(image), labels, rect)
    if found is None or not found.any():
        found = np.zeros((height, width), bool)
        found[top:bottom, left:right] = True
    return torch.from_numpy(found)


# --------------------------------------------------------------------------- polygon


def _clip_half_plane(vertices: list[Point], axis: int, bound: float, below: bool) -> list[Point]:
    """The part of a polygon where coordinate ``axis`` is <= ``bound`` (``below``) or >= it."""

    def inside(p: Point) -> bool:
        return p[axis] <= bound if below else p[axis] >= bound

    def crossing(p: Point, q: Point) -> Point:
        f = (bound - p[axis]) / (q[axis] - p[axis])
        x, y = p[0] + f * (q[0] - p[0]), p[1] + f * (q[1] - p[1])
        return (bound, y) if axis == 0 else (x, bound)

    clipped: list[Point] = []
    for i, current in enumerate(vertices):
        previous = vertices[i - 1]
        if inside(current):
            if not inside(previous):
                clipped.append(crossing(previous, current))
            clipped.append(current)
        elif inside(previous):
            clipped.append(crossing(previous, current))
    return clipped


def _clip_polygon(vertices: list[Point], low: Point, high: Point) -> list[Point]:
    """The polygon clipped to the rectangle ``low`` .. ``high`` (Sutherland and Hodgman,
    "Reentrant Polygon Clipping", CACM 1974): the same region inside the rectangle, with
    coordinates OpenCV's fixed-point rasteriser cannot overflow on."""
    for axis in (0, 1):
        vertices = _clip_half_plane(vertices, axis, low[axis], below=False)
        vertices = _clip_half_plane(vertices, axis, high[axis], below=True)
    return vertices


def mask_from_polygon(size: tuple[int, int], polygon: Sequence[Point]) -> Tensor:
    """Boolean (H, W) mask of a polygon given by its (x, y) pixel vertices (at least 3).

    Coordinates follow the spec's convention for clicks: integer coordinates are pixel
    centres. The vertices are rounded to the nearest pixel centre and OpenCV's ``fillPoly``
    selects every pixel whose centre lies inside the rounded polygon or on its outline (the
    outline's own pixels, drawn 8-connected, belong to it), so an outline traced along an
    object's edge takes the edge pixels with it. Vertices may lie outside the image: the
    polygon is clipped to the image (one pixel beyond each side) first. An empty result is
    returned as is; callers decide whether that is an error.
    """
    height, width = (int(v) for v in size)
    if len(polygon) < 3:
        raise InputError(f"a polygon needs at least 3 vertices, got {len(polygon)}", "polygon")
    vertices = []
    for index, point in enumerate(polygon):
        if len(point) != 2 or not all(math.isfinite(float(v)) for v in point):
            raise InputError(
                f"a vertex is two finite numbers (x, y), got {point}", f"polygon[{index}]"
            )
        vertices.append((float(point[0]), float(point[1])))
    mask = np.zeros((height, width), np.uint8)
    clipped = _clip_polygon(vertices, (-1.0, -1.0), (float(width), float(height)))
    if len(clipped) >= 3:
        corners = np.floor(np.asarray(clipped, np.float64) + 0.5).astype(np.int32)
        cv2.fillPoly(mask, [corners], 1, lineType=cv2.LINE_8)
    return torch.from_numpy(mask.astype(bool))


# --------------------------------------------------------------------------- points


def _check_points(points: Sequence[Point], size: tuple[int, int]) -> list[tuple[float, float]]:
    """Validate (x, y) pixel points: at least one, all finite and inside the image."""
    height, width = size
    if len(points) == 0:
        raise InputError("at least one point is needed", "points")
    checked = []
    for index, point in enumerate(points):
        where = f"points[{index}]"
        if len(point) != 2:
            raise InputError(f"a point is (x, y), got {point}", where)
        x, y = float(point[0]), float(point[1])
        if not (math.isfinite(x) and math.isfinite(y) and 0 <= x < width and 0 <= y < height):
            raise InputError(f"point ({x}, {y}) is outside the {width}x{height} image", where)
        checked.append((x, y))
    return checked


def _point_seeds(
    size: tuple[int, int], points: list[Point], margin: float, radius: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """GrabCut labels seeded by points, and the probable-foreground rectangle (x0, y0, x1, y1).

    Everything is probable background; a rectangle around the points, expanded by
    ``margin * min(H, W)`` pixels (at least 3), is probable foreground; the one-pixel image
    border is sure background; discs of ``radius`` pixels at the points are sure foreground.
    """
    height, width = size
    pad = max(3, round(margin * min(height, width)))
    xs = [int(x) for x, _ in points]
    ys = [int(y) for _, y in points]
    x0, x1 = max(0, min(xs) - pad), min(width, max(xs) + pad + 1)
    y0, y1 = max(0, min(ys) - pad), min(height, max(ys) + pad + 1)
    labels = np.full((height, width), cv2.GC_PR_BGD, np.uint8)
    labels[y0:y1, x0:x1] = cv2.GC_PR_FGD
    labels[[0, -1], :] = cv2.GC_BGD
    labels[:, [0, -1]] = cv2.GC_BGD
    for x, y in points:
        cv2.circle(labels, (int(x), int(y)), radius, int(cv2.GC_FGD), thickness=-1)
    return labels, (x0, y0, x1, y1)


def _components_at(found: np.ndarray, points: list[Point]) -> np.ndarray:
    """Union of the 8-connected components of ``found`` that contain one of the points."""
    count, components = cv2.connectedComponents(found.astype(np.uint8), connectivity=8)
    keep = {int(components[int(y), int(x)]) for x, y in points} - {0}
    if count <= 1 or not keep:
        return found
    return np.isin(components, sorted(keep))


def grabcut_from_points(
    image: Tensor, points: Sequence[Point], margin: float = 0.1, radius: int = 3
) -> Tensor:
    """Foreground mask containing the clicked ``points``, by GrabCut seeded from a label mask.

    Seeds are built by :func:`_point_seeds` and GrabCut (Rother et al., 2004) runs with
    GC_INIT_WITH_MASK; probable labels may flip, so the object can extend past the seeded
    rectangle. The result is restricted to the connected component(s) holding the points
    (which are sure foreground, so always included). If GrabCut cannot run, the seeded
    rectangle is returned.
    """
    height, width = check_image(image)
    checked = _check_points(points, (height, width))
    labels, (x0, y0, x1, y1) = _point_seeds((height, width), checked, margin, radius)
    found = _run_grabcut(image_to_uint8(image), labels, None)
    if found is None:
        found = np.zeros((height, width), bool)
        found[y0:y1, x0:x1] = True
    return torch.from_numpy(_components_at(found, checked))


# --------------------------------------------------------------------------- SAM


class SamSegmenter:
    """Segment Anything (Kirillov et al., 2023) in transformers format from a local directory.

    The directory holds ``config.json``, the weights and the processor config (as written by
    ``SamModel.save_pretrained`` and ``SamProcessor.save_pretrained``). Points are given as
    positive clicks of one object; of SAM's multimask outputs the one with the highest
    predicted IoU is returned.
    """

    def __init__(
        self,
        model_dir: Path | str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        allow_pickle: bool = False,
    ) -> None:
        from transformers import SamModel, SamProcessor

        path = require_model_dir(model_dir, "SAM", SAM_PROCESSOR_FILES, allow_pickle)
        self.processor, model = load_local(
            path, "SAM", SamProcessor, SamModel, allow_pickle=allow_pickle
        )
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()

    @torch.no_grad()
    def __call__(self, image: Tensor, points: Sequence[Point]) -> Tensor:
        """Boolean (H, W) CPU mask of the object under the positive ``points`` (x, y)."""
        height, width = check_image(image)
        checked = _check_points(points, (height, width))
        inputs = self.processor(
            images=image_to_uint8(image),
            input_points=[[[list(p) for p in checked]]],
            input_labels=[[[1] * len(checked)]],
            return_tensors="pt",
        )
        outputs = self.model(
            pixel_values=inputs["pixel_values"].to(self.device, self.dtype),
            input_points=inputs["input_points"].to(self.device, self.dtype),
            input_labels=inputs["input_labels"].to(self.device),
            multimask_output=True,
        )
        masks = self.processor.image_processor.post_process_masks(
            [outputs.pred_masks.float().cpu()[0]],
            inputs["original_sizes"][:1],
            inputs["reshaped_input_sizes"][:1],
        )[0]
        best = int(outputs.iou_scores[0, 0].float().argmax())
        return masks[0, best].bool().contiguous()


@functools.lru_cache(maxsize=1)
def _cached_segmenter(model_dir: str, allow_pickle: bool) -> SamSegmenter:
    return SamSegmenter(model_dir, allow_pickle=allow_pickle)


def mask_from_points(
    image: Tensor,
    points: Sequence[Point],
    sam_dir: Path | str | None = None,
    allow_pickle: bool = False,
) -> Tensor:
    """Boolean (H, W) mask of the object under the clicked (x, y) ``points``.

    With ``sam_dir`` a SAM checkpoint (see :class:`SamSegmenter`, cached between calls) is
    prompted with the points as positive clicks; otherwise :func:`grabcut_from_points`.
    Points outside the image raise :class:`InputError`.
    """
    height, width = check_image(image)
    _check_points(points, (height, width))
    if sam_dir is not None:
        path = require_model_dir(sam_dir, "SAM", SAM_PROCESSOR_FILES, allow_pickle)
        return _cached_segmenter(str(path.resolve()), allow_pickle)(image, points)
    return grabcut_from_points(image, points)
