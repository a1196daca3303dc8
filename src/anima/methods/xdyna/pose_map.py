"""The Pose ControlNet condition: a DWPose-style body skeleton without the head, with hands.

X-Dyna (§3.2 and Fig. 2) controls the body with a ControlNet ``C_P`` initialised
from the SD1.5 OpenPose ControlNet and conditioned on a rendered 2D skeleton per frame. The
head is left out of that skeleton (eyes, ears and the limbs between them): head pose and
expression come from the S-Face ControlNet instead (§3.3, `anima.methods.xdyna.face`), and the
paper notes that face skeletons leak identity cues such as face shape. The release's skeleton
videos (its ``target_no_head_poses``, drawn the DWPose way at 896x512) still keep the nose: the
neck-nose limb with a red disc at the nose on top; they draw no face landmarks and draw both
hands. ``neck_nose=True`` (the default, what the released ControlNet saw) does the same,
``False`` drops the nose and its limb as the paper's text says.

Drawing follows DWPose's OpenPose look, which the OpenPose ControlNet initialisation and the
released ControlNet were trained on (docs/architecture.md, "Conventions": images in [0, 1]):

- black background; the 17 COCO-18 limbs in OpenPose's order, limb ``i`` in OpenPose colour
  ``i`` at 60 % intensity as a filled ellipse along the limb (semi-minor axis `LIMB_WIDTH`);
- joint ``j`` a filled disc of radius `JOINT_RADIUS` in full colour ``j``, over the limbs;
- then each hand (left, right): its 20 bones (`HAND_EDGES`) as lines `HAND_LINE` wide, bone
  ``k`` in the HSV colour of hue ``k / 20`` (`HAND_COLOURS`), then its points as blue discs of
  radius `HAND_JOINT_RADIUS`.

The sizes are DWPose's pixel sizes at `REFERENCE_SIDE` (512 px, the short side of the
release's 896x512 skeleton videos) and scale with the image's short side, as the release's
videos do when it resizes them to the generation size. A point is drawn when its confidence
exceeds the threshold (0.3, DWPose's) and its coordinates are finite; a limb or bone when both
its ends are. Coordinates are drawn with sub-pixel precision (OpenCV fixed point, `SHIFT`
fractional bits) and without anti-aliasing, so every drawn pixel has an exact palette colour.

A ready-made skeleton video (the spec's ``pose.skeleton_video``, e.g. the release's own) is the
condition as it is: `skeleton_video_length` counts its frames before any work and
`skeleton_maps` resizes the frames used to the generation size with OpenCV's area filter,
as the release's ``load_images_from_video_to_pil`` does.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np
import torch

from anima.errors import InputError
from anima.methods.xdyna.keypoints import (
    BODY_THRESHOLD,
    NUM_BODY,
    NUM_HAND,
    DrivingKeypoints,
    PathLike,
)

#: COCO-18 limbs in OpenPose's order (neck-shoulders, arms, neck-hips, legs, then the head).
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
#: OpenPose's 18 RGB colours; limb i and joint j use colour i / j.
COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
#: Head keypoints left out of X-Dyna's pose condition: nose, eyes, ears.
HEAD_JOINTS = frozenset((0, 14, 15, 16, 17))
NOSE = 0
#: Limbs of the headless skeleton (indices into LIMBS, so each keeps its OpenPose colour).
BODY_LIMBS = tuple(
    i for i, (a, b) in enumerate(LIMBS) if a not in HEAD_JOINTS and b not in HEAD_JOINTS
)
BODY_JOINTS = tuple(j for j in range(NUM_BODY) if j not in HEAD_JOINTS)
#: The neck-nose limb (index into LIMBS) the release's headless skeletons keep, with the nose.
NECK_NOSE = LIMBS.index((1, 0))

#: A hand's 20 bones: from the wrist (0) along each finger, base to tip (4 points a finger).
HAND_EDGES = tuple(
    (0 if step == 0 else 4 * finger + step, 4 * finger + step + 1)
    for finger in range(5)
    for step in range(4)
)
#: Bone k's RGB colour: hue k / 20 at full saturation and value (DWPose), rounded to bytes.
HAND_COLOURS = tuple(
    tuple(int(v) for v in np.rint(np.array(colorsys.hsv_to_rgb(k / 20.0, 1.0, 1.0)) * 255))
    for k in range(len(HAND_EDGES))
)
HAND_JOINT_COLOUR = (0, 0, 255)  # blue

REFERENCE_SIDE = 512.0
LIMB_WIDTH = 4.0  # semi-minor axis of a limb ellipse at REFERENCE_SIDE, pixels (DWPose's 4)
JOINT_RADIUS = 4.0  # at REFERENCE_SIDE, pixels (DWPose's)
HAND_LINE = 2.0  # hand bone thickness at REFERENCE_SIDE, pixels (DWPose's)
HAND_JOINT_RADIUS = 4.0  # at REFERENCE_SIDE, pixels (DWPose's)
LIMB_INTENSITY = 0.6
SHIFT = 4  # fractional bits of OpenCV's fixed-point coordinates
_ELLIPSE_STEPS = 48
SKELETON_WHERE = "pose.skeleton_video"
AREA = cv2.INTER_AREA  # the release's filter when it resizes its skeleton videos


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates to OpenCV fixed point with `SHIFT` fractional bits."""
    return np.rint(np.asarray(points) * (1 << SHIFT)).astype(np.int32)


def _limb_polygon(a: np.ndarray, b: np.ndarray, width: float) -> np.ndarray:
    """Outline (N, 2) of the ellipse with its major axis from ``a`` to ``b``."""
    centre = (a + b) / 2
    half = max(float(np.hypot(*(b - a))) / 2, width)
    angle = float(np.arctan2(b[1] - a[1], b[0] - a[0]))
    t = np.linspace(0, 2 * np.pi, _ELLIPSE_STEPS, endpoint=False)
    local = np.stack([half * np.cos(t), width * np.sin(t)], axis=1)
    c, s = np.cos(angle), np.sin(angle)
    return local @ np.array([[c, s], [-s, c]]) + centre


def line_scale(size: tuple[int, int]) -> float:
    """Factor applied to the DWPose sizes (`LIMB_WIDTH`, ...) for an image of ``size`` (H, W)."""
    return min(size) / REFERENCE_SIDE


def _disc(canvas: np.ndarray, point: np.ndarray, radius: float, colour: tuple[int, ...]) -> None:
    centre = tuple(int(v) for v in _fixed(point))
    cv2.circle(canvas, centre, int(round(radius * (1 << SHIFT))), colour, -1, cv2.LINE_8, SHIFT)


def _draw_body(
    canvas: np.ndarray, points: np.ndarray, ok: np.ndarray, head: bool, neck_nose: bool
) -> None:
    """The body limbs at 60 % and then its joints, on ``canvas`` (H, W, 3) uint8 RGB."""
    scale = line_scale(canvas.shape[:2])
    limb_width = max(LIMB_WIDTH * scale, 1.0)
    radius = max(JOINT_RADIUS * scale, 1.0)
    nose = neck_nose and not head
    limbs = range(len(LIMBS)) if head else BODY_LIMBS + ((NECK_NOSE,) if nose else ())
    joints = range(NUM_BODY) if head else BODY_JOINTS + ((NOSE,) if nose else ())
    for i in limbs:
        a, b = LIMBS[i]
        if ok[a] and ok[b]:
            colour = tuple(int(c * LIMB_INTENSITY) for c in COLOURS[i])
            polygon = _fixed(_limb_polygon(points[a], points[b], limb_width))
            cv2.fillConvexPoly(canvas, polygon, colour, lineType=cv2.LINE_8, shift=SHIFT)
    for j in joints:
        if ok[j]:
            _disc(canvas, points[j], radius, COLOURS[j])


def _draw_hand(canvas: np.ndarray, points: np.ndarray, ok: np.ndarray) -> None:
    """One hand's bones (`HAND_COLOURS`) and then its points (blue) on ``canvas``."""
    scale = line_scale(canvas.shape[:2])
    thickness = max(int(round(HAND_LINE * scale)), 1)
    radius = max(HAND_JOINT_RADIUS * scale, 1.0)
    fixed = _fixed(points)
    for k, (a, b) in enumerate(HAND_EDGES):
        if ok[a] and ok[b]:
            start, end = tuple(int(v) for v in fixed[a]), tuple(int(v) for v in fixed[b])
            cv2.line(canvas, start, end, HAND_COLOURS[k], thickness, cv2.LINE_8, SHIFT)
    for j in range(NUM_HAND):
        if ok[j]:
            _disc(canvas, points[j], radius, HAND_JOINT_COLOUR)


def draw_skeleton(
    points: np.ndarray,
    visible: np.ndarray,
    size: tuple[int, int],
    head: bool = False,
    neck_nose: bool = True,
    hands: np.ndarray | None = None,
    hands_visible: np.ndarray | None = None,
) -> np.ndarray:
    """One frame's skeleton as an (H, W, 3) uint8 RGB image (see the module doc).

    ``points`` (18, 2) are COCO-18 pixel coordinates, ``visible`` (18,) bool; ``hands``
    (2, 21, 2) with ``hands_visible`` (2, 21) are drawn after the body. ``head=True`` draws
    the full OpenPose body (nose, eyes, ears too), for comparison; X-Dyna uses False, with the
    neck-nose limb and the nose unless ``neck_nose`` is False.
    """
    canvas = np.zeros((size[0], size[1], 3), dtype=np.uint8)
    ok = np.asarray(visible, dtype=bool) & np.isfinite(points).all(axis=-1)
    _draw_body(canvas, points, ok, head, neck_nose)
    if hands is not None and hands_visible is not None:
        hands_ok = np.asarray(hands_visible, dtype=bool) & np.isfinite(hands).all(axis=-1)
        for side in range(hands.shape[0]):
            _draw_hand(canvas, hands[side], hands_ok[side])
    return canvas


def pose_maps(
    keypoints: DrivingKeypoints,
    threshold: float = BODY_THRESHOLD,
    head: bool = False,
    neck_nose: bool = True,
    hands: bool = True,
) -> torch.Tensor:
    """The Pose ControlNet condition of every frame: (F, 3, H, W) float32 in [0, 1].

    Drawn in ``keypoints.size``; resize the keypoints first (`DrivingKeypoints.resized`) to
    render at another size. ``threshold`` applies to the body and the hands (drawn unless
    ``hands`` is False or the keypoints have none). A frame with no visible point is blank
    (as X-Dyna's harmonic data fusion feeds for clips without a person, paper §3.4).
    """
    visible = keypoints.body_visible(threshold)
    with_hands = hands and keypoints.hands is not None
    hands_visible = keypoints.hands_visible(threshold)
    frames = [
        draw_skeleton(
            keypoints.body[f],
            visible[f],
            keypoints.size,
            head,
            neck_nose,
            keypoints.hands[f] if with_hands and keypoints.hands is not None else None,
            hands_visible[f] if with_hands else None,
        )
        for f in range(keypoints.num_frames)
    ]
    stacked = np.stack(frames).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(stacked))


# --------------------------------------------------------------------------- skeleton videos


def _count_frames(path: Path) -> int:
    """Frames of a video file without keeping them (a folder or GIF: see the caller)."""
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() == ".gif":
        try:
            with Image.open(path) as image:
                return int(getattr(image, "n_frames", 1))
        except (OSError, UnidentifiedImageError) as err:
            raise InputError(f"cannot read video '{path}': not a GIF", SKELETON_WHERE) from err
    import imageio_ffmpeg

    try:
        return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
    except (OSError, RuntimeError, ValueError) as err:
        raise InputError(f"cannot read video '{path}': cannot decode", SKELETON_WHERE) from err


def skeleton_video_length(path: PathLike) -> int:
    """Frames of a skeleton video (an mp4 or other ffmpeg video, a GIF, or a folder of PNG /
    JPEG frames, as `anima.io.read_video` reads them), counted without decoding it into
    memory; `InputError` when it is missing, unreadable or empty."""
    from anima.io import FRAME_SUFFIXES

    path = Path(path)
    if path.is_dir():
        count = sum(1 for f in path.iterdir() if f.is_file() and f.suffix.lower() in FRAME_SUFFIXES)
    elif path.is_file():
        count = _count_frames(path)
    else:
        raise InputError(f"file not found: {path}", SKELETON_WHERE)
    if count < 1:
        raise InputError(f"cannot read video '{path}': no frames", SKELETON_WHERE)
    return count


def skeleton_maps(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Skeleton video frames (F, 3, H, W) in [0, 1] as the Pose ControlNet condition at
    ``size`` (H, W): each frame's bytes resized with OpenCV's area filter (the release's
    ``cv2.INTER_AREA``), nothing else changed. Returns (F, 3, h, w) float32 in [0, 1]."""
    images = np.clip(np.rint(frames.detach().cpu().numpy() * 255.0), 0, 255).astype(np.uint8)
    resized = [
        cv2.resize(image.transpose(1, 2, 0).copy(), (size[1], size[0]), interpolation=AREA)
        for image in images
    ]
    stacked = np.stack(resized).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(stacked))
