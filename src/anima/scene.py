"""Scene: the input image lifted to 3D (docs/architecture.md, "Data flow").

A `Scene` holds the image at the working size, a per-pixel distance map, the instance map of the
selected objects (0 = background) and the camera intrinsics. `build_scene` validates everything
a spec points at (the boundary) and picks the perception backends:

- distance: the spec's ``depth`` file, else Depth Anything from ``<weights>/depth-anything``, else
  the ground-plane prior of `anima.perception.depth.ground_plane_distance`;
- masks: a mask file or a polygon (both exact), a box (GrabCut inside it) or points (SAM from
  ``<weights>/sam``, else GrabCut seeded by the points);
- intrinsics: a pinhole camera with the spec's horizontal field of view (default 60 degrees).

Perception (GrabCut, SAM, the ground-plane prior, Depth Anything) runs at ONE resolution that
depends only on the source image, never on the working size: the image's own size, reduced to at
most `PERCEPTION_MAX_PIXELS` (aspect kept) when larger (`perception_size`). Selection coordinates
(working-size pixels) are scaled into that grid, and the masks and distances found there are
brought to the working size. Masks go by nearest neighbour (as mask files are read) when the
working grid is not finer; into a finer one (a photo of more than `PERCEPTION_MAX_PIXELS`, e.g.
12 megapixels, worked on at its own size) GrabCut and SAM masks are upsampled along the edges of
the working-size photo with a guided filter (`anima.perception.upsampling.upsample_mask`), so
their outlines follow the photo's edges instead of a staircase of perception pixels. Distances
go by a linear resize that never mixes the values of different instances (`resize_distance`):
the working-size instance map decides which instance's distances each pixel takes. Planar
distances do not change with the image's resolution at a fixed field of view, so the same spec
at any ``size`` gives the same scene distances. Mask files and depth files are read at the working
size as they are (they must have the image's aspect ratio, `anima.io.read_mask`). Polygons are
rasterised in both grids (`mask_from_polygon`), in the perception grid for the distances and at
the working size for the instance map, so an exact outline stays exact at any size; exact
selections (mask files, polygons) are not grown by `SELECTION_GROWTH`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from anima.camera import intrinsics_from_fov, pixel_grid, unproject
from anima.errors import InputError
from anima.io import has_transparent_pixels, read_depth, read_image, read_mask
from anima.perception.depth import estimate_distance
from anima.perception.segmentation import mask_from_box, mask_from_points, mask_from_polygon
from anima.perception.upsampling import upsample_mask, upsampling_factor
from anima.spec import MotionSpec, SceneObject
from anima.weights import DEPTH_ANYTHING, SAM, Weights

# Automatic masks (GrabCut, SAM) stop short of soft edges; growing them by a few pixels (of the
# perception grid, so that the ground-plane prior's contact row does not depend on the working
# size) lets a moved object take its edge pixels along instead of leaving a ghost outline behind.
SELECTION_GROWTH = 2

PERCEPTION_MAX_PIXELS = 1024 * 1024
"""Perception runs on the source image at its own size, reduced to at most this many pixels."""

EXIF_ORIENTATION = 0x0112
"""The EXIF orientation tag; values 5 to 8 turn the picture a quarter (W and H swap)."""

_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass
class Scene:
    """The image in 3D at the working size (H, W)."""

    image: torch.Tensor  # (3, H, W) float in [0, 1]
    distance: torch.Tensor  # (H, W) float32, planar distance, > 0
    instance: torch.Tensor  # (H, W) int64, object id or 0
    intrinsics: torch.Tensor  # (3, 3) float64
    object_ids: list[int]
    depth_source: str = "file"

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def mask(self, object_id: int) -> torch.Tensor:
        return self.instance == object_id

    def points(self) -> torch.Tensor:
        """(H, W, 3) camera-space points of every pixel."""
        return unproject(pixel_grid(self.size), self.distance.double(), self.intrinsics)

    def resized(self, size: tuple[int, int]) -> Scene:
        """The same scene seen at another pixel size (H, W), with the same field of view.

        Why (issue "Photos as people take them", part 2): a photo is worked on at its own size
        (12 megapixels, say), but a method generates at its own, often much smaller, size; it
        renders its guidance there (`anima.animation.Animation.resized` maps the motion) rather
        than rendering the full size and shrinking the render.

        - ``image``: area averaging along a side that shrinks (``cv2.INTER_AREA``), bilinear
          along one that grows;
        - ``distance`` and ``instance``: both sampled at the nearest source pixel of each target
          pixel centre (`pixel_mapping`), so that they stay consistent with each other and an
          object's distance never mixes with the background's at its edge; planar distances do
          not depend on the resolution, so the values are kept;
        - ``intrinsics``: mapped exactly by the same pixel mapping, K' = A K (`pixel_mapping`),
          so a 3D point that projects at x projects at (x + 0.5) W' / W - 0.5 (same for y);
        - ``object_ids`` are kept: an object too small for ``size`` keeps its id, its mask is
          then empty.

        The same size returns ``self``."""
        size = (int(size[0]), int(size[1]))
        if size == self.size:
            return self
        if min(size) < 1:
            raise ValueError(f"a scene size must be positive, got {size}")
        rows = nearest_source_pixels(self.size[0], size[0])
        cols = nearest_source_pixels(self.size[1], size[1])
        image = _resize_image(self.image.permute(1, 2, 0).float().numpy(), size)
        return Scene(
            image=torch.from_numpy(image).permute(2, 0, 1).to(self.image.dtype).clamp(0, 1),
            distance=self.distance[rows][:, cols],
            instance=self.instance[rows][:, cols],
            intrinsics=pixel_mapping(self.size, size) @ self.intrinsics.double(),
            object_ids=list(self.object_ids),
            depth_source=self.depth_source,
        )


def pixel_mapping(source: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """(3, 3) float64 A taking homogeneous pixel coordinates of the ``source`` grid (H, W) to
    those of the same view in the ``target`` grid (H', W'): pixel centres at integers, the
    grids' outer edges aligned, so x' = (x + 0.5) W' / W - 0.5 and y' = (y + 0.5) H' / H - 0.5.
    Intrinsics map as K' = A K (fx' = fx W' / W, cx' = (cx + 0.5) W' / W - 0.5, ...)."""
    sx, sy = target[1] / source[1], target[0] / source[0]
    return torch.tensor(
        [[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )


def nearest_source_pixels(source: int, target: int) -> torch.Tensor:
    """(target,) int64: along one side, the source pixel nearest to each target pixel centre
    (`pixel_mapping`: x = (x' + 0.5) source / target - 0.5, rounded half up), in exact integer
    arithmetic."""
    centres = 2 * torch.arange(target, dtype=torch.int64) + 1
    return (centres * source // (2 * target)).clamp(0, source - 1)


def _resize_image(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, C) float32 image at ``size`` (H', W'): area averaging along a side that
    shrinks, bilinear along one that grows (one side at a time when they differ)."""
    height, width = values.shape[:2]

    def method(old: int, new: int) -> int:
        return cv2.INTER_AREA if new <= old else cv2.INTER_LINEAR

    if method(height, size[0]) == method(width, size[1]):
        out = cv2.resize(values, (size[1], size[0]), interpolation=method(width, size[1]))
    else:
        out = cv2.resize(values, (size[1], height), interpolation=method(width, size[1]))
        out = cv2.resize(out, (size[1], size[0]), interpolation=method(height, size[0]))
    return out.reshape(size[0], size[1], values.shape[2])  # cv2 drops a single channel


# ---------------------------------------------------------------------------------------------
# Sizes: source, working and perception grids


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation of an opened image, from its header (1 when absent)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # PIL would decode the whole file looking for a late eXIf chunk
    try:
        return int(img.getexif().get(EXIF_ORIENTATION, 1))
    except (*_IMAGE_ERRORS, TypeError):
        return 1


def source_size(path: Path, where: str = "image") -> tuple[int, int]:
    """(H, W) of an image file as `read_image` gives it (EXIF orientation applied), read from
    the header only. An unreadable file raises `read_image`'s own `InputError`."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = _orientation(img)
    except _IMAGE_ERRORS:
        image = read_image(path, where=where)  # raises the reader's one-line message
        return int(image.shape[-2]), int(image.shape[-1])
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def generation_size(
    size: tuple[int, int], max_side: int | None = None, min_side: int = 8
) -> tuple[int, int]:
    """The size (H, W) a generative method makes frames at for a scene of ``size``: scaled down
    (aspect kept) so that the longest side is at most ``max_side`` (the side the method's
    checkpoint was trained at; None: no cap), rounded down to multiples of 8, each side at least
    ``min_side``. The frames are then resized to the scene size (`anima.stream`)."""
    scale = min(1.0, max_side / max(size)) if max_side else 1.0
    return tuple(max(min_side, int(side * scale) // 8 * 8) for side in size)  # type: ignore[return-value]


def check_generation_size(size: tuple[int, int] | None, min_side: int) -> tuple[int, int] | None:
    """A method's ``size`` option: None, or sides that are multiples of 8 and at least
    ``min_side`` (else ValueError, for a pydantic validator to report)."""
    if size is not None and any(side < min_side or side % 8 for side in size):
        raise ValueError(f"sides must be multiples of 8, at least {min_side}")
    return size


def working_size(spec: MotionSpec) -> tuple[int, int]:
    """The working size (H, W) of a spec: its ``size``, else the image's own size (header)."""
    if spec.size is not None:
        return int(spec.size[0]), int(spec.size[1])
    return source_size(spec.resolve(spec.image))


def perception_size(source: tuple[int, int]) -> tuple[int, int]:
    """The grid perception runs in: ``source`` (H, W), scaled down (aspect kept) to at most
    `PERCEPTION_MAX_PIXELS` pixels when larger."""
    height, width = source
    if height * width <= PERCEPTION_MAX_PIXELS:
        return height, width
    scale = math.sqrt(PERCEPTION_MAX_PIXELS / (height * width))
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


@dataclass(frozen=True)
class Grids:
    """The working grid (spec coordinates) and the perception grid, both (H, W)."""

    working: tuple[int, int]
    perception: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Perception pixels per working pixel, along x and y."""
        return (
            self.perception[1] / self.working[1],
            self.perception[0] / self.working[0],
        )

    @property
    def upsamples(self) -> bool:
        """Whether the working grid is finer than the perception grid along an axis (the masks
        found by perception are then brought to it by `upsample_mask`)."""
        return self.working[0] > self.perception[0] or self.working[1] > self.perception[1]

    def box(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A box (pixel edges: [x0, x1) covers pixels x0..x1-1) in perception coordinates."""
        sx, sy = self.scale
        x0, y0, x1, y1 = box
        return x0 * sx, y0 * sy, x1 * sx, y1 * sy

    def points(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """Clicks (pixel centres) in perception coordinates, kept inside the image."""
        sx, sy = self.scale
        height, width = self.perception
        return [
            (
                min(max((x + 0.5) * sx - 0.5, 0.0), width - 1.0),
                min(max((y + 0.5) * sy - 0.5, 0.0), height - 1.0),
            )
            for x, y in points
        ]

    def polygon(self, vertices: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """Polygon vertices (pixel centres, like clicks) in perception coordinates; they may
        lie outside the image."""
        sx, sy = self.scale
        return [((x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5) for x, y in vertices]


def _perception_image(path: Path, image: torch.Tensor, grids: Grids) -> torch.Tensor:
    """The source image in the perception grid (the working image when the grids agree)."""
    if grids.perception == grids.working:
        return image
    return read_image(path, size=grids.perception, where="image")


# ---------------------------------------------------------------------------------------------
# Selections


def _check_selection(obj: SceneObject, index: int, size: tuple[int, int]) -> None:
    """`InputError` when the box or a point of ``spec.objects[index]`` lies outside the image,
    or when its polygon selects no pixel of it. A polygon whose vertices all lie outside the
    image is fine as long as it covers some of it (an outline around the whole photo)."""
    where = f"objects[{index}]"
    height, width = size
    if obj.box is not None:
        x0, y0, x1, y1 = obj.box
        if x1 <= 0 or y1 <= 0 or x0 >= width - 1 or y0 >= height - 1:
            raise InputError(
                f"box {list(obj.box)} lies outside the {width}x{height} image", f"{where}.box"
            )
    for j, (x, y) in enumerate(obj.points or ()):
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            raise InputError(
                f"point ({x:g}, {y:g}) lies outside the {width}x{height} image",
                f"{where}.points[{j}]",
            )
    if obj.polygon is not None and not bool(mask_from_polygon(size, obj.polygon).any()):
        raise InputError(
            f"the polygon selects no pixel of the {width}x{height} image (it lies outside it "
            "or is thinner than a pixel)",
            f"{where}.polygon",
        )


def check_selections(spec: MotionSpec, size: tuple[int, int]) -> None:
    """Check every object's box, points and polygon against the working ``size`` (H, W), no
    pixels needed: a box lying wholly outside the image, a click outside it or a polygon that
    selects none of its pixels is an `InputError` naming ``objects[i].box``,
    ``objects[i].points[j]`` or ``objects[i].polygon``."""
    for index, obj in enumerate(spec.objects):
        _check_selection(obj, index, size)


def object_mask(
    obj: SceneObject,
    index: int,
    spec: MotionSpec,
    image: torch.Tensor,
    weights: Weights,
    seen: torch.Tensor | None = None,
    grown: bool = True,
) -> torch.Tensor:
    """The selection mask of ``spec.objects[index]`` in the PERCEPTION grid (`perception_size`
    of the source image): its mask file read at that size, its polygon rasterised there (both
    exact, so not grown), or GrabCut in its box, or SAM / GrabCut from its points (these two
    grown by `SELECTION_GROWTH` pixels). ``image`` is the
    working-size image (spec coordinates are in its grid); ``seen`` the source image in the
    perception grid, read from the spec's image when not given. `resize_mask` brings the mask
    to a working size that is not finer; `build_scene` brings an automatic mask to a finer one
    along the photo's edges before growing it (`_working_masks`, with ``grown=False``). Problems
    are `InputError`s naming ``objects[index]``."""
    found = _found_mask(obj, index, spec, image, weights, seen)
    return found if _is_exact(obj) or not grown else grow_mask(found, SELECTION_GROWTH)


def _is_exact(obj: SceneObject) -> bool:
    """Whether the selection is exact (a mask file or a polygon: no perception runs)."""
    return obj.mask is not None or obj.polygon is not None


def _found_mask(
    obj: SceneObject,
    index: int,
    spec: MotionSpec,
    image: torch.Tensor,
    weights: Weights,
    seen: torch.Tensor | None,
) -> torch.Tensor:
    """`object_mask` before automatic masks (box, points) are grown."""
    where = f"objects[{index}]"
    working = (int(image.shape[-2]), int(image.shape[-1]))
    _check_selection(obj, index, working)
    path = spec.resolve(spec.image)
    source = source_size(path)
    grids = Grids(working, perception_size(source))
    if obj.mask is not None:
        return read_mask(
            spec.resolve(obj.mask), grids.perception, f"{where}.mask", image_size=source
        )
    if obj.polygon is not None:
        return mask_from_polygon(grids.perception, grids.polygon(obj.polygon))
    if seen is None:
        seen = _perception_image(path, image, grids)
    if obj.box is not None:
        return mask_from_box(seen, grids.box(obj.box))
    assert obj.points is not None
    return mask_from_points(
        seen,
        grids.points(obj.points),
        sam_dir=weights.component_dir(SAM),
        allow_pickle=weights.allow_pickle,
    )


def grow_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate a mask by ``pixels`` (a (2p+1)-square structuring element)."""
    if pixels <= 0:
        return mask
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return torch.from_numpy(cv2.dilate(mask.numpy().astype(np.uint8), kernel) > 0)


# ---------------------------------------------------------------------------------------------
# From the perception grid to the working grid


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A boolean mask at ``size`` (H, W) by nearest neighbour, exactly as `read_mask` resizes
    a mask file (so a mask saved in the perception grid reads back the same)."""
    if tuple(mask.shape) == tuple(size):
        return mask
    small = Image.fromarray(mask.numpy().astype(np.uint8) * 255)
    resized = small.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(resized) > 127)


def _resize_values(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float32 map at ``size`` (H, W): area averaging when shrinking, else bilinear."""
    shrink = size[0] <= values.shape[0] and size[1] <= values.shape[1]
    method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(values, (size[1], size[0]), interpolation=method)


def _nearest_fill(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``values`` where ``inside``, elsewhere the value of the nearest pixel inside (Euclidean
    distance transform with the nearest pixel's label, OpenCV's ``DIST_LABEL_PIXEL``: the pixels
    inside are labelled 1, 2, ... in raster order)."""
    _, nearest = cv2.distanceTransformWithLabels(
        (~inside).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    return values[inside][nearest - 1]


def resize_distance(
    distance: torch.Tensor, instance: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """A distance map from one grid to another without mixing instances.

    ``instance`` labels ``distance``'s grid, ``target`` the new grid (its shape is the new
    size). Every target pixel of label k gets a linear (or, shrinking, area) resize of the
    distances of label k's pixels only, normalised by their weight, so an object's edge never
    takes the background's distance. Where label k has no nearby source pixel (an edge-aware
    upsampled mask may reach past the perception grid's one, `upsample_mask`), the resize of
    label k's distances extended outward from its nearest pixels is used (`_nearest_fill`), so
    there too the pixel takes its own instance's distance. Planar distances do not depend on
    the resolution at a fixed field of view, so the values themselves are kept."""
    size = (int(target.shape[0]), int(target.shape[1]))
    if tuple(distance.shape) == size:
        return distance.float()
    values = distance.numpy().astype(np.float32)
    out = _resize_values(values, size)
    labels = instance.numpy()
    wanted = target.numpy()
    for label in np.unique(wanted):
        source = labels == label
        inside = source.astype(np.float32)
        weight = _resize_values(inside, size)
        total = _resize_values(values * inside, size)
        near = weight > 1e-3
        take = (wanted == label) & near
        out[take] = total[take] / weight[take]
        lost = (wanted == label) & ~near
        if lost.any() and source.any():
            out[lost] = _resize_values(_nearest_fill(values, source), size)[lost]
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def _far_to_near(masks: list[torch.Tensor], distance: torch.Tensor) -> list[int]:
    """Mask indices ordered by decreasing mean distance (empty masks count as farthest)."""

    def mean(i: int) -> float:
        return float(distance[masks[i]].mean()) if bool(masks[i].any()) else math.inf

    return sorted(range(len(masks)), key=lambda i: -mean(i))


def _instance_map(
    masks: list[torch.Tensor], ids: list[int], order: list[int], size: tuple[int, int]
) -> torch.Tensor:
    """Union of the masks painted in ``order`` (far first), so where masks overlap the nearer
    object wins."""
    instance = torch.zeros(size, dtype=torch.int64)
    for i in order:
        instance[masks[i]] = ids[i]
    return instance


# ---------------------------------------------------------------------------------------------
# Warnings about inputs that do something the user may not expect


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=4)


def _warn_about_inputs(spec: MotionSpec, image_path: Path) -> None:
    """Warn about trajectories that cannot move their object and about a transparent photo."""
    for i, obj in enumerate(spec.objects):
        count = len(obj.trajectory)
        if count == 1:
            _warn(
                f"objects[{i}].trajectory has a single keyframe, so the object stays where it "
                "is: give at least two keyframes"
            )
        elif count > 1 and not obj.moves:
            _warn(
                f"objects[{i}].trajectory: all {count} keyframes are identical, so the object "
                "stays where it is"
            )
    if has_transparent_pixels(image_path):
        _warn(f"the image '{spec.image}' has transparent pixels: they are composited on black")


# ---------------------------------------------------------------------------------------------
# Building the scene


def _working_masks(
    spec: MotionSpec,
    found: list[torch.Tensor],
    image: torch.Tensor,
    grids: Grids,
    source: tuple[int, int],
) -> list[torch.Tensor]:
    """The selection masks at the working size: mask files read at it and polygons rasterised
    at it (exact selections stay exact), the others brought from the perception grid. ``found``
    holds the masks as perception found them (automatic ones not yet grown). Into a finer
    working grid an automatic mask is upsampled along the edges of the working ``image``
    (`upsample_mask`) and then grown by `SELECTION_GROWTH` perception pixels' worth of working
    pixels; otherwise it is grown in the perception grid (as `object_mask` returns it) and
    resized by nearest neighbour (`resize_mask`). ``source`` is the photo's own size."""
    size = grids.working
    growth = round(SELECTION_GROWTH * upsampling_factor(grids.perception, size))
    out = []
    for i, (obj, mask) in enumerate(zip(spec.objects, found, strict=True)):
        if obj.mask is not None:
            where = f"objects[{i}].mask"
            out.append(read_mask(spec.resolve(obj.mask), size, where, image_size=source))
        elif obj.polygon is not None:
            out.append(mask_from_polygon(size, obj.polygon))
        elif grids.upsamples:
            out.append(grow_mask(upsample_mask(mask, image), growth))
        else:
            out.append(resize_mask(grow_mask(mask, SELECTION_GROWTH), size))
        if not bool(out[-1].any()):
            raise InputError("the selection is empty at the working size", f"objects[{i}]")
    return out


def build_scene(spec: MotionSpec, weights: Weights | None = None) -> Scene:
    """Read and check every input the spec names, and lift the image to 3D."""
    weights = weights or Weights()
    path = spec.resolve(spec.image)
    image = read_image(path, size=tuple(spec.size) if spec.size else None, where="image")
    size = (int(image.shape[-2]), int(image.shape[-1]))
    check_selections(spec, size)
    _warn_about_inputs(spec, path)
    intrinsics = intrinsics_from_fov(size, spec.fov)

    photo = source_size(path)
    grids = Grids(size, perception_size(photo))
    seen = _perception_image(path, image, grids)
    raw = [
        object_mask(obj, i, spec, image, weights, seen, grown=False)
        for i, obj in enumerate(spec.objects)
    ]
    found = [
        mask if _is_exact(obj) else grow_mask(mask, SELECTION_GROWTH)
        for obj, mask in zip(spec.objects, raw, strict=True)
    ]
    masks = _working_masks(spec, raw, image, grids, photo)
    ids = [obj.id for obj in spec.objects]

    depth_anything = weights.component_dir(DEPTH_ANYTHING)
    if spec.depth is not None:
        depth_file = spec.resolve(spec.depth)
        distance = read_depth(depth_file, size, "depth", image_size=photo).float()
        instance = _instance_map(masks, ids, _far_to_near(masks, distance), size)
        source = "file"
    else:
        seen_distance = estimate_distance(
            seen,
            float(intrinsics_from_fov(grids.perception, spec.fov)[0, 0]),
            found,
            depth_anything_dir=depth_anything,
            allow_pickle=weights.allow_pickle,
        ).float()
        order = _far_to_near(found, seen_distance)
        instance = _instance_map(masks, ids, order, size)
        seen_instance = _instance_map(found, ids, order, grids.perception)
        distance = resize_distance(seen_distance.cpu(), seen_instance, instance)
        source = "depth-anything" if depth_anything else "ground-plane prior"

    scene = Scene(image, distance, instance, intrinsics, ids, depth_source=source)
    _warn_if_trajectory_off_object(spec, scene)
    return scene


def _warn_if_trajectory_off_object(spec: MotionSpec, scene: Scene) -> None:
    """The first keyframe should sit on the object (the displacement starts there)."""
    height, width = scene.size
    for i, obj in enumerate(spec.objects):
        if not obj.trajectory:
            continue
        first = obj.trajectory[0]
        x, y = round(first.x), round(first.y)
        if not (0 <= x < width and 0 <= y < height):
            continue
        here = float(scene.distance[y, x])
        if not 0.5 < first.depth / here < 2.0:
            warnings.warn(
                f"objects[{i}].trajectory[0].depth is {first.depth:g} but the scene's distance "
                f"at ({x}, {y}) is {here:.3g}: the object will be scaled by the path's "
                "displacement from the first keyframe",
                stacklevel=2,
            )
