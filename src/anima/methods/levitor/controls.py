"""LeviTor's control maps: control points drawn as three channels (LeviTor §3.2-3.3).

Each frame's K-means control points (`anima.control_points`, Eq. 1-5) are drawn as three
channels that the ControlNet stem receives as raw 0..255 values: a Gaussian heatmap, the object
number and the depth (as disparity scaled to 0..255) at each point.

Two conventions (`CONTROL_CONVENTIONS`) place and draw them: ``"anima"`` (this module's
`control_maps` on `compute_control_points`) and ``"release"`` (the authors' release, point for
point and pixel for pixel: `anima.methods.levitor.release_maps` on
`compute_release_control_points`). A ControlNet must be fed the convention it was trained on;
its config records it (``control_convention``).

Conventions: as `anima.control_points`.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from torch import Tensor

from anima.clips import resize_nearest
from anima.control_points import (
    ControlPoints,
    compute_control_points,
    compute_release_control_points,
)
from anima.methods.levitor.release_maps import release_control_maps

#: Resolution at which the heatmap template is 20 px wide (the release's 288x512 clips).
REFERENCE_SIDE = 288
#: The release's Gaussian: sigma 40 px on a 200 px template resized to a 20 px patch.
TEMPLATE_SIDE, TEMPLATE_SIGMA, PATCH_SIDE = 200.0, 40.0, 20.0
#: The control signals of the paper's ablations (Tab. 2: without depth, without instance;
#: Tab. S1: one point per object), each the input of its own trained ControlNet.
CONTROL_VARIANTS = ("full", "single_point", "no_depth", "no_instance")
#: How points are placed and drawn: ours, or the LeviTor release's (what its checkpoint saw).
CONTROL_CONVENTIONS = ("anima", "release")


def first_frame_depth_range(distance: Tensor) -> tuple[float, float]:
    """``(near, far)``: min and max of the first frame's finite, positive distances."""
    first = distance[0]
    valid = first[torch.isfinite(first) & (first > 0)]
    if valid.numel() == 0:
        raise ValueError("the first frame's distance map has no finite positive value")
    return float(valid.min()), float(valid.max())


# --------------------------------------------------------------------------------------------
# Control maps (§3.2, "Gaussian heatmap ... instance points, and depth points")
# --------------------------------------------------------------------------------------------


def disc_geometry(size: tuple[int, int]) -> tuple[float, float]:
    """``(radius, sigma)`` in pixels of a point's disc at ``size = (H, W)``.

    The release pastes a Gaussian with sigma 40 px on a 200 px template, resized to a 20 px
    patch at H=288: radius 10 px and sigma 4 px there. Both scale with ``min(H, W) / 288``.
    """
    scale = min(size) / REFERENCE_SIDE
    return PATCH_SIDE / 2.0 * scale, TEMPLATE_SIGMA * PATCH_SIDE / TEMPLATE_SIDE * scale


def depth_to_disparity_255(distance: Tensor, near: float, far: float) -> Tensor:
    """Distance to LeviTor's 0..255 depth value (larger = nearer, like normalised DepthAnything).

    ``255 * (1/d - 1/far) / (1/near - 1/far)``, clipped to ``[0, 255]``: 255 at ``near``, 0 at
    ``far``. A degenerate range (``far <= near``) gives 255 for ``d <= near`` and 0 beyond.
    """
    if near <= 0:
        raise ValueError(f"near must be positive, got {near}")
    if far <= near:
        return torch.where(distance <= near, 255.0, 0.0).to(torch.float32)
    inv = 1.0 / distance.clamp_min(1e-12).to(torch.float32)
    value = 255.0 * (inv - 1.0 / far) / (1.0 / near - 1.0 / far)
    return value.clamp(0.0, 255.0)


def _disc_offsets(radius: float, sigma: float) -> tuple[Tensor, Tensor, Tensor]:
    """Integer offsets ``(du, dv)`` inside the disc and the Gaussian value (peak 1) at each."""
    reach = int(math.floor(radius))
    grid = torch.arange(-reach, reach + 1)
    dv, du = torch.meshgrid(grid, grid, indexing="ij")
    r2 = (du**2 + dv**2).flatten().float()
    inside = r2 <= radius**2
    gauss = torch.exp(-r2[inside] / (2.0 * sigma**2))
    return du.flatten()[inside], dv.flatten()[inside], gauss


def _nearest_first_rank(distance: Tensor) -> Tensor:
    """``(F, N)`` rank of each point within its frame by distance: 0 = nearest (ties by index)."""
    order = torch.sort(distance, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    positions = torch.arange(distance.shape[1]).expand_as(order)
    return rank.scatter_(1, order, positions)


def control_maps(
    points: ControlPoints, size: tuple[int, int], depth_range: tuple[float, float]
) -> Tensor:
    """Per-frame 3-channel control images, raw 0..255 values as the LeviTor release feeds them.

    Each visible point is drawn as a disc (radius 10 px and Gaussian sigma 4 px at H=288, scaled
    by ``min(H, W) / 288``; see :func:`disc_geometry`) centred on its rounded position:

    - channel 0: the Gaussian heatmap ``255 * exp(-r^2 / (2 sigma^2))``, peak 255; overlapping
      discs combine by max;
    - channel 1: the point's object number over the disc, 1..N with objects ranked by id (the
      release numbers the selected masks 1..N, whatever ids a spec uses);
    - channel 2: the point's depth value over the disc, disparity-like as LeviTor normalises
      DepthAnything (larger = nearer): ``255 * (1/d - 1/far) / (1/near - 1/far)`` clipped to
      ``[0, 255]`` (:func:`depth_to_disparity_255`), ``(near, far)`` being the range of the
      first frame's distance map (:func:`first_frame_depth_range`).

    Where discs overlap, the nearer point (smaller distance) wins channels 1 and 2.

    Args:
        points: control points, in pixel coordinates of ``size``.
        size: ``(H, W)`` of the maps.
        depth_range: ``(near, far)`` distances mapped to 255 and 0.

    Returns:
        ``(F, 3, H, W)`` float32.
    """
    h, w = size
    frames, n = points.num_frames, points.num_points
    if n == 0:
        return torch.zeros(frames, 3, h, w, dtype=torch.float32)
    du, dv, gauss = _disc_offsets(*disc_geometry(size))
    centre = torch.floor(points.xy + 0.5).long()  # (F, N, 2)
    cols = centre[..., 0:1] + du  # (F, N, P)
    rows = centre[..., 1:2] + dv
    valid = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h) & points.visible[..., None]
    plane = h * w
    frame_idx = torch.arange(frames)[:, None, None].expand_as(cols)[valid]
    pixel = (rows * w + cols)[valid]
    # Channel 0: Gaussian heatmap, overlaps combined by max.
    maps = torch.zeros(frames * 3 * plane, dtype=torch.float32)
    heat = (255.0 * gauss).expand(frames, n, -1)[valid]
    maps.scatter_reduce_(0, frame_idx * (3 * plane) + pixel, heat, reduce="amax")
    # Channels 1-2: per pixel, the covering point with the smallest distance rank wins. Sorting
    # the (pixel, rank) keys of the footprints puts each pixel's winner first.
    rank = _nearest_first_rank(points.distance)
    flat = frame_idx * plane + pixel
    keys = torch.sort(flat * n + rank[..., None].expand_as(cols)[valid]).values
    covered, winner = torch.div(keys, n, rounding_mode="floor"), keys % n
    first = torch.ones_like(covered, dtype=torch.bool)
    first[1:] = covered[1:] != covered[:-1]
    covered, winner = covered[first], winner[first]
    covered_frame = torch.div(covered, plane, rounding_mode="floor")
    point = torch.argsort(rank, dim=1)[covered_frame, winner]  # rank -> point index
    target = covered + (2 * plane) * covered_frame  # (frame, pixel) -> offset in ``maps``
    ids = torch.unique(points.instance)  # sorted; the release numbers its masks 1..N
    number = torch.searchsorted(ids, points.instance) + 1
    maps[target + plane] = number.float()[point]
    disparity = depth_to_disparity_255(points.distance, *depth_range)
    maps[target + 2 * plane] = disparity[covered_frame, point]
    return maps.reshape(frames, 3, h, w)


def control_signal(
    instance: Tensor,
    distance: Tensor,
    moved_ids: Collection[int],
    size: tuple[int, int] | None = None,
    points_scale: float = 1.0,
    seed: int = 0,
    variant: str = "full",
    convention: str = "anima",
) -> tuple[ControlPoints, Tensor]:
    """Instance and distance maps of a clip -> LeviTor control points and control maps.

    The one path from masks to the ControlNet's input: inference (masks and depth rendered from
    a MotionSpec) and training (ground-truth masks and depth of a video) both call it. Maps are
    resized to ``size`` (the generation size) by nearest neighbour first.

    ``variant`` selects the paper's ablations (`CONTROL_VARIANTS`): ``single_point`` keeps one
    point per object (k = 1, Tab. S1), ``no_depth`` and ``no_instance`` zero channel 2 or 1
    (Tab. 2). ``convention`` (`CONTROL_CONVENTIONS`) selects ours (:func:`control_maps` on
    `compute_control_points`, seeded by ``seed``) or the release's
    (`anima.methods.levitor.release_maps.release_control_maps` on
    `compute_release_control_points`, which draws no random numbers). A ControlNet must be fed
    the variant and the convention it was trained on (its config says which).

    Returns:
        The points and the ``(F, 3, H, W)`` raw 0..255 control maps.
    """
    size = tuple(size or instance.shape[-2:])
    instance, distance = resize_nearest(instance, size), resize_nearest(distance, size)
    if variant not in CONTROL_VARIANTS:
        raise ValueError(f"unknown control variant {variant!r} (use {', '.join(CONTROL_VARIANTS)})")
    if convention not in CONTROL_CONVENTIONS:
        raise ValueError(
            f"unknown control convention {convention!r} (use {', '.join(CONTROL_CONVENTIONS)})"
        )
    max_points = 1 if variant == "single_point" else None
    depth_range = first_frame_depth_range(distance)
    if convention == "release":
        points = compute_release_control_points(
            instance, distance, moved_ids, points_scale=points_scale, max_points=max_points
        )
        maps = release_control_maps(points, size, depth_range)
    else:
        points = compute_control_points(
            instance,
            distance,
            moved_ids,
            points_scale=points_scale,
            seed=seed,
            max_points=max_points,
        )
        maps = control_maps(points, size, depth_range)
    if variant == "no_instance":
        maps[:, 1] = 0.0
    elif variant == "no_depth":
        maps[:, 2] = 0.0
    return points, maps
