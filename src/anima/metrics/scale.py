"""Object scale over a clip: the truth's and the error of a generated video's.

An object's image scale at frame t relative to frame 0 is, for a pinhole camera, d0 / dt, the
ratio of its distances (docs/architecture.md, "Conventions": moving an object from distance d0
to d1 scales its image by d0/d1). From the ground truth it is taken, in order of preference, from

1. the distance maps: the median distance of the object's visible pixels at frame 0 over that at
   frame t (exact for a rigid object and unaffected by partial occlusion);
2. the truth point tracks: the RMS spread of the object's points about their centroid at frame t
   over that at frame 0 (needs >= 2 points; defined even while the object is hidden);
3. the instance masks: sqrt(area_t / area_0), which partial occlusion biases low.

The error is mean |log(pred_scale / true_scale)|, symmetric in shrinking and growing: 0.69 for a
factor of 2 either way (as in log-ratio scale errors for object size, e.g. the log-scale terms of
box regression losses).
"""

from __future__ import annotations

import math

import torch


def true_scale(
    instance: torch.Tensor,
    object_ids: list[int],
    distance: torch.Tensor | None = None,
    tracks: torch.Tensor | None = None,
    track_object: torch.Tensor | None = None,
) -> torch.Tensor:
    """Truth image scale (K, F) of each object relative to frame 0 (see the module doc).

    ``instance`` (F, H, W) ids; ``distance`` (F, H, W); ``tracks`` (N, F, 2) with
    ``track_object`` (N,). ``nan`` where the chosen source cannot tell (e.g. object not visible
    and no tracks)."""
    num_frames = instance.shape[0]
    out = torch.full((len(object_ids), num_frames), math.nan, dtype=torch.float64)
    for k, object_id in enumerate(object_ids):
        masks = instance == object_id
        area = masks.flatten(1).sum(dim=1).double()
        if distance is not None:
            med = torch.full((num_frames,), math.nan, dtype=torch.float64)
            for t in range(num_frames):
                if area[t] > 0:
                    med[t] = distance[t][masks[t]].double().median()
            out[k] = med[0] / med
            continue
        if tracks is not None and track_object is not None:
            pts = tracks[track_object == object_id].double()
            if pts.shape[0] >= 2:
                spread = (pts - pts.mean(dim=0, keepdim=True)).square().sum(-1).mean(0).sqrt()
                if spread[0] > 0:
                    out[k] = spread / spread[0]
                    continue
        if area[0] > 0:
            s = (area / area[0]).sqrt()
            out[k] = torch.where(area > 0, s, torch.full_like(s, math.nan))
    return out.float()


def scale_error(
    pred_scale: torch.Tensor, true_scale: torch.Tensor, valid: torch.Tensor | None = None
) -> float:
    """Mean |log(pred / true)| over (object, frame) pairs (K, F) where ``valid`` holds and both
    scales are finite and positive; frame 0 excluded. ``nan`` if no pair counts."""
    pred = pred_scale.double()[:, 1:]
    true = true_scale.double()[:, 1:]
    mask = torch.isfinite(pred) & torch.isfinite(true) & (pred > 0) & (true > 0)
    if valid is not None:
        mask &= valid.bool()[:, 1:]
    if not bool(mask.any()):
        return math.nan
    return float((pred[mask] / true[mask]).log().abs().mean())
