"""Articulated figures: a COCO-18 skeleton animated by joint angles, drawn as capsules.

Joints (the OpenPose / COCO-18 order, which X-Dyna's pose maps use)::

     0 nose        1 neck         2 r_shoulder   3 r_elbow    4 r_wrist   5 l_shoulder
     6 l_elbow     7 l_wrist      8 r_hip        9 r_knee    10 r_ankle  11 l_hip
    12 l_knee     13 l_ankle     14 r_eye       15 l_eye     16 r_ear    17 l_ear

plus two internal joints that are not keypoints: 18 mid_hip, 19 head centre. "Right" is the
figure's own right. The figure is built in its body frame (X to its right, Y up, Z forward,
origin on the ground between the feet) from joint angles of a motion cycle:

- ``walk``: hips swing +-25 degrees in anti-phase, knees bend on the forward swing, arms swing
  against the legs; the root advances along its path, the body faces the direction of travel;
- ``wave``: standing (slow sway), the right arm raised with the forearm waving +-35 degrees.

Limbs are capsules (`anima.world.objects.Capsule`), the head a ball; all parts of one figure
share its instance id. Figures are not rigid, so the clip's MotionSpec lists a figure with its
pelvis (mid_hip) as the anchor, labelled ``figure``: the coarse method moves it rigidly, which
is only an approximation of the articulated truth.
"""

from __future__ import annotations

import numpy as np

from anima.world.objects import Capsule
from anima.world.textures import random_colour

JOINT_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear",
    "l_ear",
)  # fmt: skip
NUM_KEYPOINTS = len(JOINT_NAMES)
MID_HIP, HEAD = 18, 19

# (joint a, joint b, radius as a fraction of the height, part) of every capsule.
LIMBS = (
    (1, 8, 0.075, "torso"), (1, 11, 0.075, "torso"), (2, 5, 0.055, "torso"),
    (8, 11, 0.065, "legs"), (2, 3, 0.045, "arms"), (3, 4, 0.04, "skin"),
    (5, 6, 0.045, "arms"), (6, 7, 0.04, "skin"), (8, 9, 0.06, "legs"), (9, 10, 0.05, "legs"),
    (11, 12, 0.06, "legs"), (12, 13, 0.05, "legs"), (1, HEAD, 0.035, "skin"),
    (HEAD, HEAD, 0.085, "skin"),
)  # fmt: skip


def _rot_x(angle: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations about the body's X axis (positive: swings a down-vector forward)."""
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros(angle.shape + (3, 3))
    out[..., 0, 0] = 1
    out[..., 1, 1], out[..., 1, 2] = c, -s
    out[..., 2, 1], out[..., 2, 2] = s, c
    return out


def _rot_z(angle: np.ndarray) -> np.ndarray:
    """Rotation about the body's Z axis (positive raises a right-hanging arm sideways)."""
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros(angle.shape + (3, 3))
    out[..., 2, 2] = 1
    out[..., 0, 0], out[..., 0, 1] = c, -s
    out[..., 1, 0], out[..., 1, 1] = s, c
    return out


def _chain(origin, rotations, lengths, down):
    """Joint positions of a two-segment chain hanging from ``origin`` (F, 3)."""
    points, current, rot = [], origin, np.eye(3)
    for r, length in zip(rotations, lengths, strict=True):
        rot = rot @ r
        current = current + (rot @ down) * length
        points.append(current)
    return points


def body_pose(motion: str, phase: np.ndarray, height: float) -> np.ndarray:
    """(F, 20, 3) joints in the body frame (X right, Y up, Z forward) at cycle ``phase``."""
    n = len(phase)
    h = height
    down = np.array([0.0, -1.0, 0.0])
    joints = np.zeros((n, 20, 3))
    sway = 0.01 * h * np.sin(phase) if motion == "wave" else np.zeros(n)
    pelvis = np.stack([sway, np.full(n, 0.53 * h), np.zeros(n)], axis=1)
    if motion == "walk":
        pelvis[:, 1] += 0.012 * h * np.cos(2 * phase)
    neck = pelvis + np.array([0.0, 0.3 * h, 0.0])
    joints[:, MID_HIP], joints[:, 1] = pelvis, neck
    joints[:, HEAD] = neck + np.array([0.0, 0.11 * h, 0.0])
    head = joints[:, HEAD]
    joints[:, 0] = head + np.array([0.0, -0.01 * h, 0.075 * h])
    joints[:, 14] = head + np.array([0.03 * h, 0.02 * h, 0.065 * h])
    joints[:, 15] = head + np.array([-0.03 * h, 0.02 * h, 0.065 * h])
    joints[:, 16] = head + np.array([0.07 * h, 0.0, 0.0])
    joints[:, 17] = head + np.array([-0.07 * h, 0.0, 0.0])

    leg = (0.24 * h, 0.25 * h)
    arm = (0.17 * h, 0.16 * h)
    walking = 1.0 if motion == "walk" else 0.0
    for side, sign, hip_i, sh_i in ((+1, 0.0, 8, 2), (-1, np.pi, 11, 5)):
        swing = walking * np.radians(25) * np.sin(phase + sign)
        knee = walking * np.radians(35) * np.clip(np.sin(phase + sign + np.pi / 2), 0, None)
        hip = pelvis + np.array([side * 0.09 * h, 0.0, 0.0])
        joints[:, hip_i] = hip
        k, a = _chain(hip, [_rot_x(swing), _rot_x(-knee)], leg, down)
        joints[:, hip_i + 1], joints[:, hip_i + 2] = k, a
        shoulder = neck + np.array([side * 0.13 * h, -0.02 * h, 0.0])
        joints[:, sh_i] = shoulder
        if motion == "wave" and side == +1:
            raise_arm = _rot_z(np.full(n, np.radians(150)))
            wave = _rot_z(np.radians(35) * np.sin(phase))
            e, w = _chain(shoulder, [raise_arm, wave], arm, down)
        else:
            arm_swing = -walking * np.radians(20) * np.sin(phase + sign)
            out = _rot_z(np.full(n, side * np.radians(8)))
            e, w = _chain(shoulder, [out @ _rot_x(arm_swing), _rot_x(np.full(n, 0.2))], arm, down)
        joints[:, sh_i + 1], joints[:, sh_i + 2] = e, w
    return joints


class Figure:
    """An articulated figure: stage joints (F, 20, 3) and the capsules that draw it."""

    def __init__(
        self,
        rng: np.random.Generator,
        instance: int,
        root: np.ndarray,
        yaw: np.ndarray,
        motion: str,
        height: float,
        ground_y: float,
    ):
        self.instance, self.motion, self.height = instance, motion, height
        frames = len(root)
        cycles = rng.uniform(0.8, 1.3)
        phase = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi * cycles, frames)
        body = body_pose(motion, phase, height)
        # body (X right, Y up, Z forward) -> stage (x right, y down, z forward), turned by yaw
        c, s = np.cos(yaw), np.sin(yaw)
        flipped = body * np.array([1.0, -1.0, 1.0])
        x = c[:, None] * flipped[..., 0] + s[:, None] * flipped[..., 2]
        z = -s[:, None] * flipped[..., 0] + c[:, None] * flipped[..., 2]
        self.joints = np.stack([x, flipped[..., 1], z], axis=-1) + root[:, None, :]
        self.joints[..., 1] += ground_y
        colours = {
            "torso": random_colour(rng),
            "arms": random_colour(rng),
            "legs": random_colour(rng, value=(0.3, 0.6)),
            "skin": np.array([0.93, 0.75, 0.6]) * rng.uniform(0.6, 1.0),
        }
        self.parts = [
            Capsule(instance, self.joints, a, b, r * height, colours[part])
            for a, b, r, part in LIMBS
        ]

    @property
    def keypoints(self) -> np.ndarray:
        """(F, 18, 3) stage positions of the COCO-18 keypoints."""
        return self.joints[:, :NUM_KEYPOINTS]

    @property
    def anchor(self) -> np.ndarray:
        """(F, 3) the pelvis, the figure's MotionSpec anchor."""
        return self.joints[:, MID_HIP]
