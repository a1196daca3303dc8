"""Driving keypoints from images and videos with MediaPipe (an optional extra).

X-Dyna (§3) needs, per driving frame, a COCO-18 body skeleton with both hands (Pose
ControlNet; the release's skeletons are DWPose's, hands included) and face landmarks (S-Face
ControlNet patches). The release runs separate pose and face detectors; here all three come
from MediaPipe's bundled CPU models, tested with ``mediapipe==0.10.21`` and its "solutions" API
(`mediapipe.solutions.pose.Pose`, `mediapipe.solutions.face_mesh.FaceMesh`,
`mediapipe.solutions.hands.Hands`). Pose's model ships inside the wheel for
``model_complexity=1`` only (checked: 0 and 2 make MediaPipe download the lite / heavy model at
run time, which fails offline and is reported as `InputError`); Hands' full and lite models
both ship with it (checked in the 0.10.21 wheel), and the full one is used. MediaPipe is
optional: it pins ``numpy<2``, so it lives in the ``pose`` extra, and without it
`require_mediapipe` raises `InputError`.

Mapping (pure functions, usable without MediaPipe):

- Pose's 33 landmarks -> COCO-18 (`POSE33_TO_COCO18`): nose 0, shoulders 12/11, elbows 14/13,
  wrists 16/15, hips 24/23, knees 26/25, ankles 28/27, eyes 5/2, ears 8/7 (MediaPipe's
  ``RIGHT_*`` is the subject's right, as COCO's ``r_*``); neck = midpoint of the shoulders,
  with the smaller of their two confidences. A landmark's confidence is MediaPipe's
  ``visibility``, set to 0 below ``min_visibility`` (default 0.5, MediaPipe's own drawing
  threshold).
- FaceMesh's 468 landmarks -> iBUG-68 with `anima.methods.xdyna.face.MEDIAPIPE_TO_IBUG68`;
  FaceMesh gives no per-point confidence, so a detected face has confidence 1, none 0.
- Hands' 21 landmarks are OpenPose's hand layout as they are. Each arm's hand is looked for in
  a square crop around the wrist (`hand_box`: OpenPose's hand-detector box, enlarged), scaled to
  `HAND_CROP` pixels, so the side is the arm's (MediaPipe's handedness label, which assumes a
  mirrored selfie image, is not used) and small hands of full-body frames are found: on 48
  frames of the release's driving videos (every 40th of its four) 42 of the 96 arms got a hand
  this way, against 15 hands with Hands on the whole frames. A found hand whose wrist lies
  farther than half the box from the arm's wrist is the other hand and is dropped. Hands gives
  no per-point confidence either: a detected hand has confidence 1, a missing one 0.
- MediaPipe's normalised coordinates measure the image from its corner, so a pixel centre is
  at ``x * W - 0.5`` in the project's convention (pixel ``(row, col)`` centred at
  ``(x=col, y=row)``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import torch

from anima.errors import InputError
from anima.methods.xdyna.face import MEDIAPIPE_TO_IBUG68
from anima.methods.xdyna.keypoints import (
    NUM_BODY,
    NUM_FACE,
    NUM_HAND,
    DrivingKeypoints,
    PathLike,
)

MEDIAPIPE_VERSION = "0.10.21"
WHERE = "X-Dyna keypoint extraction"
#: MediaPipe Pose landmark of each COCO-18 joint; a pair is averaged (the neck).
POSE33_TO_COCO18: tuple[int | tuple[int, int], ...] = (
    0, (11, 12), 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7,
)  # fmt: skip
POSE_POINTS = 33
MIN_VISIBILITY = 0.5
#: MediaPipe Hands' full model (the wheel ships it and the lite one).
HANDS_MODEL_COMPLEXITY = 1
#: COCO-18 (shoulder, elbow, wrist) of each arm, in the order of `DrivingKeypoints.hands`.
ARMS = ((5, 6, 7), (2, 3, 4))
#: The hand box is OpenPose's (centred 0.33 forearm beyond the wrist, side 1.5 x max(forearm,
#: 0.9 x upper arm)) with this factor instead of 1.5: it finds more hands (42 of the 96 arms
#: of the module doc against 29 at OpenPose's size).
HAND_BOX_SIDE = 3.5
HAND_CROP = 256  # pixels a side of the crop Hands looks at


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


def hand_box(
    shoulder: np.ndarray, elbow: np.ndarray, wrist: np.ndarray
) -> tuple[np.ndarray, float]:
    """Centre (2,) and side of the square crop a hand is looked for in (see `HAND_BOX_SIDE`)."""
    shoulder, elbow, wrist = (np.asarray(p, dtype=np.float64) for p in (shoulder, elbow, wrist))
    forearm = float(np.hypot(*(wrist - elbow)))
    upper = float(np.hypot(*(elbow - shoulder)))
    side = HAND_BOX_SIDE * max(forearm, 0.9 * upper)
    return wrist + 0.33 * (wrist - elbow), side


def _hand_in_box(
    model: Any, image: np.ndarray, centre: np.ndarray, side: float, wrist: np.ndarray
) -> np.ndarray | None:
    """The hand (21, 2) in image pixels that Hands finds in the box nearest ``wrist``; None
    when it finds none within half the box of it. The box's square maps onto the whole crop,
    so a normalised crop point ``n`` is the image point ``corner + n * side``."""
    corner = centre - side / 2
    scale = HAND_CROP / side
    matrix = np.array(
        [[scale, 0.0, -scale * corner[0] - 0.5], [0.0, scale, -scale * corner[1] - 0.5]]
    )
    crop = cv2.warpAffine(image, matrix, (HAND_CROP, HAND_CROP), flags=cv2.INTER_LINEAR)
    best, best_distance = None, side / 2
    for hand in model.process(crop).multi_hand_landmarks or []:
        points = corner + np.array([(m.x, m.y) for m in hand.landmark]) * side
        distance = float(np.hypot(*(points[0] - wrist)))
        if distance <= best_distance:
            best, best_distance = points, distance
    return best


def _pose_model(mp: ModuleType, static: bool, complexity: int, min_confidence: float) -> Any:
    try:
        return mp.solutions.pose.Pose(
            static_image_mode=static,
            model_complexity=complexity,
            min_detection_confidence=min_confidence,
        )
    except OSError as err:  # a model MediaPipe tried to download
        raise InputError(
            f"mediapipe could not load its pose model for model_complexity={complexity} "
            "(only 1 ships with the wheel)",
            WHERE,
        ) from err


def _body(
    mp: ModuleType, images: np.ndarray, static: bool, complexity: int, min_confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe Pose's 33 landmarks (F, 33, 2) in pixels and their visibility (F, 33)."""
    count, height, width = images.shape[:3]
    points = np.zeros((count, POSE_POINTS, 2))
    visibility = np.zeros((count, POSE_POINTS))
    with _pose_model(mp, static, complexity, min_confidence) as pose:
        for f in range(count):
            found = pose.process(images[f]).pose_landmarks
            if found is not None:
                points[f] = [(m.x, m.y) for m in found.landmark]
                visibility[f] = [m.visibility for m in found.landmark]
    return normalized_to_pixels(points, (height, width)), visibility


def _faces(
    mp: ModuleType, images: np.ndarray, static: bool, min_confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """iBUG-68 landmarks (F, 68, 2) from FaceMesh and their confidence (F, 68): 1 or 0."""
    count, height, width = images.shape[:3]
    points = np.zeros((count, NUM_FACE, 2))
    confidence = np.zeros((count, NUM_FACE))
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=static, max_num_faces=1, min_detection_confidence=min_confidence
    ) as mesh:
        for f in range(count):
            faces = mesh.process(images[f]).multi_face_landmarks
            if faces:
                marks = faces[0].landmark
                xy = np.array([(marks[i].x, marks[i].y) for i in MEDIAPIPE_TO_IBUG68])
                points[f] = normalized_to_pixels(xy, (height, width))
                confidence[f] = 1.0
    return points, confidence


def _hands(
    mp: ModuleType,
    images: np.ndarray,
    min_confidence: float,
    body: np.ndarray,
    body_found: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Both hands (F, 2, 21, 2: left, right) and their confidence (F, 2, 21): 1 for a found
    hand, 0 for none. Each arm's box comes from ``body`` (F, 18, 2) in the frames where Pose
    found a body (``body_found`` (F,)), whatever the joints' visibility (Pose places hidden
    joints too); every crop is a separate image to Hands."""
    count = images.shape[0]
    points = np.zeros((count, 2, NUM_HAND, 2))
    confidence = np.zeros((count, 2, NUM_HAND))
    with mp.solutions.hands.Hands(
        static_image_mode=True,
        max_num_hands=2,
        model_complexity=HANDS_MODEL_COMPLEXITY,
        min_detection_confidence=min_confidence,
    ) as model:
        for f in np.flatnonzero(body_found):
            for side, arm in enumerate(ARMS):
                centre, box = hand_box(*body[f, list(arm)])
                if not box > 1.0:  # a degenerate arm: nowhere to look
                    continue
                hand = _hand_in_box(model, images[f], centre, box, body[f, arm[2]])
                if hand is not None:
                    points[f, side] = hand
                    confidence[f, side] = 1.0
    return points, confidence


def extract_keypoints(
    frames: torch.Tensor | np.ndarray,
    face: bool = True,
    static_image_mode: bool | None = None,
    model_complexity: int = 1,
    min_detection_confidence: float = 0.5,
    min_visibility: float = MIN_VISIBILITY,
    hands: bool = True,
) -> DrivingKeypoints:
    """COCO-18 body, iBUG-68 face and 21-point hand keypoints of the person in ``frames``
    (F, 3, H, W).

    ``static_image_mode`` (MediaPipe's: detect in every frame instead of tracking) defaults
    to True for a single frame and False for a video. A frame where nothing is found has
    confidence 0 everywhere. ``face=False`` skips FaceMesh (``face`` is then None),
    ``hands=False`` skips MediaPipe Hands (``hands`` is then None).
    """
    mp = require_mediapipe()
    images = _rgb_uint8(frames)
    size = (int(images.shape[1]), int(images.shape[2]))
    static = images.shape[0] == 1 if static_image_mode is None else static_image_mode
    points, visibility = _body(mp, images, static, model_complexity, min_detection_confidence)
    body, confidence = pose33_to_coco18(points, visibility, min_visibility)
    face_points = face_confidence = hand_points = hand_confidence = None
    if face:
        face_points, face_confidence = _faces(mp, images, static, min_detection_confidence)
    if hands:
        found = (visibility > 0).any(axis=1)
        hand_points, hand_confidence = _hands(mp, images, min_detection_confidence, body, found)
    return DrivingKeypoints(
        body, confidence, size, face_points, face_confidence, hand_points, hand_confidence
    )


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
