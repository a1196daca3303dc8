"""Driving keypoints from images and videos with MediaPipe (an optional extra).

X-Dyna (§3) needs, per driving frame, a COCO-18 body skeleton (Pose ControlNet) and
face landmarks (S-Face ControlNet patches). The release runs separate pose and face detectors;
here both come from MediaPipe's bundled CPU models, tested with ``mediapipe==0.10.21`` and its
"solutions" API (`mediapipe.solutions.pose.Pose`, `mediapipe.solutions.face_mesh.FaceMesh`),
whose models ship inside the wheel for ``model_complexity=1`` only (checked: 0 and 2 make
MediaPipe download the lite / heavy model at run time, which fails offline and is reported
as `InputError`). MediaPipe is optional: it pins ``numpy<2``, so it lives in
the ``pose`` extra, and without it `require_mediapipe` raises `InputError`.

Mapping (pure functions, usable without MediaPipe):

- Pose's 33 landmarks -> COCO-18 (`POSE33_TO_COCO18`): nose 0, shoulders 12/11, elbows 14/13,
  wrists 16/15, hips 24/23, knees 26/25, ankles 28/27, eyes 5/2, ears 8/7 (MediaPipe's
  ``RIGHT_*`` is the subject's right, as COCO's ``r_*``); neck = midpoint of the shoulders,
  with the smaller of their two confidences. A landmark's confidence is MediaPipe's
  ``visibility``, set to 0 below ``min_visibility`` (default 0.5, MediaPipe's own drawing
  threshold).
- FaceMesh's 468 landmarks -> iBUG-68 with `anima.methods.xdyna.face.MEDIAPIPE_TO_IBUG68`;
  FaceMesh gives no per-point confidence, so a detected face has confidence 1, none 0.
- MediaPipe's normalised coordinates measure the image from its corner, so a pixel centre is
  at ``x * W - 0.5`` in the project's convention (pixel ``(row, col)`` centred at
  ``(x=col, y=row)``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np
import torch

from anima.errors import InputError
from anima.methods.xdyna.face import MEDIAPIPE_TO_IBUG68
from anima.methods.xdyna.keypoints import NUM_BODY, NUM_FACE, DrivingKeypoints, PathLike

MEDIAPIPE_VERSION = "0.10.21"
WHERE = "X-Dyna keypoint extraction"
#: MediaPipe Pose landmark of each COCO-18 joint; a pair is averaged (the neck).
POSE33_TO_COCO18: tuple[int | tuple[int, int], ...] = (
    0, (11, 12), 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7,
)  # fmt: skip
POSE_POINTS = 33
MIN_VISIBILITY = 0.5


def require_mediapipe() -> ModuleType:
    """The ``mediapipe`` module, or `InputError` explaining how to install it."""
    try:
        return importlib.import_module("mediapipe")
    except ImportError as err:
        raise InputError(
            "mediapipe is not installed; pip install 'anima[pose]' "
            f"(mediapipe=={MEDIAPIPE_VERSION}, which needs numpy<2) to extract keypoints",
            WHERE,
        ) from err


def normalized_to_pixels(xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """MediaPipe normalised (..., 2) coordinates to pixel coordinates in an image of ``size``."""
    height, width = size
    return np.asarray(xy, dtype=np.float64) * np.array([width, height]) - 0.5


def pose33_to_coco18(
    points: np.ndarray, visibility: np.ndarray, min_visibility: float = MIN_VISIBILITY
) -> tuple[np.ndarray, np.ndarray]:
    """(F, 33, 2) MediaPipe Pose points and (F, 33) visibility -> COCO-18 body (F, 18, 2) and
    confidence (F, 18); confidences below ``min_visibility`` become 0."""
    points = np.asarray(points, dtype=np.float64)
    visibility = np.asarray(visibility, dtype=np.float64)
    if points.shape[-2:] != (POSE_POINTS, 2) or visibility.shape != points.shape[:-1]:
        raise ValueError(f"expected (F, 33, 2) points, (F, 33) visibility, got {points.shape}")
    body = np.zeros((points.shape[0], NUM_BODY, 2))
    confidence = np.zeros((points.shape[0], NUM_BODY))
    for joint, source in enumerate(POSE33_TO_COCO18):
        if isinstance(source, tuple):
            body[:, joint] = points[:, list(source)].mean(axis=1)
            confidence[:, joint] = visibility[:, list(source)].min(axis=1)
        else:
            body[:, joint] = points[:, source]
            confidence[:, joint] = visibility[:, source]
    confidence = np.where(confidence >= min_visibility, np.clip(confidence, 0.0, 1.0), 0.0)
    return body, confidence


def _rgb_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """(F, 3, H, W) float frames in [0, 1] -> (F, H, W, 3) uint8, contiguous."""
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else frames
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 4 or array.shape[1] != 3 or array.shape[0] == 0:
        raise ValueError(f"frames must be (F>0, 3, H, W), got {array.shape}")
    values = np.clip(np.rint(np.nan_to_num(array) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(values.transpose(0, 2, 3, 1))


def extract_keypoints(
    frames: torch.Tensor | np.ndarray,
    face: bool = True,
    static_image_mode: bool | None = None,
    model_complexity: int = 1,
    min_detection_confidence: float = 0.5,
    min_visibility: float = MIN_VISIBILITY,
) -> DrivingKeypoints:
    """COCO-18 body and iBUG-68 face keypoints of the person in ``frames`` (F, 3, H, W).

    ``static_image_mode`` (MediaPipe's: detect in every frame instead of tracking) defaults
    to True for a single frame and False for a video. A frame where nothing is found has
    confidence 0 everywhere. ``face=False`` skips FaceMesh (``face`` is then None).
    """
    mp = require_mediapipe()
    images = _rgb_uint8(frames)
    count, height, width = images.shape[:3]
    size = (height, width)
    static = count == 1 if static_image_mode is None else static_image_mode
    points = np.zeros((count, POSE_POINTS, 2))
    visibility = np.zeros((count, POSE_POINTS))
    try:
        pose_model = mp.solutions.pose.Pose(
            static_image_mode=static,
            model_complexity=model_complexity,
            min_detection_confidence=min_detection_confidence,
        )
    except OSError as err:  # a model MediaPipe tried to download
        raise InputError(
            f"mediapipe could not load its pose model for model_complexity={model_complexity} "
            "(only 1 ships with the wheel)",
            WHERE,
        ) from err
    with pose_model as pose:
        for f in range(count):
            found = pose.process(images[f]).pose_landmarks
            if found is None:
                continue
            marks = found.landmark
            points[f] = [(m.x, m.y) for m in marks]
            visibility[f] = [m.visibility for m in marks]
    body, confidence = pose33_to_coco18(
        normalized_to_pixels(points, size), visibility, min_visibility
    )
    face_points = face_confidence = None
    if face:
        face_points = np.zeros((count, NUM_FACE, 2))
        face_confidence = np.zeros((count, NUM_FACE))
        with mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static,
            max_num_faces=1,
            min_detection_confidence=min_detection_confidence,
        ) as mesh:
            for f in range(count):
                faces = mesh.process(images[f]).multi_face_landmarks
                if not faces:
                    continue
                marks = faces[0].landmark
                xy = np.array([(marks[i].x, marks[i].y) for i in MEDIAPIPE_TO_IBUG68])
                face_points[f] = normalized_to_pixels(xy, size)
                face_confidence[f] = 1.0
    return DrivingKeypoints(body, confidence, size, face_points, face_confidence)


def extract_from_video(path: PathLike, **options: Any) -> tuple[DrivingKeypoints, torch.Tensor]:
    """Read a driving video (`anima.io.read_video`) and extract its keypoints; returns the
    keypoints and the (F, 3, H, W) frames (the S-Face condition crops them)."""
    from anima.io import read_video

    frames, _ = read_video(path, where=WHERE)
    return extract_keypoints(frames, **options), frames


def extract_from_image(path: PathLike, **options: Any) -> DrivingKeypoints:
    """Keypoints of the person in the reference image (one frame)."""
    from anima.io import read_image

    image = read_image(path, where=WHERE)
    return extract_keypoints(image[None], **options)
