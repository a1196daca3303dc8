"""Training clips for the LeviTor ControlNet (LeviTor §3.2).

Layout of a dataset directory ``DATA`` (one sub-directory a clip; hidden entries and loose files
are ignored; clips are taken in name order)::

    DATA/<clip>/frames/0000.png ...    RGB frames (.png, .jpg or .jpeg)
    DATA/<clip>/instance/0000.png ...  8-bit (or 16-bit) instance ids, 0 = background
                                       (grey "L" or palette "P" PNGs, as VOS datasets ship them)
    DATA/<clip>/depth/0000.png ...     optional: DISTANCE maps, 16-bit PNG storing
                                       round(distance * 1000) (`anima.io.read_depth`), or .npy

Frames are matched by file name: ``frames/``, ``instance/`` and (if present) ``depth/`` must hold
the same stems, in natural order (``2.png`` before ``10.png``). All files of a clip must have the
same size. Without ``depth/``, distance comes from `anima.perception.depth.estimate_distance`:
Depth Anything when its directory is given (``--weights DIR`` with ``depth-anything/``), else
the documented weight-free ground-plane prior (objects as upright planes standing on a flat
ground, seen through a pinhole camera with a ``fov``-degree horizontal field of view). It is
computed once per clip, at the training size, and kept in a small in-memory LRU cache.

A sample (`LevitorDataset.load`) is ``num_frames`` consecutive frames from ``start``. Every map
is centre-cropped to the target aspect ratio ``W / H`` and resized to ``size = (H, W)`` (paper:
"center-crop the video to an aspect ratio of 288x512, then resize"): RGB bilinearly with
antialiasing, instance ids and distances by nearest neighbour (ids and depths are never
blended). The control maps are then made by `anima.methods.levitor.controls.control_signal`, the
very function inference uses on rendered masks, with:

- moved objects (Eq. 5's "moved" test): an object present in the first sampled frame whose mask
  centroid, in any later frame where it is visible, lies more than ``move_threshold`` (1 %) of
  the image diagonal away from its first-frame centroid. At inference the moved objects are the
  ones a trajectory moves; this is the measurable counterpart on ground truth;
- the K-means++ seed of the first frame drawn per sample (``points_seed``), so that the points'
  placement varies over training as users' clicks do;
- the control-map convention of the model being trained (``convention``: ``"anima"``, ours, or
  ``"release"``, the LeviTor release's placement and drawing, which ignores the seed).

Validation happens at the boundary: a missing folder, differing frame/mask/depth counts or names,
clips shorter than ``num_frames``, and (for the first frame at construction, for every loaded
frame when sampled) differing sizes raise `InputError` naming the clip directory.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from anima.camera import intrinsics_from_fov
from anima.clips import (
    DEPTH_DIR,
    FRAMES_DIR,
    INSTANCE_DIR,
    crop_resize_nearest,
    crop_resize_rgb,
)
from anima.errors import InputError
from anima.io import FRAME_SUFFIXES, read_depth, read_image
from anima.methods.levitor.controls import control_signal
from anima.perception.depth import estimate_distance

INSTANCE_SUFFIXES = (".png",)
DEPTH_SUFFIXES = (".png", ".npy")
#: An object "moves" when its centroid leaves a disc of this fraction of the image diagonal.
DEFAULT_MOVE_THRESHOLD = 0.01
#: Horizontal field of view (degrees) of the ground-plane depth fallback (the spec's default).
DEFAULT_FOV = 60.0
_INTEGER_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")


def _natural_key(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _listing(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    ]
    return sorted(files, key=lambda p: _natural_key(p.stem))


def _header_size(path: Path, where: str) -> tuple[int, int]:
    """(H, W) of an image file from its header, or of a .npy array."""
    try:
        if path.suffix.lower() == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            return int(shape[0]), int(shape[1])
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, ValueError, IndexError, SyntaxError) as error:
        raise InputError(f"cannot read '{path.name}' ({error})", where) from error


def read_instance(path: Path, where: str) -> Tensor:
    """(H, W) int64 instance ids from a grey or palette PNG (palette index = id)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in _INTEGER_MODES:
                raise InputError(
                    f"instance map '{path.name}' must be a grey or palette PNG of ids, "
                    f"got mode {img.mode}",
                    where,
                )
            ids = np.asarray(img).astype(np.int64)
    except (OSError, ValueError, SyntaxError) as error:
        raise InputError(f"cannot read instance map '{path.name}' ({error})", where) from error
    if ids.ndim != 2:
        raise InputError(f"instance map '{path.name}' is not single-channel", where)
    if (ids < 0).any():
        raise InputError(f"instance map '{path.name}' has negative ids", where)
    return torch.from_numpy(ids)


def moved_objects(instance: Tensor, threshold: float = DEFAULT_MOVE_THRESHOLD) -> tuple[int, ...]:
    """Ids of first-frame objects whose mask centroid moves more than ``threshold`` times the
    image diagonal away from its first-frame position in some frame where it is visible."""
    frames, h, w = instance.shape
    limit = threshold * math.hypot(h, w)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    moved = []
    for obj in torch.unique(instance[0][instance[0] > 0]).tolist():
        masks = (instance == obj).double()
        area = masks.sum(dim=(1, 2))
        visible = area > 0
        cx = (masks * xs).sum(dim=(1, 2))[visible] / area[visible]
        cy = (masks * ys).sum(dim=(1, 2))[visible] / area[visible]
        shift = torch.hypot(cx - cx[0], cy - cy[0])
        if bool((shift > limit).any()):
            moved.append(int(obj))
    return tuple(moved)


@dataclass(frozen=True)
class Clip:
    """One validated clip directory."""

    name: str
    path: Path
    frames: tuple[Path, ...]
    instance: tuple[Path, ...]
    depth: tuple[Path, ...] | None

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class ClipSample:
    """``num_frames`` consecutive frames of a clip at the training size, and their controls.

    Attributes:
        clip: the clip's directory name.
        start: index of the first sampled frame in the clip.
        frames: (F, 3, H, W) float RGB in [0, 1].
        instance: (F, H, W) int64 ids, 0 = background.
        distance: (F, H, W) float32 distance (larger = farther).
        moved_ids: objects that move (see the module docstring).
        points_seed: seed of the first frame's K-means++ (`control_signal`'s ``seed``).
        control: (F, 3, H, W) raw 0..255 control maps from `control_signal`.
    """

    clip: str
    start: int
    frames: Tensor
    instance: Tensor
    distance: Tensor
    moved_ids: tuple[int, ...]
    points_seed: int
    control: Tensor


@dataclass
class LevitorBatch:
    """A batch of samples: ``frames`` and ``control`` are (B, F, 3, H, W); ``moving`` is
    (B, F, H, W) bool, the pixels of the moved objects in each frame (`moving_pixels`)."""

    frames: Tensor
    control: Tensor
    moving: Tensor
    clips: list[str]
    starts: list[int]

    @classmethod
    def collate(cls, samples: Sequence[ClipSample]) -> LevitorBatch:
        return cls(
            frames=torch.stack([s.frames for s in samples]),
            control=torch.stack([s.control for s in samples]),
            moving=torch.stack([moving_pixels(s.instance, s.moved_ids) for s in samples]),
            clips=[s.clip for s in samples],
            starts=[s.start for s in samples],
        )


def moving_pixels(instance: Tensor, moved_ids: Sequence[int]) -> Tensor:
    """(F, H, W) bool: where a moved object is in each frame or was in the first one (the
    region it uncovers), i.e. every pixel whose content a trajectory decides."""
    moving = torch.zeros(instance.shape, dtype=torch.bool)
    for obj in moved_ids:
        moving |= instance == obj
    return moving | moving[:1]


class LevitorDataset:
    """Clips of ``DATA`` (layout in the module docstring), sampled at ``size = (H, W)``.

    Args:
        root: the dataset directory.
        num_frames: frames per sample.
        size: (H, W) of the samples.
        depth_anything_dir: Depth Anything directory for clips without ``depth/`` (else the
            ground-plane prior).
        move_threshold: fraction of the image diagonal that makes an object "moved".
        points_scale: `control_signal`'s multiplier of the number of points.
        variant: `control_signal`'s control variant (the full signal or an ablation).
        convention: `control_signal`'s control-map convention (``"anima"`` or ``"release"``).
        fov: horizontal field of view of the ground-plane fallback, degrees.
        depth_cache_clips: how many clips' estimated distance maps stay in memory.
    """

    def __init__(
        self,
        root: Path | str,
        num_frames: int,
        size: tuple[int, int],
        depth_anything_dir: Path | str | None = None,
        move_threshold: float = DEFAULT_MOVE_THRESHOLD,
        points_scale: float = 1.0,
        fov: float = DEFAULT_FOV,
        depth_cache_clips: int = 8,
        variant: str = "full",
        convention: str = "anima",
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.root = Path(root)
        self.num_frames = int(num_frames)
        self.size = (int(size[0]), int(size[1]))
        self.depth_anything_dir = depth_anything_dir
        self.move_threshold = move_threshold
        self.points_scale = points_scale
        self.variant = variant
        self.convention = convention
        self.fov = fov
        self.depth_cache_clips = depth_cache_clips
        self._depth_cache: OrderedDict[str, Tensor] = OrderedDict()
        if not self.root.is_dir():
            raise InputError("dataset directory not found", str(self.root))
        dirs = sorted(
            (p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: _natural_key(p.name),
        )
        if not dirs:
            raise InputError("no clip directories (each with frames/ and instance/)", str(root))
        self.clips = [self._check_clip(path) for path in dirs]

    def __len__(self) -> int:
        return len(self.clips)

    def _check_clip(self, path: Path) -> Clip:
        where = f"clip {path}"
        for sub in (FRAMES_DIR, INSTANCE_DIR):
            if not (path / sub).is_dir():
                raise InputError(f"missing {sub}/ folder", where)
        frames = _listing(path / FRAMES_DIR, FRAME_SUFFIXES)
        instance = _listing(path / INSTANCE_DIR, INSTANCE_SUFFIXES)
        depth = _listing(path / DEPTH_DIR, DEPTH_SUFFIXES) if (path / DEPTH_DIR).is_dir() else None
        if not frames:
            raise InputError(f"no frames in {FRAMES_DIR}/", where)
        named = [(INSTANCE_DIR, instance)] + ([(DEPTH_DIR, depth)] if depth is not None else [])
        for sub, files in named:
            if len(files) != len(frames):
                raise InputError(f"{len(frames)} frames but {len(files)} files in {sub}/", where)
            for frame, other in zip(frames, files, strict=True):
                if frame.stem != other.stem:
                    raise InputError(
                        f"{FRAMES_DIR}/{frame.name} has no match in {sub}/ (found {other.name})",
                        where,
                    )
        if len(frames) < self.num_frames:
            raise InputError(
                f"{len(frames)} frames, fewer than the {self.num_frames} a sample needs", where
            )
        size = _header_size(frames[0], where)
        for sub, files in named:
            other = _header_size(files[0], where)
            if other != size:
                raise InputError(
                    f"{sub}/{files[0].name} is {other[1]}x{other[0]}, "
                    f"the frames are {size[1]}x{size[0]}",
                    where,
                )
        return Clip(
            path.name,
            path,
            tuple(frames),
            tuple(instance),
            tuple(depth) if depth is not None else None,
        )

    # ------------------------------------------------------------------ reading

    def _read_frames(self, clip: Clip, indices: Sequence[int]) -> Tensor:
        where = f"clip {clip.path}"
        images = [read_image(clip.frames[i], where=where) for i in indices]
        self._check_sizes(clip, [tuple(im.shape[-2:]) for im in images], indices, FRAMES_DIR)
        return crop_resize_rgb(torch.stack(images), self.size)

    def _read_instance(self, clip: Clip, indices: Sequence[int]) -> Tensor:
        where = f"clip {clip.path}"
        maps = [read_instance(clip.instance[i], where) for i in indices]
        self._check_sizes(clip, [tuple(m.shape) for m in maps], indices, INSTANCE_DIR)
        return crop_resize_nearest(torch.stack(maps), self.size)

    def _check_sizes(
        self, clip: Clip, sizes: list[tuple[int, ...]], indices: Sequence[int], sub: str
    ) -> None:
        expected = _header_size(clip.frames[0], f"clip {clip.path}")
        for size, i in zip(sizes, indices, strict=True):
            if tuple(size) != expected:
                name = Path(clip.frames[i]).stem
                raise InputError(
                    f"{sub}/{name} is {size[1]}x{size[0]}, frame 0 is {expected[1]}x{expected[0]}",
                    f"clip {clip.path}",
                )

    def _read_depth(self, clip: Clip, indices: Sequence[int]) -> Tensor:
        assert clip.depth is not None
        where = f"clip {clip.path}"
        maps = [read_depth(clip.depth[i], where=where) for i in indices]
        self._check_sizes(clip, [tuple(m.shape) for m in maps], indices, DEPTH_DIR)
        return crop_resize_nearest(torch.stack(maps), self.size).float()

    def _estimated_depth(self, clip: Clip) -> Tensor:
        """Distance of every frame of the clip at the training size (cached per clip)."""
        cached = self._depth_cache.get(clip.name)
        if cached is not None:
            self._depth_cache.move_to_end(clip.name)
            return cached
        focal = float(intrinsics_from_fov(self.size, self.fov)[0, 0])
        maps = []
        for i in range(len(clip)):
            image = self._read_frames(clip, [i])[0]
            ids = self._read_instance(clip, [i])[0]
            masks = [ids == obj for obj in torch.unique(ids[ids > 0]).tolist()]
            maps.append(
                estimate_distance(
                    image, focal, masks, depth_anything_dir=self.depth_anything_dir
                ).float()
            )
        distance = torch.stack(maps)
        self._depth_cache[clip.name] = distance
        while len(self._depth_cache) > max(0, self.depth_cache_clips):
            self._depth_cache.popitem(last=False)
        return distance

    # ------------------------------------------------------------------ sampling

    def load(self, index: int, start: int, points_seed: int = 0) -> ClipSample:
        """Frames ``start .. start + num_frames - 1`` of clip ``index`` and their controls."""
        clip = self.clips[index]
        if not 0 <= start <= len(clip) - self.num_frames:
            raise ValueError(f"start {start} out of range for clip {clip.name} ({len(clip)})")
        indices = list(range(start, start + self.num_frames))
        frames = self._read_frames(clip, indices)
        instance = self._read_instance(clip, indices)
        if clip.depth is not None:
            distance = self._read_depth(clip, indices)
        else:
            distance = self._estimated_depth(clip)[start : start + self.num_frames]
        moved = moved_objects(instance, self.move_threshold)
        _, control = control_signal(
            instance,
            distance,
            moved,
            size=self.size,
            points_scale=self.points_scale,
            seed=points_seed,
            variant=self.variant,
            convention=self.convention,
        )
        return ClipSample(
            clip.name, start, frames, instance, distance, moved, int(points_seed), control
        )

    def sample(self, generator: torch.Generator) -> ClipSample:
        """A random sample: clip uniformly, then start uniformly, then the K-means++ seed."""
        index = int(torch.randint(len(self.clips), (1,), generator=generator))
        starts = len(self.clips[index]) - self.num_frames + 1
        start = int(torch.randint(starts, (1,), generator=generator))
        points_seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        return self.load(index, start, points_seed)

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> LevitorBatch:
        """``batch_size`` independent samples drawn in order from ``generator``."""
        return LevitorBatch.collate([self.sample(generator) for _ in range(batch_size)])
