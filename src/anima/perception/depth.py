"""Per-pixel distance for a single image.

Two sources, both returning *distance* (planar depth Z along the optical axis, positive,
larger = farther) in scene units, shape (H, W), float32:

* Depth Anything (Yang et al., "Depth Anything: Unleashing the Power of Large-Scale Unlabeled
  Data", CVPR 2024; "Depth Anything V2", NeurIPS 2024) loaded in transformers format from a local
  directory. Relative checkpoints predict affine-invariant *disparity* (inverse depth), which is
  converted to distance by :func:`disparity_to_distance`; metric checkpoints predict distance in
  metres directly.
* A weight-free fallback, :func:`ground_plane_distance`: a flat ground seen by a level camera
  with objects standing upright on it (the "billboard" scene model of Hoiem, Efros and Hebert,
  "Automatic Photo Pop-up", SIGGRAPH 2005).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from anima.errors import InputError
from anima.perception.common import check_image, image_to_uint8, load_local, require_model_dir

logger = logging.getLogger(__name__)

MIN_METRIC_DISTANCE = 1e-3
"""Metric predictions are clamped to at least this, so distances stay strictly positive."""


def _check_positive(value: float, name: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive finite number, got {value}", name)
    return float(value)


# --------------------------------------------------------------------------- ground plane


def _ground_rows(height: int, focal: float, horizon_row: float, camera_height: float, far: float):
    """Distance of the ground at every row: Z(y) = f * h / (y - y_h), clamped to ``far``."""
    rows = torch.arange(height, dtype=torch.float64)
    below = rows - horizon_row
    ground = focal * camera_height / below.clamp_min(1e-9)
    return torch.where(below > 0, ground.clamp(max=far), torch.full_like(rows, far))


def _check_masks(masks: Sequence[Tensor], size: tuple[int, int]) -> list[Tensor]:
    checked = []
    for index, mask in enumerate(masks):
        where = f"masks[{index}]"
        if not isinstance(mask, Tensor) or tuple(mask.shape) != size:
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise InputError(f"mask must be a tensor of shape {size}, got {shape}", where)
        checked.append(mask.detach().cpu().bool())
    return checked


def ground_plane_distance(
    size: tuple[int, int],
    focal: float,
    masks: Sequence[Tensor] = (),
    horizon: float = 0.45,
    camera_height: float = 1.6,
    max_distance: float = 50.0,
) -> Tensor:
    """Weight-free distance map: a level camera over a flat ground, objects as upright planes.

    Scene model (the billboard model of Hoiem et al., "Automatic Photo Pop-up", 2005): a pinhole
    camera with focal length ``focal`` (pixels) sits ``camera_height`` scene units above a flat
    ground and looks horizontally, so the horizon is the image row ``y_h = horizon * H``. The
    ray through row ``y > y_h`` meets the ground at planar distance ``Z = focal * camera_height
    / (y - y_h)`` (similar triangles), clamped to ``max_distance``; rows at or above the horizon
    are sky / far background at ``max_distance``. The clamp makes the map continuous at the
    horizon band. Each object mask is an upright plane facing the camera and standing on the
    ground: the whole mask gets the ground distance of its bottom row (its contact point), so
    objects occlude what lies behind them and lower objects are nearer. Where masks overlap the
    nearest one wins; empty masks are ignored.

    Defaults: ``horizon = 0.45`` (photographs are usually framed with the horizon a little
    above the middle), ``camera_height = 1.6`` (eye height of a standing person, so scene units
    are roughly metres) and ``max_distance = 50`` (far enough that parallax there is negligible).

    Args:
        size: (H, W) of the image.
        focal: focal length in pixels.
        masks: boolean (H, W) object masks.
        horizon: horizon row as a fraction of H (may lie outside [0, 1]).
        camera_height: camera height above the ground, scene units.
        max_distance: distance of the sky and cap for the ground, scene units.

    Returns:
        float32 (H, W) distance.
    """
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise InputError(f"size must be positive (H, W), got {tuple(size)}", "size")
    focal = _check_positive(focal, "focal")
    camera_height = _check_positive(camera_height, "camera_height")
    max_distance = _check_positive(max_distance, "max_distance")
    if not math.isfinite(horizon):
        raise InputError(f"horizon must be finite, got {horizon}", "horizon")
    rows = _ground_rows(height, focal, horizon * height, camera_height, max_distance)
    distance = rows[:, None].expand(height, width).clone()
    objects = []
    for mask in _check_masks(masks, (height, width)):
        occupied = mask.any(dim=1).nonzero()
        if len(occupied):
            objects.append((float(rows[int(occupied[-1])]), mask))
    # Paint far objects first so that nearer ones end up in front.
    for value, mask in sorted(objects, key=lambda item: -item[0]):
        distance[mask] = value
    return distance.float()


# --------------------------------------------------------------------------- disparity


def disparity_to_distance(disparity: Tensor, near: float = 1.0, far: float = 50.0) -> Tensor:
    """Convert relative disparity (larger = nearer, unknown affine scale) to distance.

    Relative monocular depth models (MiDaS, Ranftl et al., TPAMI 2022; Depth Anything) predict
    disparity up to an unknown scale and shift. Lacking that affine, the map is min-max
    normalised to ``dn`` in [0, 1] and *inverse* depth is interpolated linearly between the two
    planes: ``1 / Z = 1 / far + dn * (1 / near - 1 / far)``. So the largest disparity lands
    exactly at ``near``, the smallest exactly at ``far``, and the ordering is preserved (Z is
    strictly decreasing in disparity). A constant map carries no depth information; it becomes
    a fronto-parallel plane at ``dn = 0.5``, i.e. the harmonic mean ``2 / (1/near + 1/far)``.

    Args:
        disparity: tensor of any shape.
        near: distance given to the largest disparity, > 0.
        far: distance given to the smallest disparity, > near.

    Returns:
        float32 tensor of the same shape, values in [near, far].
    """
    near = _check_positive(near, "near")
    far = _check_positive(far, "far")
    if far <= near:
        raise InputError(f"far ({far}) must be larger than near ({near})", "far")
    values = disparity.detach().to(torch.float64)
    if values.numel() == 0 or not torch.isfinite(values).all():
        raise InputError("disparity must be non-empty and finite", "disparity")
    low, high = values.min(), values.max()
    if high > low:
        normalised = (values - low) / (high - low)
    else:
        normalised = torch.full_like(values, 0.5)
    inverse = 1.0 / far + normalised * (1.0 / near - 1.0 / far)
    return (1.0 / inverse).clamp(near, far).float()


# --------------------------------------------------------------------------- Depth Anything


class DepthAnythingEstimator:
    """Depth Anything (V1 or V2) in transformers format, loaded from a local directory.

    The directory holds ``config.json``, the weights and ``preprocessor_config.json`` (as written
    by ``save_pretrained``). ``config.depth_estimation_type == "metric"`` checkpoints (Depth
    Anything V2 metric) predict distance in metres, used as is (clamped to
    :data:`MIN_METRIC_DISTANCE`); relative ones predict disparity, converted with
    :func:`disparity_to_distance` between ``near`` and ``far``.
    """

    def __init__(
        self,
        model_dir: Path | str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        near: float = 1.0,
        far: float = 50.0,
        allow_pickle: bool = False,
    ) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        path = require_model_dir(
            model_dir, "Depth Anything", ("preprocessor_config.json",), allow_pickle
        )
        self.processor, model = load_local(
            path,
            "Depth Anything",
            AutoImageProcessor,
            AutoModelForDepthEstimation,
            allow_pickle=allow_pickle,
        )
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.near = near
        self.far = far

    @property
    def is_metric(self) -> bool:
        """Whether the checkpoint predicts metric distance rather than relative disparity."""
        return getattr(self.model.config, "depth_estimation_type", "relative") == "metric"

    @torch.no_grad()
    def predict_raw(self, image: Tensor) -> Tensor:
        """Raw model output (disparity or metric depth) resized bilinearly to the image size."""
        height, width = check_image(image)
        inputs = self.processor(images=image_to_uint8(image), return_tensors="pt")
        pixels = inputs["pixel_values"].to(device=self.device, dtype=self.dtype)
        predicted = self.model(pixel_values=pixels).predicted_depth.float()
        resized = F.interpolate(
            predicted.reshape(1, 1, *predicted.shape[-2:]),
            size=(height, width),
            mode="bilinear",
            align_corners=False,
        )
        return resized[0, 0]

    @torch.no_grad()
    def __call__(self, image: Tensor) -> Tensor:
        """Distance map (H, W), float32, on the image's device."""
        raw = self.predict_raw(image)
        if self.is_metric:
            distance = raw.clamp_min(MIN_METRIC_DISTANCE)
        else:
            distance = disparity_to_distance(raw, self.near, self.far)
        return distance.to(image.device)


@functools.lru_cache(maxsize=1)
def _cached_estimator(model_dir: str, device: str, allow_pickle: bool) -> DepthAnythingEstimator:
    return DepthAnythingEstimator(model_dir, device=device, allow_pickle=allow_pickle)


def estimate_distance(
    image: Tensor,
    focal: float,
    masks: Sequence[Tensor] = (),
    depth_anything_dir: Path | str | None = None,
    device: str = "cpu",
    allow_pickle: bool = False,
) -> Tensor:
    """Distance map (H, W) for ``image``: Depth Anything if available, else the ground plane.

    Depth Anything is used when ``depth_anything_dir`` is given and holds a ``config.json``
    (the loaded model is cached for repeated calls); otherwise :func:`ground_plane_distance`
    with ``focal`` and the object ``masks`` (a warning is logged when a directory was given but
    has no ``config.json``). ``focal`` and ``masks`` are only used by the fallback.
    """
    height, width = check_image(image)
    if depth_anything_dir is not None:
        path = Path(depth_anything_dir)
        if (path / "config.json").is_file():
            return _cached_estimator(str(path.resolve()), str(device), allow_pickle)(image)
        logger.warning("no config.json in %s; using the ground-plane depth fallback", path)
    return ground_plane_distance((height, width), focal, masks).to(image.device)
