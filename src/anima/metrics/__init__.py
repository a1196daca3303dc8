"""Metrics for generated videos against exact ground truth (toy world) or a reference video.

Modules, one job each: :mod:`~anima.metrics.image` (PSNR, SSIM), :mod:`~anima.metrics.tracking`
(weight-free Lucas-Kanade point tracker), :mod:`~anima.metrics.trajectory` (ObjMC),
:mod:`~anima.metrics.matching` (appearance matching of objects), :mod:`~anima.metrics.occlusion`
(visibility, occlusion accuracy), :mod:`~anima.metrics.scale` (object scale and its error) and
:mod:`~anima.metrics.summary` (``VideoTruth`` and ``summary``).
"""

from anima.metrics.image import psnr, ssim, ssim_per_frame
from anima.metrics.matching import ObjectMatches, match_objects
from anima.metrics.occlusion import (
    occlusion_accuracy,
    predicted_visibility,
    true_visibility,
    visible_fraction,
)
from anima.metrics.scale import scale_error, true_scale
from anima.metrics.summary import VideoTruth, expected_centres, summary
from anima.metrics.tracking import track_points
from anima.metrics.trajectory import objmc, objmc_objects
from anima.quiet import install as _quiet_third_party_logs

_quiet_third_party_logs()  # before any metric loads a model library

__all__ = [
    "ObjectMatches",
    "VideoTruth",
    "expected_centres",
    "match_objects",
    "objmc",
    "objmc_objects",
    "occlusion_accuracy",
    "predicted_visibility",
    "psnr",
    "scale_error",
    "ssim",
    "ssim_per_frame",
    "summary",
    "track_points",
    "true_scale",
    "true_visibility",
    "visible_fraction",
]
