"""One call that scores a generated video against a clip's exact ground truth.

``summary(generated, truth)`` returns

- ``objmc``: point ObjMC in pixels (:mod:`anima.metrics.trajectory`) of the truth's frame-0
  points re-tracked in the generated video (:mod:`anima.metrics.tracking`);
- ``objmc_object``: the object-level (centroid) variant;
- ``tracked_fraction``: the fraction of truth-visible (point, frame) pairs, frame 0 excluded,
  that the tracker still follows, the coverage ObjMC is averaged over;
- ``objmc_held``: ObjMC over every pair the truth shows without a break since frame 0, a lost
  point counting at its last tracked position, as if its object had stopped there;
- ``occlusion_acc``: occlusion accuracy (:mod:`anima.metrics.occlusion`);
- ``scale_err``: mean |log scale ratio| (:mod:`anima.metrics.scale`) over frames where the object
  is visible both in the truth and in the generated video;
- ``psnr`` (dB, capped at ``psnr_cap`` so identical videos give a finite number) and ``ssim``
  against the truth frames (:mod:`anima.metrics.image`).

``objmc`` only averages over the points the tracker still follows, so it favours videos that
lose their objects early: a video whose objects blur or dissolve is scored on its first frames
only, while the objects are still near their start. ``objmc_held`` has no such bias (such a
video scores like a still one) but carries the tracker's own failures: frame-to-frame
Lucas-Kanade loses points at occlusion edges and on fast, small objects even in the truth video,
and pairs after a break in visibility are left out because it cannot pick a point up again
(CoTracker, which the papers use, predicts through occlusions). Read the two together, with
``tracked_fraction``.

Visibility is judged per frame with a 50 % visible-area threshold in the truth and a 0.5 NCC
threshold in the video (:mod:`anima.metrics.occlusion`); on frames where an object is 25-65 %
covered the two can disagree, so occlusion accuracy of a perfect video can fall a little below 1
on clips with many partly covered frames. A metric with nothing to average over (e.g. no object
ever visible) is ``nan``.

Together the metrics separate "the object follows the trajectory, is hidden and scales as it
should" from "the object does not move": a static video has an ObjMC equal to the true
displacement, is 'hidden' (not found) wherever the truth has moved on by more than the
matching radius, and keeps scale 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from anima.metrics.image import psnr, ssim
from anima.metrics.matching import match_objects
from anima.metrics.occlusion import (
    MATCH_THRESHOLD,
    MIN_VISIBLE_FRACTION,
    occlusion_accuracy,
    predicted_visibility,
    true_visibility,
)
from anima.metrics.scale import scale_error, true_scale
from anima.metrics.tracking import track_points
from anima.metrics.trajectory import objmc, objmc_objects

PSNR_CAP = 100.0


@dataclass
class VideoTruth:
    """Exact ground truth of a clip (F frames, N points, objects by id)."""

    frames: torch.Tensor  # (F, 3, H, W) float in [0, 1]
    instance: torch.Tensor  # (F, H, W) int, object id or 0 (the visible surface per pixel)
    tracks: torch.Tensor  # (N, F, 2) float (x, y) pixels, defined even when hidden
    visible: torch.Tensor  # (N, F) bool
    track_object: torch.Tensor  # (N,) int object id of each point
    object_ids: list[int] = field(default_factory=list)
    distance: torch.Tensor | None = None  # (F, H, W) distance (larger is farther), optional

    def __post_init__(self) -> None:
        f, _, h, w = self.frames.shape
        if self.instance.shape != (f, h, w):
            raise ValueError(f"instance must be {(f, h, w)}, got {tuple(self.instance.shape)}")
        if self.distance is not None and self.distance.shape != (f, h, w):
            raise ValueError(f"distance must be {(f, h, w)}, got {tuple(self.distance.shape)}")
        n = self.tracks.shape[0]
        if self.tracks.shape != (n, f, 2) or self.visible.shape != (n, f):
            raise ValueError("tracks must be (N, F, 2) and visible (N, F)")
        if self.track_object.shape != (n,):
            raise ValueError("track_object must be (N,)")
        if not self.object_ids:
            self.object_ids = sorted(int(i) for i in torch.unique(self.track_object).tolist())


def expected_centres(truth: VideoTruth, object_ids: list[int]) -> torch.Tensor:
    """Where each object's frame-0 mask-box centre should be per frame (K, F, 2): the box
    centre moved with the centroid of the object's truth points (or the visible-mask centroid
    where an object has no points; nan where it is then not visible)."""
    num_frames = truth.frames.shape[0]
    out = torch.full((len(object_ids), num_frames, 2), float("nan"))
    for k, object_id in enumerate(object_ids):
        mask0 = truth.instance[0] == object_id
        if not bool(mask0.any()):
            continue
        ys, xs = torch.nonzero(mask0, as_tuple=True)
        box_centre = torch.stack([(xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2]).float()
        pts = truth.tracks[truth.track_object == object_id].float()
        if pts.shape[0] > 0:
            centroid = pts.mean(dim=0)  # (F, 2)
            out[k] = box_centre + centroid - centroid[0]
            continue
        c0 = torch.stack([xs.float().mean(), ys.float().mean()])
        for t in range(num_frames):
            ys_t, xs_t = torch.nonzero(truth.instance[t] == object_id, as_tuple=True)
            if xs_t.numel():
                c = torch.stack([xs_t.float().mean(), ys_t.float().mean()])
                out[k, t] = box_centre + c - c0
    return out


def summary(
    generated: torch.Tensor,
    truth: VideoTruth,
    min_visible_fraction: float = MIN_VISIBLE_FRACTION,
    match_threshold: float = MATCH_THRESHOLD,
    psnr_cap: float = PSNR_CAP,
) -> dict[str, float]:
    """Score ``generated`` (F, 3, H, W) against ``truth`` (see the module doc for the keys)."""
    if generated.shape != truth.frames.shape:
        raise ValueError(
            f"generated video {tuple(generated.shape)} != truth {tuple(truth.frames.shape)}"
        )
    result: dict[str, float] = {
        "psnr": psnr(generated, truth.frames, max_db=psnr_cap),
        "ssim": ssim(generated, truth.frames),
    }

    visible = truth.visible.bool()
    pred_tracks, ok = track_points(generated, truth.tracks[:, 0])
    ok = ok & visible[:, :1]  # a point hidden in frame 0 cannot be followed from it
    valid = visible & ok
    result["objmc"] = objmc(pred_tracks, truth.tracks, valid)
    result["objmc_object"] = objmc_objects(pred_tracks, truth.tracks, valid, truth.track_object)
    seen = visible[:, 1:]
    result["tracked_fraction"] = (
        float(valid[:, 1:][seen].double().mean()) if bool(seen.any()) else float("nan")
    )
    in_view = torch.cummin(visible.int(), dim=1).values.bool()
    result["objmc_held"] = objmc(pred_tracks, truth.tracks, in_view)

    ids = [i for i in truth.object_ids if bool((truth.instance[0] == i).any())]
    if not ids:
        result["occlusion_acc"] = result["scale_err"] = float("nan")
        return result
    masks0 = torch.stack([truth.instance[0] == i for i in ids])
    matches = match_objects(generated, masks0, expected_centres(truth, ids))
    scale_true = true_scale(truth.instance, ids, truth.distance, truth.tracks, truth.track_object)
    vis_true = true_visibility(truth.instance, ids, scale_true, min_visible_fraction)
    vis_pred = predicted_visibility(matches.score, match_threshold)
    result["occlusion_acc"] = occlusion_accuracy(vis_pred, vis_true)
    result["scale_err"] = scale_error(matches.scale, scale_true, vis_true & vis_pred)
    return result
