"""Aligning a driving skeleton to the reference person (scale and offset).

X-Dyna animates the reference image ``I_R`` with poses ``P_i`` from a video of a
DIFFERENT person (§3, cross-driven), whose size and position in frame differ from the
reference's; the paper names large deviations from the reference as a failure case (§5). The
release applies a pose alignment step that it never shipped. This module is ours: one
similarity without rotation per video,

    x' = s * (x - c_drive) + c_ref        (the same for body joints and face landmarks)

estimated once from the START of the driving video, so the driving motion (steps, jumps,
leaning) is kept relative to where the driving person stood, scaled to the reference body.

Scale ``s`` = ref / drive of the first body measure both skeletons provide, in this order:

1. ``height``: torso + leg, torso = |neck - mid-hip| and leg = mean over the sides whose
   hip, knee and ankle are visible of |hip - knee| + |knee - ankle| (segment lengths, so
   bent knees do not change it);
2. ``torso`` alone (e.g. upper-body videos);
3. ``shoulders``: |r_shoulder - l_shoulder|;
4. ``none``: s = 1 when no measure is shared.

Mid-hip is the midpoint of the hips, or the single visible hip. The anchor ``c`` is the first
joint visible in both: ``neck``, then ``mid_hip``, then ``centroid`` (the mean of the joints
visible in both). Driving values are medians over the first `FIRST_FRAMES` frames (per
measure and per coordinate, over the frames where it is visible), which is robust to a
wrong detection or a blink of occlusion; reference values are medians over the reference's
frames (normally one image). Without any joint visible in both, `InputError` is raised.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from anima.errors import InputError
from anima.methods.xdyna.keypoints import BODY_THRESHOLD, DrivingKeypoints

FIRST_FRAMES = 8
MEASURES = ("height", "torso", "shoulders")
NECK, R_SHOULDER, L_SHOULDER, R_HIP, L_HIP = 1, 2, 5, 8, 11
LEGS = ((8, 9, 10), (11, 12, 13))  # (hip, knee, ankle) right, left


@dataclass(frozen=True)
class Alignment:
    """``x' = scale * x + offset`` with ``offset = anchor_ref - scale * anchor_drive``."""

    scale: float
    offset: np.ndarray  # (2,)
    anchor_drive: np.ndarray  # (2,)
    anchor_ref: np.ndarray  # (2,)
    measure: str  # which body measure set the scale ("height", "torso", "shoulders", "none")
    anchor: str  # which anchor ("neck", "mid_hip", "centroid")

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map (..., 2) pixel coordinates."""
        return self.scale * np.asarray(points, dtype=np.float64) + self.offset


def _length(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return np.hypot(d[..., 0], d[..., 1])


def mid_hip(body: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, 2) mid-hip and (F,) bool whether it exists (both hips, or the one visible)."""
    right, left = visible[:, R_HIP], visible[:, L_HIP]
    both = (body[:, R_HIP] + body[:, L_HIP]) / 2
    point = np.where(
        (right & left)[:, None], both, np.where(right[:, None], body[:, R_HIP], body[:, L_HIP])
    )
    return point, right | left


def body_measures(body: np.ndarray, visible: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame body measures (F,) in pixels, NaN where the joints are missing (module doc).

    ``body`` (F, 18, 2), ``visible`` (F, 18) bool.
    """
    hip, has_hip = mid_hip(body, visible)
    torso = np.where(has_hip & visible[:, NECK], _length(body[:, NECK], hip), np.nan)
    legs = []
    for h, k, a in LEGS:
        ok = visible[:, h] & visible[:, k] & visible[:, a]
        length = _length(body[:, h], body[:, k]) + _length(body[:, k], body[:, a])
        legs.append(np.where(ok, length, np.nan))
    stacked = np.stack(legs)
    count = np.isfinite(stacked).sum(axis=0)
    leg = np.where(count > 0, np.nansum(stacked, axis=0) / np.maximum(count, 1), np.nan)
    both = visible[:, R_SHOULDER] & visible[:, L_SHOULDER]
    shoulders = np.where(both, _length(body[:, R_SHOULDER], body[:, L_SHOULDER]), np.nan)
    return {"height": torso + leg, "torso": torso, "shoulders": shoulders}


def _median(values: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN (NaN where every value is NaN), without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        return np.nanmedian(values, axis=0)


def _summary(keypoints: DrivingKeypoints, frames: int, threshold: float):
    """Median measures, median joint positions (18, 2) (NaN = never visible) of the first
    ``frames`` frames."""
    body = keypoints.body[:frames]
    visible = keypoints.body_visible(threshold)[:frames]
    measures = {name: float(_median(v)) for name, v in body_measures(body, visible).items()}
    joints = _median(np.where(visible[..., None], body, np.nan))
    hip, has_hip = mid_hip(body, visible)
    hip_median = _median(np.where(has_hip[:, None], hip, np.nan))
    return measures, joints, hip_median


def estimate_alignment(
    driving: DrivingKeypoints,
    reference: DrivingKeypoints,
    first_frames: int = FIRST_FRAMES,
    threshold: float = BODY_THRESHOLD,
) -> Alignment:
    """The transform that puts the driving person onto the reference person (module doc)."""
    if first_frames < 1:
        raise ValueError(f"first_frames must be >= 1, got {first_frames}")
    d_measures, d_joints, d_hip = _summary(driving, first_frames, threshold)
    r_measures, r_joints, r_hip = _summary(reference, reference.num_frames, threshold)

    scale, measure = 1.0, "none"
    for name in MEASURES:
        d, r = d_measures[name], r_measures[name]
        if np.isfinite(d) and np.isfinite(r) and d > 0 and r > 0:
            scale, measure = r / d, name
            break

    both = np.isfinite(d_joints).all(axis=1) & np.isfinite(r_joints).all(axis=1)
    if both[NECK]:
        anchor, c_drive, c_ref = "neck", d_joints[NECK], r_joints[NECK]
    elif np.isfinite(d_hip).all() and np.isfinite(r_hip).all():
        anchor, c_drive, c_ref = "mid_hip", d_hip, r_hip
    elif both.any():
        anchor = "centroid"
        c_drive, c_ref = d_joints[both].mean(axis=0), r_joints[both].mean(axis=0)
    else:
        raise InputError(
            "cannot align the driving pose: no body joint is visible both in its first "
            f"{first_frames} frames and in the reference",
            "X-Dyna pose alignment",
        )
    offset = c_ref - scale * c_drive
    return Alignment(
        scale=float(scale),
        offset=np.asarray(offset, dtype=np.float64),
        anchor_drive=np.asarray(c_drive, dtype=np.float64),
        anchor_ref=np.asarray(c_ref, dtype=np.float64),
        measure=measure,
        anchor=anchor,
    )


def apply_alignment(
    driving: DrivingKeypoints, alignment: Alignment, size: tuple[int, int]
) -> DrivingKeypoints:
    """Every driving frame (body and face) mapped by ``alignment`` into an image of ``size``
    (the reference's); confidences are kept."""
    return driving.transformed(alignment.scale, alignment.offset, size)


def align_to_reference(
    driving: DrivingKeypoints,
    reference: DrivingKeypoints,
    first_frames: int = FIRST_FRAMES,
    threshold: float = BODY_THRESHOLD,
) -> tuple[Alignment, DrivingKeypoints]:
    """`estimate_alignment`, then the aligned driving keypoints in the reference's image size."""
    alignment = estimate_alignment(driving, reference, first_frames, threshold)
    return alignment, apply_alignment(driving, alignment, reference.size)
