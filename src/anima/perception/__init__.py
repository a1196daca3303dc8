"""Perception: per-pixel distance and object masks for a single image, and the inpainted
background behind the objects (`anima.perception.inpaint`).

Distance follows the project convention (planar depth Z, positive, larger = farther, scene
units); masks are boolean (H, W) tensors. Each backend's weights are an optional
`anima.weights.Component` (``depth-anything/``, ``sam/``, ``inpaint/``: the
``PERCEPTION_COMPONENTS`` that ``anima weights`` lists) with a weight-free fallback.
"""

from anima.perception.depth import (
    DepthAnythingEstimator,
    disparity_to_distance,
    estimate_distance,
    ground_plane_distance,
)
from anima.perception.inpaint import (
    DiffusionInpainter,
    inpainter_for,
    opencv_inpaint,
    plate_inpainter,
    plate_inpainting,
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
    "DiffusionInpainter",
    "SamSegmenter",
    "disparity_to_distance",
    "estimate_distance",
    "grabcut_from_points",
    "ground_plane_distance",
    "guided_filter",
    "inpainter_for",
    "mask_from_box",
    "mask_from_points",
    "opencv_inpaint",
    "plate_inpainter",
    "plate_inpainting",
    "upsample_mask",
]
