"""Occlusion: is each object visible in each frame, in the truth and in a generated video?

- **Truth.** An object counts as visible at frame t when its visible mask area is more than
  ``min_fraction`` (default 50 %) of the area it would cover unoccluded, area_0 * scale_t^2 (its
  frame-0 area, assumed unoccluded, times its truth image scale squared, see
  :mod:`anima.metrics.scale`). Frames in which the object passes behind an occluder, or is mostly
  covered, are therefore 'hidden'; a sliver at the occluder's edge does not count as visible.
  50 % rather than e.g. 30 % because it is where the appearance match can tell: the NCC of a
  template whose visible fraction is v is roughly v + 0.1 on toy-world textures, and chance
  matches of an absent object reach ~0.45 at 64x64, so a 0.5 score threshold and a 50 %
  fraction describe the same event.
- **Prediction.** An object counts as visible in the generated video when its frame-0 appearance
  is found near where it should be (:func:`anima.metrics.matching.match_objects`) with a
  normalised cross-correlation of at least ``threshold`` (default 0.5: a fully visible object
  scores 0.8-1, one covered by more than about half or absent scores below ~0.4 on toy-world
  textures).
- **Occlusion accuracy** is the fraction of (object, frame) pairs, frame 0 excluded, whose
  predicted visibility equals the truth's: 1.0 when the object is hidden exactly when it should
  be, lower when it stays in front of an occluder, vanishes, or is not where it should be. This
  is the binary occlusion-order check the toy world's ground truth allows (docs/architecture.md,
  "The toy world"); the papers report no such metric.
"""

from __future__ import annotations

import math

import torch

MIN_VISIBLE_FRACTION = 0.5
MATCH_THRESHOLD = 0.5


def visible_fraction(
    instance: torch.Tensor, object_ids: list[int], scale: torch.Tensor
) -> torch.Tensor:
    """Visible area over unoccluded area (K, F) per object and frame: area_t / (area_0 * s_t^2).

    ``instance`` (F, H, W) truth ids; ``scale`` (K, F) truth image scale. 0 where the object has
    no visible pixel; frame 0 is 1 by construction."""
    areas = torch.stack([(instance == i).flatten(1).sum(dim=1) for i in object_ids]).double()
    expected = areas[:, :1] * scale.double().square()
    fraction = torch.where(areas > 0, areas / expected, torch.zeros_like(areas))
    return torch.nan_to_num(fraction, nan=0.0).float()


def true_visibility(
    instance: torch.Tensor,
    object_ids: list[int],
    scale: torch.Tensor,
    min_fraction: float = MIN_VISIBLE_FRACTION,
) -> torch.Tensor:
    """Truth visibility (K, F) bool: visible fraction above ``min_fraction``."""
    return visible_fraction(instance, object_ids, scale) > min_fraction


def predicted_visibility(score: torch.Tensor, threshold: float = MATCH_THRESHOLD) -> torch.Tensor:
    """Visibility (K, F) bool in a generated video from appearance-match scores."""
    return score >= threshold


def occlusion_accuracy(pred_visible: torch.Tensor, true_visible: torch.Tensor) -> float:
    """Fraction of (object, frame) pairs (K, F), frame 0 excluded, where the predicted
    visibility equals the truth's. ``nan`` when there is no such pair."""
    if pred_visible.shape != true_visible.shape:
        raise ValueError(
            f"shapes differ: {tuple(pred_visible.shape)} vs {tuple(true_visible.shape)}"
        )
    pred, true = pred_visible.bool()[:, 1:], true_visible.bool()[:, 1:]
    if pred.numel() == 0:
        return math.nan
    return float((pred == true).double().mean())
