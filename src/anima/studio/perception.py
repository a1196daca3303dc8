"""The scene of a draft (depth, masks) from the foundation's perception backends, computed once.

`Perception.scene(spec, cache_dir)` returns exactly the `Scene` that `anima.scene.build_scene`
builds for the spec (so depths shown in the page, the preview and ``anima animate`` agree), but
remembers what it computed: each automatic mask (box, points) is written once to
``cache_dir/masks/`` (SAM or GrabCut only run again when that object's selection changes; mask
files and polygons are exact and cheap, so they are used as they are) and each distance map to
``cache_dir/depth/`` (Depth Anything, or the ground-plane prior which depends on the masks). The
scene is then built from those files, which read back bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from anima.errors import InputError
from anima.io import atomic_path, read_image, write_png
from anima.scene import Scene, build_scene, object_mask
from anima.spec import SELECTIONS, MotionSpec, parse_spec
from anima.weights import DEPTH_ANYTHING, SAM, Weights

SCENES_KEPT = 4
"""Scenes kept in memory (the last few states of a session's perception)."""


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:24]


def _file_key(path: Path) -> list[object]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


class Perception:
    """Cached depth and masks for the studio (see the module docstring)."""

    def __init__(self, weights: Weights | None = None) -> None:
        self.weights = weights or Weights()
        self._scenes: OrderedDict[str, Scene] = OrderedDict()

    def _backend(self, component) -> str | None:
        folder = self.weights.component_dir(component)
        return str(folder) if folder else None

    def scene(self, spec: MotionSpec, cache_dir: Path) -> Scene:
        """The scene of ``spec`` (its image, size, field of view, depth file and object
        selections; trajectories and camera play no part)."""
        image_path = spec.resolve(spec.image)
        if not image_path.is_file():
            raise InputError(f"the photo '{spec.image}' is missing", "image")
        base = {
            "image": _file_key(image_path),
            "size": list(spec.size) if spec.size else None,
            "fov": spec.fov,
        }
        selections = []
        for obj in spec.objects:
            selection = obj.model_dump(mode="json", include=set(SELECTIONS))
            if obj.mask:
                selection["mask"] = _file_key(spec.resolve(obj.mask))
            selections.append({"id": obj.id, **selection})
        depth_file = _file_key(spec.resolve(spec.depth)) if spec.depth else None
        key = _digest(
            [base, selections, depth_file, self._backend(SAM), self._backend(DEPTH_ANYTHING)]
        )
        if key in self._scenes:
            self._scenes.move_to_end(key)
            return self._scenes[key]
        scene = self._build(spec, base, selections, cache_dir)
        self._scenes[key] = scene
        while len(self._scenes) > SCENES_KEPT:
            self._scenes.popitem(last=False)
        return scene

    def _build(
        self, spec: MotionSpec, base: dict, selections: list[dict], cache_dir: Path
    ) -> Scene:
        image = None
        mask_keys: list[str] = []  # what each mask depends on, for the depth cache
        objects: list[dict] = []
        for index, (obj, selection) in enumerate(zip(spec.objects, selections, strict=True)):
            if obj.polygon is not None:  # exact: rasterised by build_scene in both grids
                objects.append({"id": obj.id, "polygon": [list(c) for c in obj.polygon]})
                mask_keys.append(_digest(selection))
                continue
            path = cache_dir / "masks" / f"{_digest([base, selection, self._backend(SAM)])}.png"
            if not path.is_file():
                if image is None:
                    size = tuple(spec.size) if spec.size else None
                    image = read_image(spec.resolve(spec.image), size=size, where="image")
                mask = object_mask(obj, index, spec, image, self.weights)
                if not bool(mask.any()):
                    raise InputError("the selection is empty", f"object {obj.id}")
                write_png(path, mask.numpy().astype(np.uint8) * 255)
            mask_keys.append(str(path))
            objects.append({"id": obj.id, "mask": str(path)})

        data = spec.model_dump(mode="json", exclude_none=True)
        data["image"] = str(spec.resolve(spec.image))
        data["objects"] = objects
        data.pop("camera", None)
        if spec.depth:
            data["depth"] = str(spec.resolve(spec.depth))
        else:
            depth_key = [base, mask_keys, self._backend(DEPTH_ANYTHING)]
            path = cache_dir / "depth" / f"{_digest(depth_key)}.npy"
            if not path.is_file():
                distance = build_scene(parse_spec(data, "studio"), self.weights).distance
                with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, distance.numpy().astype(np.float32))
            data["depth"] = str(path)
        scene = build_scene(parse_spec(data, "studio"), self.weights)
        scene.depth_source = (
            "file"
            if spec.depth
            else "depth-anything"
            if self._backend(DEPTH_ANYTHING)
            else "ground-plane prior"
        )
        return scene

    def depth_at(self, scene: Scene, x: float, y: float) -> float:
        """The scene's distance at pixel (x, y) (rounded to the nearest pixel)."""
        height, width = scene.size
        col = min(max(int(round(x)), 0), width - 1)
        row = min(max(int(round(y)), 0), height - 1)
        return float(scene.distance[row, col])

    def object_at(self, scene: Scene, x: float, y: float) -> int | None:
        """The id of the selected object at pixel (x, y), or None (background)."""
        height, width = scene.size
        col = min(max(int(round(x)), 0), width - 1)
        row = min(max(int(round(y)), 0), height - 1)
        found = int(scene.instance[row, col])
        return found or None


def distance_range(scene: Scene) -> tuple[float, float]:
    """(nearest, farthest) distance in the scene."""
    distance = scene.distance[torch.isfinite(scene.distance)]
    return float(distance.min()), float(distance.max())
