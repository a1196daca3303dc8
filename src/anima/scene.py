"""Scene: the input image lifted to 3D (DESIGN.md, "One data flow").

A `Scene` holds the image at the working size, a per-pixel distance map, the instance map of the
selected objects (0 = background) and the camera intrinsics. `build_scene` validates everything
a spec points at (the boundary) and picks the perception backends:

- distance: the spec's ``depth`` file, else Depth Anything from ``<weights>/depth-anything``, else
  the ground-plane prior of `anima.perception.depth.ground_plane_distance`;
- masks: a mask file, a box (GrabCut inside it) or points (SAM from ``<weights>/sam``, else
  GrabCut seeded by the points);
- intrinsics: a pinhole camera with the spec's horizontal field of view (default 60 degrees).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from anima.camera import intrinsics_from_fov, pixel_grid, unproject
from anima.errors import InputError
from anima.io import read_depth, read_image, read_mask
from anima.perception.depth import estimate_distance
from anima.perception.segmentation import mask_from_box, mask_from_points
from anima.spec import MotionSpec, SceneObject
from anima.weights import DEPTH_ANYTHING, SAM, Weights

# Automatic masks (GrabCut, SAM) stop short of soft edges; growing them by a few pixels lets a
# moved object take its edge pixels along instead of leaving a ghost outline behind.
SELECTION_GROWTH = 2


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


def object_mask(
    obj: SceneObject, index: int, spec: MotionSpec, image: torch.Tensor, weights: Weights
) -> torch.Tensor:
    """The selection mask of ``spec.objects[index]`` on ``image`` (the working-size image):
    its mask file as is, or GrabCut in its box, or SAM / GrabCut from its points (these two
    grown by `SELECTION_GROWTH` pixels). Problems are `InputError`s naming ``objects[index]``."""
    where = f"objects[{index}]"
    size = (int(image.shape[-2]), int(image.shape[-1]))
    if obj.mask is not None:
        return read_mask(spec.resolve(obj.mask), size=size, where=f"{where}.mask")
    if obj.box is not None:
        x0, y0, x1, y1 = obj.box
        if x1 <= 0 or y1 <= 0 or x0 >= size[1] - 1 or y0 >= size[0] - 1:
            raise InputError(
                f"box {list(obj.box)} lies outside the {size[1]}x{size[0]} image", f"{where}.box"
            )
        return grow_mask(mask_from_box(image, obj.box), SELECTION_GROWTH)
    assert obj.points is not None
    for j, (x, y) in enumerate(obj.points):
        if not (0 <= x <= size[1] - 1 and 0 <= y <= size[0] - 1):
            raise InputError(
                f"point ({x:g}, {y:g}) lies outside the {size[1]}x{size[0]} image",
                f"{where}.points[{j}]",
            )
    found = mask_from_points(
        image, obj.points, sam_dir=weights.component_dir(SAM), allow_pickle=weights.allow_pickle
    )
    return grow_mask(found, SELECTION_GROWTH)


def grow_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate a mask by ``pixels`` (a (2p+1)-square structuring element)."""
    if pixels <= 0:
        return mask
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return torch.from_numpy(cv2.dilate(mask.numpy().astype(np.uint8), kernel) > 0)


def _instance_map(
    masks: list[torch.Tensor], ids: list[int], distance: torch.Tensor | None, size: tuple[int, int]
) -> torch.Tensor:
    """Union of the masks; where masks overlap, the nearer object (mean distance) wins."""
    instance = torch.zeros(size, dtype=torch.int64)
    order = list(range(len(masks)))
    if distance is not None:
        order.sort(key=lambda i: -float(distance[masks[i]].mean()))  # far first, near overwrites
    for i in order:
        instance[masks[i]] = ids[i]
    return instance


def build_scene(spec: MotionSpec, weights: Weights | None = None) -> Scene:
    """Read and check every input the spec names, and lift the image to 3D."""
    weights = weights or Weights()
    size = tuple(spec.size) if spec.size else None
    image = read_image(spec.resolve(spec.image), size=size, where="image")
    size = (int(image.shape[-2]), int(image.shape[-1]))
    intrinsics = intrinsics_from_fov(size, spec.fov)

    masks = [object_mask(obj, i, spec, image, weights) for i, obj in enumerate(spec.objects)]
    for i, mask in enumerate(masks):
        if not bool(mask.any()):
            raise InputError("the selection is empty at the working size", f"objects[{i}]")
    ids = [obj.id for obj in spec.objects]

    depth_anything = weights.component_dir(DEPTH_ANYTHING)
    if spec.depth is not None:
        distance = read_depth(spec.resolve(spec.depth), size=size, where="depth")
        source = "file"
    else:
        distance = estimate_distance(
            image,
            float(intrinsics[0, 0]),
            masks,
            depth_anything_dir=depth_anything,
            allow_pickle=weights.allow_pickle,
        )
        source = "depth-anything" if depth_anything else "ground-plane prior"
    distance = distance.float()

    scene = Scene(
        image,
        distance,
        _instance_map(masks, ids, distance, size),
        intrinsics,
        ids,
        depth_source=source,
    )
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
