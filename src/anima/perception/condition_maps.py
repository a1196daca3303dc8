"""Conditional images drawn from a photo, as ControlNet-style models and AnyI2V take them.

AnyI2V (appendix) animates a conditional image of any modality (depth, canny, HED, normal,
segmentation, sketch); its release has no extractors, users bring the maps. anima draws them
from the scene, weight-free (the depth comes from the scene, i.e. the project's depth backend or
the spec's depth file):

- ``canny``: OpenCV's Canny edges (thresholds 100 / 200, the ControlNet annotator's defaults),
  white on black;
- ``depth``: disparity (1 / distance) min-max normalised, near white and far black, as MiDaS /
  Depth Anything maps that depth ControlNets were trained on;
- ``normal``: surface normals of the scene's 3D points, coloured as ControlNet 1.1's normal maps
  (R = x to the right, G = y up, B = towards the camera, each mapped from [-1, 1] to [0, 1]);
- ``sketch``: weight-free line art, an extended difference of Gaussians (Winnemoeller et al.,
  "XDoG", Computers & Graphics 2012, Eq. 2-3) thresholded to white lines on black;
- ``segmentation``: the scene's objects, each in its colour (`anima.palette`, as the studio
  shows it), on black.

Every map is (3, H, W) float32 in [0, 1] at the scene's size.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch

from anima.palette import colour
from anima.scene import Scene

CANNY_THRESHOLDS = (100, 200)
#: XDoG: the two Gaussians' sigma and ratio, the sharpening p and the threshold (on [0, 1]).
XDOG_SIGMA, XDOG_RATIO, XDOG_SHARPEN, XDOG_THRESHOLD = 1.0, 1.6, 20.0, 0.2


def _grey_uint8(image: torch.Tensor) -> np.ndarray:
    rgb = (image.permute(1, 2, 0).float().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _grey_map(values: np.ndarray) -> torch.Tensor:
    """(H, W) values in [0, 1] as a (3, H, W) float32 map."""
    return torch.from_numpy(np.ascontiguousarray(values, np.float32))[None].expand(3, -1, -1)


def canny_map(scene: Scene) -> torch.Tensor:
    edges = cv2.Canny(_grey_uint8(scene.image), *CANNY_THRESHOLDS)
    return _grey_map(edges / 255.0).clone()


def depth_map(scene: Scene) -> torch.Tensor:
    disparity = 1.0 / scene.distance.double().clamp_min(1e-9)
    low, high = disparity.min(), disparity.max()
    scaled = (disparity - low) / (high - low) if high > low else torch.zeros_like(disparity)
    return _grey_map(scaled.numpy()).clone()


def normal_map(scene: Scene) -> torch.Tensor:
    """Normals from central differences of the scene's camera-space points (one-sided at the
    frame's border), turned to face the camera."""
    points = scene.points()  # (H, W, 3) float64, x right, y down, z forward
    dx = torch.gradient(points, dim=1)[0]
    dy = torch.gradient(points, dim=0)[0]
    normal = torch.linalg.cross(dx, dy, dim=-1)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    facing = torch.where(normal[..., 2:] > 0, -normal, normal)  # towards the camera: z < 0
    colour = torch.stack([facing[..., 0], -facing[..., 1], -facing[..., 2]], dim=0)
    return ((colour + 1) / 2).float().clamp(0, 1)


def sketch_map(scene: Scene) -> torch.Tensor:
    grey = _grey_uint8(scene.image).astype(np.float32) / 255.0
    narrow = cv2.GaussianBlur(grey, (0, 0), XDOG_SIGMA)
    wide = cv2.GaussianBlur(grey, (0, 0), XDOG_SIGMA * XDOG_RATIO)
    sharpened = (1 + XDOG_SHARPEN) * narrow - XDOG_SHARPEN * wide
    lines = (sharpened < XDOG_THRESHOLD).astype(np.float32)  # dark strokes of the photo
    return _grey_map(lines).clone()


def segmentation_map(scene: Scene) -> torch.Tensor:
    out = torch.zeros(3, *scene.size)
    for object_id in scene.object_ids:
        rgb = torch.tensor(colour(object_id), dtype=torch.float32) / 255
        out[:, scene.instance == object_id] = rgb[:, None]
    return out


CONDITION_MAPS: dict[str, Callable[[Scene], torch.Tensor]] = {
    "canny": canny_map,
    "depth": depth_map,
    "normal": normal_map,
    "sketch": sketch_map,
    "segmentation": segmentation_map,
}


def condition_map(kind: str, scene: Scene) -> torch.Tensor:
    """The ``kind`` map of the scene (one of `CONDITION_MAPS`), or the image itself for
    ``as_is`` (it already is a map)."""
    if kind == "as_is":
        return scene.image.float().clone()
    return CONDITION_MAPS[kind](scene)
