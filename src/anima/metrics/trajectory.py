"""Trajectory error of a generated video: ObjMC, per point and per object.

ObjMC ("object motion control") is the mean Euclidean distance, in pixels, between where points
should be and where a tracker finds them in the generated video. It was introduced by DragNUWA
(Yin et al., 2023) and used by DragAnything (Wu et al., 2024) and LeviTor (Wang et al., 2025, §4.1),
all with CoTracker re-tracking; here the tracks come from
:mod:`anima.metrics.tracking`. Frame 0 is the conditioning image and is excluded; only (point,
frame) pairs that are visible in the truth and still tracked count.

The object-level variant compares, per object and frame, the centroid of the object's valid
points in the prediction with the centroid of the same points in the truth: it measures whether
the object goes where it should, and is insensitive to how many points each object has.
"""

from __future__ import annotations

import math

import torch


def _check(pred: torch.Tensor, true: torch.Tensor, valid: torch.Tensor) -> None:
    if pred.shape != true.shape or pred.dim() != 3 or pred.shape[-1] != 2:
        raise ValueError(f"tracks must both be (N, F, 2): {tuple(pred.shape)}, {tuple(true.shape)}")
    if valid.shape != pred.shape[:2]:
        raise ValueError(f"valid must be (N, F) = {tuple(pred.shape[:2])}, got {valid.shape}")


def objmc(pred_tracks: torch.Tensor, true_tracks: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean distance (px) between predicted and true positions (N, F, 2) over ``valid`` (N, F).

    Frame 0 is excluded. Returns ``nan`` when no (point, frame) pair is valid.
    """
    _check(pred_tracks, true_tracks, valid)
    err = (pred_tracks.double() - true_tracks.double()).norm(dim=-1)[:, 1:]
    mask = valid.bool()[:, 1:]
    if not bool(mask.any()):
        return math.nan
    return float(err[mask].mean())


def objmc_objects(
    pred_tracks: torch.Tensor,
    true_tracks: torch.Tensor,
    valid: torch.Tensor,
    track_object: torch.Tensor,
) -> float:
    """Object-level ObjMC: mean distance (px) between predicted and true centroids of each
    object's valid points, over (object, frame) pairs with at least one valid point, frame 0
    excluded. ``track_object`` (N,) gives each point's object id. ``nan`` if nothing is valid."""
    _check(pred_tracks, true_tracks, valid)
    mask = valid.bool()
    errors = []
    for object_id in torch.unique(track_object).tolist():
        rows = track_object == object_id
        m = mask[rows][:, 1:].double()  # (n, F-1)
        count = m.sum(dim=0)
        if not bool((count > 0).any()):
            continue
        weights = m / count.clamp(min=1)
        pred = (pred_tracks[rows][:, 1:].double() * weights[..., None]).sum(dim=0)
        true = (true_tracks[rows][:, 1:].double() * weights[..., None]).sum(dim=0)
        errors.append((pred - true).norm(dim=-1)[count > 0])
    if not errors:
        return math.nan
    return float(torch.cat(errors).mean())
