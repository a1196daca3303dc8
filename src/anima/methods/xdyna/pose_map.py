"""The Pose ControlNet condition: an OpenPose-style body skeleton WITHOUT the head.

X-Dyna (§3.2 and Fig. 2) controls the body with a ControlNet ``C_P`` initialised
from the SD1.5 OpenPose ControlNet and conditioned on a rendered 2D skeleton per frame. The
head is left out of that skeleton (nose, eyes, ears and the limbs between them): head pose and
expression come from the S-Face ControlNet instead (§3.3, `anima.methods.xdyna.face`), and the
paper notes that face skeletons leak identity cues such as face shape. The release's pose
videos (its ``target_no_head_poses``) still draw the neck-nose limb, without the nose's disc;
``neck_nose=True`` (the default, matching what the released ControlNet saw) does the same,
``False`` drops it as the paper's text says.

Rendering follows the look the OpenPose ControlNet was trained on, so its initialisation is
useful: black background; the 17 COCO-18 limbs in OpenPose's order, limb ``i`` drawn in
OpenPose colour ``i`` at 60 % intensity as a filled ellipse along the limb (semi-minor axis
`LIMB_WIDTH`); joint ``j`` a filled disc of radius `JOINT_RADIUS` in full colour ``j``, drawn
over the limbs. Both sizes are given at `REFERENCE_SIDE` (512 px, the short side of X-Dyna's
896x512 frames) and scale with the image's short side. Coordinates are drawn with sub-pixel
precision (OpenCV fixed point, `SHIFT` fractional bits), no anti-aliasing, so every drawn
pixel has an exact palette colour. A joint that is not visible (confidence at or below the
threshold, or non-finite) is skipped, and so is every limb that touches it.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from anima.methods.xdyna.keypoints import BODY_THRESHOLD, NUM_BODY, DrivingKeypoints

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
#: Limbs of the headless skeleton (indices into LIMBS, so each keeps its OpenPose colour).
BODY_LIMBS = tuple(
    i for i, (a, b) in enumerate(LIMBS) if a not in HEAD_JOINTS and b not in HEAD_JOINTS
)
BODY_JOINTS = tuple(j for j in range(NUM_BODY) if j not in HEAD_JOINTS)
#: The neck-nose limb (index into LIMBS) the release's headless skeletons keep.
NECK_NOSE = LIMBS.index((1, 0))

REFERENCE_SIDE = 512.0
LIMB_WIDTH = 4.0  # semi-minor axis of a limb ellipse at REFERENCE_SIDE, pixels
JOINT_RADIUS = 4.0  # at REFERENCE_SIDE, pixels
LIMB_INTENSITY = 0.6
SHIFT = 4  # fractional bits of OpenCV's fixed-point coordinates
_ELLIPSE_STEPS = 48


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates to OpenCV fixed point with `SHIFT` fractional bits."""
    return np.rint(points * (1 << SHIFT)).astype(np.int32)


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
    """Factor applied to `LIMB_WIDTH` and `JOINT_RADIUS` for an image of ``size`` (H, W)."""
    return min(size) / REFERENCE_SIDE


def draw_skeleton(
    points: np.ndarray,
    visible: np.ndarray,
    size: tuple[int, int],
    head: bool = False,
    neck_nose: bool = True,
) -> np.ndarray:
    """One frame's skeleton as an (H, W, 3) uint8 RGB image (see the module doc).

    ``points`` (18, 2) are COCO-18 pixel coordinates, ``visible`` (18,) bool. ``head=True``
    draws the full OpenPose skeleton (nose, eyes, ears too), for comparison; X-Dyna uses False,
    with the neck-nose limb unless ``neck_nose`` is False.
    """
    height, width = size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    ok = np.asarray(visible, dtype=bool) & np.isfinite(points).all(axis=-1)
    scale = line_scale(size)
    limb_width = max(LIMB_WIDTH * scale, 1.0)
    radius = max(JOINT_RADIUS * scale, 1.0)
    limbs = range(len(LIMBS)) if head else BODY_LIMBS + ((NECK_NOSE,) if neck_nose else ())
    joints = range(NUM_BODY) if head else BODY_JOINTS
    for i in limbs:
        a, b = LIMBS[i]
        if not (ok[a] and ok[b]):
            continue
        colour = tuple(int(c * LIMB_INTENSITY) for c in COLOURS[i])
        polygon = _fixed(_limb_polygon(points[a], points[b], limb_width))
        cv2.fillConvexPoly(canvas, polygon, colour, lineType=cv2.LINE_8, shift=SHIFT)
    for j in joints:
        if not ok[j]:
            continue
        centre = tuple(int(v) for v in _fixed(points[j]))
        cv2.circle(
            canvas, centre, int(round(radius * (1 << SHIFT))), COLOURS[j], -1, cv2.LINE_8, SHIFT
        )
    return canvas


def pose_maps(
    keypoints: DrivingKeypoints,
    threshold: float = BODY_THRESHOLD,
    head: bool = False,
    neck_nose: bool = True,
) -> torch.Tensor:
    """The Pose ControlNet condition of every frame: (F, 3, H, W) float32 in [0, 1].

    Drawn in ``keypoints.size``; resize the keypoints first (`DrivingKeypoints.resized`) to
    render at another size. A frame with no visible joint is blank (as X-Dyna's harmonic
    data fusion feeds for clips without a person, paper §3.4).
    """
    visible = keypoints.body_visible(threshold)
    frames = [
        draw_skeleton(keypoints.body[f], visible[f], keypoints.size, head, neck_nose)
        for f in range(keypoints.num_frames)
    ]
    stacked = np.stack(frames).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(stacked))
