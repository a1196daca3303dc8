"""Animate124's reference view from a MotionSpec: the object, its mask and depth, squared.

(Animate124 §3.2, Eq. 4's reference RGB, mask and depth; README, "Animate124",
preprocessing; docs/architecture.md, "Data flow".) The release cuts the foreground out with
carvekit, estimates depth with MiDaS and pads the object to a square; here the spec's scene
(`anima.scene.build_scene`) gives all three:

- **the object**: the selection of the spec's object (``object_id``, default the first): its
  mask at the working size from a mask file, polygon, box or points, as every method reads it;
- **depth**: ``scene.distance``, i.e. the spec's depth file, else Depth Anything, else the
  ground-plane prior. Eq. 4 compares it with the rendered depth by Pearson correlation inside
  the mask, so its scale (and offset) does not matter; with the ground-plane prior (no depth
  model) an upright object is nearly flat and the depth term says little;
- **framing**: a square crop centred on the mask's bounding box whose side is the box's longer
  side / ``object_fraction`` (0.8: the release's border ratio 0.2, the object spanning 80 %
  of the square), padded where it leaves the photo (white
  image, empty mask, the object's median depth), then resized to the reference render size
  (area averaging down, bilinear up; the mask bilinear, so soft at its edges). The image is
  composited on white by the mask (the release's RGBA on a white background).

Relative to the reference camera (radius 1.8, vertical fov 40, looking at the origin): the
square image spans 2 x 1.8 x tan 20 deg = 1.31 units at the origin's depth, so the object's
longer side is ``object_fraction`` x 1.31 = 1.05 units there, centred in the box [-1, 1]^3
(half-extent 0.52 < 1, leaving room to move). The object's median distance in the scene
(`Framing.distance`) corresponds to the camera radius 1.8: the spec's camera path is scaled by
1.8 / distance (`anima.methods.animate124.spec_cameras`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from anima.errors import InputError
from anima.methods.animate124.stages import Reference
from anima.scene import Scene
from anima.spec import MotionSpec, SceneObject
from anima.spec import chosen_object as pick_object

#: The share of the square reference image the object's longer side spans (the release's
#: preprocessing: border ratio 0.2, the object at 80 % of the side).
OBJECT_FRACTION = 0.8


@dataclass(frozen=True)
class Framing:
    """Where the square reference came from in the scene: the object, the square's top-left
    corner and side in working-size pixels, the object's median distance (scene units) and the
    scene's horizontal focal length (pixels)."""

    object_id: int
    top: float
    left: float
    side: float
    distance: float
    focal: float


def chosen_object(spec: MotionSpec, object_id: int | None = None) -> SceneObject:
    """The object Animate124 lifts (`anima.spec.chosen_object`: ``object_id``'s, else the
    first that moves, else the first); an `InputError` when the spec selects none or has no
    object of that id."""
    obj = pick_object(spec, object_id, "options.object_id")
    if obj is None:
        raise InputError(
            "Animate124 lifts one object: select it in the spec (objects[0] with a mask, "
            "polygon, box or points)",
            "objects",
        )
    return obj


def _crop(values: Tensor, top: int, left: int, side: int, fill: float) -> Tensor:
    """values (C, H, W) cropped to the square (top, left, side), ``fill`` outside."""
    _channels, height, width = values.shape
    pad = (max(0, -left), max(0, left + side - width), max(0, -top), max(0, top + side - height))
    padded = F.pad(values[None], pad, value=fill)[0]
    top, left = top + pad[2], left + pad[0]
    return padded[:, top : top + side, left : left + side]


def _resize(values: Tensor, size: int, mode: str) -> Tensor:
    if values.shape[-1] == size:
        return values
    if mode == "area" and values.shape[-1] < size:
        mode = "bilinear"
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(values[None], size=(size, size), mode=mode, **kwargs)[0]


def reference_view(
    scene: Scene,
    object_id: int,
    size: int,
    object_fraction: float = OBJECT_FRACTION,
) -> tuple[Reference, Framing]:
    """The `Reference` (``size`` x ``size``) of object ``object_id`` of ``scene`` and its
    `Framing` (module docstring)."""
    mask = scene.mask(object_id)
    if not bool(mask.any()):
        raise InputError("the object's selection is empty", f"objects (id {object_id})")
    rows = mask.any(1).nonzero().squeeze(1)
    cols = mask.any(0).nonzero().squeeze(1)
    y0, y1 = float(rows[0]), float(rows[-1]) + 1.0
    x0, x1 = float(cols[0]), float(cols[-1]) + 1.0
    side = max(1, math.ceil(max(y1 - y0, x1 - x0) / object_fraction))
    top = round((y0 + y1) / 2.0 - side / 2.0)
    left = round((x0 + x1) / 2.0 - side / 2.0)
    distance = float(scene.distance[mask].median())

    soft = mask.float()[None]
    image = scene.image.float() * soft + (1.0 - soft)  # on white
    image = _crop(image, top, left, side, 1.0)
    crop_mask = _crop(soft, top, left, side, 0.0)
    depth = _crop(scene.distance.float()[None], top, left, side, distance)
    reference = Reference(
        _resize(image, size, "area").clamp(0, 1),
        _resize(crop_mask, size, "bilinear")[0].clamp(0, 1),
        _resize(depth, size, "bilinear")[0],
    )
    focal = float(scene.intrinsics[0, 0])
    return reference, Framing(object_id, float(top), float(left), float(side), distance, focal)


def preprocess(
    spec: MotionSpec,
    scene: Scene,
    size: int,
    object_id: int | None = None,
    object_fraction: float = OBJECT_FRACTION,
) -> tuple[Reference, Framing]:
    """The reference view of ``spec``'s object (``object_id``, default the first) from its
    ``scene`` (`anima.scene.build_scene`) at ``size`` pixels."""
    obj = chosen_object(spec, object_id)
    return reference_view(scene, obj.id, size, object_fraction)


__all__ = [
    "OBJECT_FRACTION",
    "Framing",
    "chosen_object",
    "preprocess",
    "reference_view",
]
