"""Perception: per-pixel distance and object masks for a single image.

Distance follows the project convention (planar depth Z, positive, larger = farther, scene
units); masks are boolean (H, W) tensors.
"""

from anima.perception.depth import (
    DepthAnythingEstimator,
    disparity_to_distance,
    estimate_distance,
    ground_plane_distance,
)
from anima.perception.segmentation import (
    SamSegmenter,
    grabcut_from_points,
    mask_from_box,
    mask_from_points,
)
from anima.perception.upsampling import guided_filter, upsample_mask

__all__ = [
    "DepthAnythingEstimator",
    "SamSegmenter",
    "disparity_to_distance",
    "estimate_distance",
    "grabcut_from_points",
    "guided_filter",
    "ground_plane_distance",
    "mask_from_box",
    "mask_from_points",
    "upsample_mask",
]
