"""Training clips for X-Dyna (§3.4): human clips with pose (and face) conditions,
mixed with scene clips whose conditions are blank (harmonic data fusion).

Reads the `anima.world` layout (``DATA/<clip>/frames/*.png`` and, for clips with an articulated
figure, ``keypoints.json`` with COCO-18 keypoints per figure). A clip with a figure is a HUMAN
clip: its condition is the headless skeleton of figure 0 (`pose_map.pose_maps`) and a face
condition; a clip without one is a SCENE clip (water, sky, moving objects) with all-zero
conditions, so the adapter and motion module learn scene dynamics the pose cannot explain.

Toy figures have no 68-point face landmarks; their face condition is the stand-in the toy
world allows, built like the S-Face one (`face.py`, in place, 6 channels) from the head
keypoints: channels 0-2 the frame's pixels in small boxes around the eyes and the nose
(the local patches), channels 3-5 the pixels in the head's box (the global crop).

A sample is a window of ``num_frames`` consecutive frames from a random start and a reference
frame drawn anywhere in the same clip (the paper samples the reference from the video).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from anima.clips import FRAMES_DIR, crop_box, crop_resize_rgb
from anima.errors import InputError
from anima.io import FRAME_SUFFIXES, read_image
from anima.methods.xdyna.keypoints import DrivingKeypoints
from anima.methods.xdyna.pose_map import pose_maps

KEYPOINTS_FILE = "keypoints.json"
NOSE, NECK, R_EYE, L_EYE, R_EAR, L_EAR = 0, 1, 14, 15, 16, 17
HEAD = (NOSE, R_EYE, L_EYE, R_EAR, L_EAR)


@dataclass
class XDynaBatch:
    """Frames (B, F, 3, H, W), references (B, 3, H, W), pose (B, F, 3, H, W) and face
    (B, F, 6, H, W) conditions in [0, 1], and which samples are human clips (B,)."""

    frames: Tensor
    reference: Tensor
    pose: Tensor
    face: Tensor
    human: Tensor


def _box(points: np.ndarray, half: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer pixel box (x0, y0, x1, y1), exclusive ends, around ``points`` padded by ``half``."""
    x0, y0 = np.floor(points.min(axis=0) - half).astype(int)
    x1, y1 = np.ceil(points.max(axis=0) + half).astype(int) + 1
    return max(0, x0), max(0, y0), min(size[1], x1), min(size[0], y1)


def toy_face_condition(frames: Tensor, keypoints: DrivingKeypoints) -> Tensor:
    """The toy stand-in for the S-Face condition (see the module docstring): (F, 6, H, W)."""
    count, _, height, width = frames.shape
    out = torch.zeros(count, 6, height, width, dtype=frames.dtype)
    visible = keypoints.body_visible()
    for f in range(count):
        if not visible[f, NOSE] or not visible[f, NECK]:
            continue
        head = keypoints.body[f, [j for j in HEAD if visible[f, j]]]
        scale = float(np.linalg.norm(keypoints.body[f, NOSE] - keypoints.body[f, NECK]))
        x0, y0, x1, y1 = _box(head, 0.6 * scale, (height, width))
        out[f, 3:, y0:y1, x0:x1] = frames[f, :, y0:y1, x0:x1]
        for joint in (NOSE, R_EYE, L_EYE):
            if visible[f, joint]:
                x0, y0, x1, y1 = _box(keypoints.body[f, joint][None], 0.2 * scale, (height, width))
                out[f, :3, y0:y1, x0:x1] = frames[f, :, y0:y1, x0:x1]
    return out


class XDynaDataset:
    """Human and scene clips of a toy-world directory, kept in memory once read."""

    def __init__(self, root: Path, num_frames: int, size: tuple[int, int]) -> None:
        root = Path(root)
        if not root.is_dir():
            raise InputError("dataset directory not found", str(root))
        self.num_frames, self.size = num_frames, tuple(size)
        self.human: list[Path] = []
        self.scene: list[Path] = []
        for clip in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not (clip / FRAMES_DIR).is_dir():
                continue
            figures = []
            if (clip / KEYPOINTS_FILE).is_file():
                figures = json.loads((clip / KEYPOINTS_FILE).read_text()).get("figures", [])
            (self.human if figures else self.scene).append(clip)
        if not self.human:
            raise InputError(f"no clips with figures ({KEYPOINTS_FILE})", str(root))
        self._frames: dict[Path, Tensor] = {}

    def frames(self, clip: Path) -> Tensor:
        if clip not in self._frames:
            files = sorted(
                f for f in (clip / FRAMES_DIR).iterdir() if f.suffix.lower() in FRAME_SUFFIXES
            )
            if len(files) < self.num_frames:
                raise InputError(
                    f"clip has {len(files)} frames, fewer than --frames {self.num_frames}",
                    str(clip),
                )
            raw = torch.stack([read_image(f, where=str(clip)) for f in files])
            self._frames[clip] = raw
        return self._frames[clip]

    def keypoints(self, clip: Path, source: tuple[int, int]) -> DrivingKeypoints:
        """Figure 0's keypoints mapped through the centre crop and resize of the frames."""
        figure = json.loads((clip / KEYPOINTS_FILE).read_text())["figures"][0]
        body = np.asarray(figure["keypoints"], dtype=np.float64)
        visible = np.asarray(figure["visible"], dtype=np.float64)
        top, left, ch, cw = crop_box(source, self.size)
        scale = np.array([self.size[1] / cw, self.size[0] / ch])
        body = (body - [left - 0.5, top - 0.5]) * scale - 0.5  # pixel centres stay centres
        return DrivingKeypoints(body, visible, self.size)

    def sample(self, generator: torch.Generator, scene_prob: float) -> tuple[Tensor, ...]:
        """One (frames, reference, pose, face, human) sample."""
        use_scene = bool(self.scene) and float(torch.rand((), generator=generator)) < scene_prob
        pool = self.scene if use_scene else self.human
        clip = pool[int(torch.randint(len(pool), (), generator=generator))]
        raw = self.frames(clip)
        start = int(torch.randint(raw.shape[0] - self.num_frames + 1, (), generator=generator))
        ref = int(torch.randint(raw.shape[0], (), generator=generator))
        window = crop_resize_rgb(raw[start : start + self.num_frames], self.size)
        reference = crop_resize_rgb(raw[ref : ref + 1], self.size)[0]
        height, width = self.size
        if use_scene:
            pose = torch.zeros(self.num_frames, 3, height, width)
            face = torch.zeros(self.num_frames, 6, height, width)
        else:
            keypoints = self.keypoints(clip, tuple(raw.shape[-2:]))
            index = list(range(start, start + self.num_frames))
            window_kp = DrivingKeypoints(
                keypoints.body[index], keypoints.body_confidence[index], self.size
            )
            pose = pose_maps(window_kp)
            face = toy_face_condition(window, window_kp)
        return window, reference, pose, face, torch.tensor(not use_scene)

    def sample_batch(
        self, generator: torch.Generator, batch_size: int, scene_prob: float
    ) -> XDynaBatch:
        parts = [self.sample(generator, scene_prob) for _ in range(batch_size)]
        return XDynaBatch(*(torch.stack(column) for column in zip(*parts, strict=True)))
