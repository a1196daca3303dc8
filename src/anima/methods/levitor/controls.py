"""LeviTor control signal: K-means control points and the 3-channel control maps.

LeviTor (paper 003, §3.1-3.3) represents each object of a clip by ``k`` K-means centres of its
mask (Eq. 1), enriched with the depth sampled at each centre (Eq. 2), which gives the 3D
trajectories of Eq. 3. The number of centres per object follows Eq. 4-5. Each frame of control
points is then drawn as three channels (Gaussian heatmap, instance id, depth) that the
ControlNet stem receives as raw 0..255 values.

Conventions: pixel coordinates are floats with x to the right and y down, pixel ``(row, col)``
has centre ``(x=col, y=row)``; frames are ``0..F-1``; distance maps hold DISTANCE (positive,
larger = farther); sizes are ``(H, W)``. Nothing here assumes a resolution.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: Paper Eq. 4 hyper-parameter alpha.
DEFAULT_ALPHA = 50.0
#: Paper Eq. 5: an object whose max/min area ratio over the clip exceeds this gets k >= 3.
AREA_RATIO_THRESHOLD = 10.0
#: Lower bound of k for moved or strongly changing objects (Eq. 5).
MIN_POINTS_CHANGING = 3
#: Bounds of k after Eq. 5 ("we later ensure k <= 8").
MIN_POINTS, MAX_POINTS = 1, 8
#: Resolution at which the heatmap template is 20 px wide (the release's 288x512 clips).
REFERENCE_SIDE = 288
#: The release's Gaussian: sigma 40 px on a 200 px template resized to a 20 px patch.
TEMPLATE_SIDE, TEMPLATE_SIGMA, PATCH_SIDE = 200.0, 40.0, 20.0
#: The control signals of the paper's ablations (Tab. 2: without depth, without instance;
#: Tab. S1: one point per object), each the input of its own trained ControlNet.
CONTROL_VARIANTS = ("full", "single_point", "no_depth", "no_instance")
#: Lloyd iterations cap (the loop stops earlier once assignments no longer change).
MAX_LLOYD_ITERATIONS = 100


def _round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (Python's ``round`` rounds halves to even)."""
    return int(math.floor(value + 0.5))


def _changes_strongly(areas: Sequence[float]) -> bool:
    """Eq. 5's test: max area / min area over the clip > 10; a zero area counts as > 10."""
    if any(a <= 0 for a in areas):
        return True
    return max(areas) / min(areas) > AREA_RATIO_THRESHOLD


def num_control_points(
    areas: Sequence[float],
    image_area: float,
    moved: bool,
    alpha: float = DEFAULT_ALPHA,
    points_scale: float = 1.0,
) -> int:
    """Number of K-means control points ``k`` of one object (paper Eq. 4-5).

    ``k = round(S / (H*W) * alpha)`` (Eq. 4), where ``S`` is the object's area in the FIRST frame
    (``areas[0]``). The paper evaluates Eq. 4 per mask; we use one ``k`` per object for the whole
    clip so that control point ``i`` is the same point in every frame (warm-started K-means keeps
    identity only if the number of centres is fixed), and the first frame is the one the user
    sees and edits. Then ``k = max(k, 3)`` if the object is moved by its trajectory or if its
    max/min area over the clip exceeds 10 (Eq. 5; an object that vanishes in some frame, area 0,
    counts as a ratio > 10). ``k`` is clamped to ``[1, 8]``, then multiplied by the user's
    ``points_scale``, rounded (halves up) and kept at least 1.

    Args:
        areas: the object's area in pixels in each frame, frame 0 first.
        image_area: ``H * W`` in pixels.
        moved: whether the object's trajectory moves it.
        alpha: Eq. 4's alpha (50 in the paper).
        points_scale: the release's "points scale" multiplier.

    Returns:
        The number of control points, ``>= 1``.
    """
    if len(areas) == 0:
        raise ValueError("areas must hold at least the first frame's area")
    if image_area <= 0:
        raise ValueError(f"image_area must be positive, got {image_area}")
    if points_scale <= 0:
        raise ValueError(f"points_scale must be positive, got {points_scale}")
    k = _round_half_up(float(areas[0]) / float(image_area) * alpha)  # Eq. 4
    if moved or _changes_strongly([float(a) for a in areas]):  # Eq. 5
        k = max(k, MIN_POINTS_CHANGING)
    k = min(max(k, MIN_POINTS), MAX_POINTS)
    return max(1, _round_half_up(k * points_scale))


@dataclass
class ControlPoints:
    """Control trajectories of a clip (paper Eq. 3): N points over F frames.

    Attributes:
        xy: ``(F, N, 2)`` float32 pixel coordinates ``(x, y)``.
        distance: ``(F, N)`` float32 distance sampled at each point (Eq. 2).
        instance: ``(N,)`` int64 object id of each point.
        visible: ``(F, N)`` bool, False where the point's object has no pixel in that frame; ``xy``
            and ``distance`` then hold the last known values.
    """

    xy: Tensor
    distance: Tensor
    instance: Tensor
    visible: Tensor

    @property
    def num_frames(self) -> int:
        """Number of frames F."""
        return int(self.xy.shape[0])

    @property
    def num_points(self) -> int:
        """Number of control points N."""
        return int(self.xy.shape[1])

    def to_json(self) -> dict[str, Any]:
        """Plain lists for ``controls.json`` (frame-major, like the tensors)."""
        return {
            "num_frames": self.num_frames,
            "num_points": self.num_points,
            "instance": self.instance.tolist(),
            "xy": self.xy.tolist(),
            "distance": self.distance.tolist(),
            "visible": self.visible.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ControlPoints:
        """Inverse of :meth:`to_json`."""
        frames, points = int(data["num_frames"]), int(data["num_points"])
        xy = torch.tensor(data["xy"], dtype=torch.float32).reshape(frames, points, 2)
        return cls(
            xy=xy,
            distance=torch.tensor(data["distance"], dtype=torch.float32).reshape(frames, points),
            instance=torch.tensor(data["instance"], dtype=torch.int64).reshape(points),
            visible=torch.tensor(data["visible"], dtype=torch.bool).reshape(frames, points),
        )


# --------------------------------------------------------------------------------------------
# K-means (Eq. 1): k-means++ seeding on frame 0, Lloyd iterations, warm starts on later frames.
# --------------------------------------------------------------------------------------------


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``(n, k)`` squared Euclidean distances between points and centres."""
    dx = points[:, 0:1] - centres[None, :, 0]
    dy = points[:, 1:2] - centres[None, :, 1]
    return dx * dx + dy * dy


def _kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding: each new centre is the best of a few D^2-sampled candidates."""
    n = points.shape[0]
    trials = 2 + int(math.log(k))
    centres = np.empty((k, 2), dtype=np.float64)
    centres[0] = points[rng.integers(n)]
    closest = ((points - centres[0]) ** 2).sum(axis=1)
    for j in range(1, k):
        total = closest.sum()
        if total <= 0.0:  # every point already sits on a centre
            centres[j] = points[rng.integers(n)]
            continue
        picks = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
        picks = np.minimum(picks, n - 1)
        candidate_d2 = np.minimum(closest[None, :], _squared_distances(points, points[picks]).T)
        best = int(candidate_d2.sum(axis=1).argmin())
        centres[j], closest = points[picks[best]], candidate_d2[best]
    return centres


def _relocate_empty(
    centres: np.ndarray, points: np.ndarray, labels: np.ndarray, d2: np.ndarray, empty: np.ndarray
) -> None:
    """Move empty clusters onto the points farthest from their centres (distinct points)."""
    far = np.argsort(-d2[np.arange(points.shape[0]), labels], kind="stable")
    centres[empty] = points[far[: int(empty.sum())]]


def _lloyd(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Lloyd iterations from ``centres`` until assignments stop changing (centre order kept)."""
    centres = centres.astype(np.float64, copy=True)
    k = centres.shape[0]
    labels: np.ndarray | None = None
    for _ in range(MAX_LLOYD_ITERATIONS):
        d2 = _squared_distances(points, centres)
        new_labels = d2.argmin(axis=1)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        counts = np.bincount(labels, minlength=k)
        filled = counts > 0
        for c in range(2):
            sums = np.bincount(labels, weights=points[:, c], minlength=k)
            centres[filled, c] = sums[filled] / counts[filled]
        if not filled.all():
            _relocate_empty(centres, points, labels, d2, ~filled)
    return centres


def _sort_canonical(centres: np.ndarray) -> np.ndarray:
    """Sort centres by (y, x) so frame 0's point order does not depend on the seeding."""
    return centres[np.lexsort((centres[:, 0], centres[:, 1]))]


def _first_frame_centres(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Frame 0: k-means++ then Lloyd, sorted by (y, x); fewer than k pixels are repeated."""
    if points.shape[0] <= k:
        return _sort_canonical(np.resize(points, (k, 2)))
    return _sort_canonical(_lloyd(points, _kmeans_plus_plus(points, k, rng)))


def _next_frame_centres(points: np.ndarray, previous: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Later frames: warm start from the previous centres (point i stays point i).

    The previous centres are first moved by the displacement of the object's centroid, so a
    translation of any speed starts Lloyd at the translated solution (an exact fixed point for
    a rigid shift). With fewer pixels than centres, each centre snaps to its nearest pixel.
    """
    start = previous + shift
    if points.shape[0] < previous.shape[0]:
        return points[_squared_distances(start, points).argmin(axis=1)].astype(np.float64)
    return _lloyd(points, start)


# --------------------------------------------------------------------------------------------
# Control points of a clip (Eq. 1-3)
# --------------------------------------------------------------------------------------------


def _object_pixels(mask: np.ndarray, subsample: int, k: int) -> np.ndarray:
    """``(n, 2)`` float (x, y) of the mask's pixels, every ``subsample``-th in raster order.

    If subsampling leaves fewer than ``k`` pixels, all pixels are used.
    """
    flat = np.flatnonzero(mask)
    chosen = flat[::subsample]
    if chosen.shape[0] < k:
        chosen = flat
    rows, cols = np.divmod(chosen, mask.shape[1])
    return np.stack([cols, rows], axis=1).astype(np.float64)


def _sample_distance(distance: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Eq. 2: the distance map at each point's rounded position, clamped in the image."""
    h, w = distance.shape
    cols = np.clip(np.floor(xy[:, 0] + 0.5).astype(np.int64), 0, w - 1)
    rows = np.clip(np.floor(xy[:, 1] + 0.5).astype(np.int64), 0, h - 1)
    return distance[rows, cols]


def _track_object(
    masks: np.ndarray, distance: np.ndarray, k: int, subsample: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K-means points of one object over the clip: ``xy (F,k,2)``, ``dist (F,k)``, ``vis (F,)``."""
    frames = masks.shape[0]
    xy = np.zeros((frames, k, 2), dtype=np.float64)
    dist = np.zeros((frames, k), dtype=np.float64)
    visible = np.zeros(frames, dtype=bool)
    centres: np.ndarray | None = None
    centroid = np.zeros(2)
    for f in range(frames):
        points = _object_pixels(masks[f], subsample, k)
        if points.shape[0] == 0:  # vanished: keep the last known values
            xy[f], dist[f] = xy[f - 1], dist[f - 1]
            continue
        new_centroid = points.mean(axis=0)
        if centres is None:
            centres = _first_frame_centres(points, k, rng)
        else:
            centres = _next_frame_centres(points, centres, new_centroid - centroid)
        centroid = new_centroid
        xy[f], dist[f], visible[f] = centres, _sample_distance(distance[f], centres), True
    return xy, dist, visible


def _as_numpy(tensor: Tensor) -> np.ndarray:
    """CPU numpy view of a tensor."""
    return tensor.detach().cpu().numpy()


def compute_control_points(
    instance: Tensor,
    distance: Tensor,
    moved_ids: Collection[int],
    points_scale: float = 1.0,
    alpha: float = DEFAULT_ALPHA,
    subsample: int = 10,
    seed: int = 0,
    max_points: int | None = None,
) -> ControlPoints:
    """K-means control trajectories of a rendered clip (paper Eq. 1-3, k from Eq. 4-5).

    Every object id present in frame 0 (ascending) gets ``k`` points (:func:`num_control_points`,
    first-frame area). Per frame, K-means runs on the object's pixel coordinates, every
    ``subsample``-th pixel in raster order (all pixels if that leaves fewer than ``k``; pixels
    repeated if the object has fewer than ``k``). Frame 0 is seeded by k-means++ with a fixed
    seed and its centres sorted by (y, x); each later frame warm-starts from the previous
    centres (moved by the object's centroid displacement), so point ``i`` keeps its identity.
    The distance at each point is read from that frame's distance map (Eq. 2). Points of an
    object with no pixel in a frame are invisible there and keep their last values.

    Args:
        instance: ``(F, H, W)`` int64 object ids, 0 = background.
        distance: ``(F, H, W)`` float distance maps (larger = farther).
        moved_ids: ids of objects that the trajectories move (Eq. 5 gives them ``k >= 3``).
        points_scale: the release's multiplier of ``k``.
        alpha: Eq. 4's alpha.
        subsample: keep every ``subsample``-th pixel before clustering.
        seed: seed of the frame-0 k-means++ (each object draws from ``(seed, id)``).
        max_points: cap on ``k`` per object (1: the single-point setting of Tab. S1, the
            object's mask centroid).

    Returns:
        Points ordered by object id, then by cluster index.
    """
    if instance.dim() != 3 or distance.shape != instance.shape:
        raise ValueError(
            f"instance and distance must both be (F, H, W); got {tuple(instance.shape)} "
            f"and {tuple(distance.shape)}"
        )
    if subsample < 1:
        raise ValueError(f"subsample must be >= 1, got {subsample}")
    ids_map, dist_map = _as_numpy(instance), _as_numpy(distance)
    frames, h, w = ids_map.shape
    moved = {int(i) for i in moved_ids}
    xys, dists, vis, owners = [], [], [], []
    for obj in np.unique(ids_map[0][ids_map[0] > 0]).tolist():
        masks = ids_map == obj
        k = num_control_points(
            masks.sum(axis=(1, 2)).tolist(), h * w, obj in moved, alpha, points_scale
        )
        if max_points is not None:
            k = min(k, max_points)
        rng = np.random.default_rng([seed, obj])
        xy, dist, visible = _track_object(masks, dist_map, k, subsample, rng)
        xys.append(xy)
        dists.append(dist)
        vis.append(np.repeat(visible[:, None], k, axis=1))
        owners.append(np.full(k, obj, dtype=np.int64))
    if not owners:
        xys, dists = [np.zeros((frames, 0, 2))], [np.zeros((frames, 0))]
        vis, owners = [np.zeros((frames, 0), dtype=bool)], [np.zeros(0, dtype=np.int64)]
    return ControlPoints(
        xy=torch.from_numpy(np.concatenate(xys, axis=1)).float(),
        distance=torch.from_numpy(np.concatenate(dists, axis=1)).float(),
        instance=torch.from_numpy(np.concatenate(owners)),
        visible=torch.from_numpy(np.concatenate(vis, axis=1)),
    )


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


def resize_nearest(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``(F, H, W)`` instance or distance maps resized to ``size`` by nearest neighbour (ids and
    depths must never be blended)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    resized = torch.nn.functional.interpolate(maps[:, None].double(), size=size, mode="nearest")
    return resized[:, 0].to(maps.dtype)


def control_signal(
    instance: Tensor,
    distance: Tensor,
    moved_ids: Collection[int],
    size: tuple[int, int] | None = None,
    points_scale: float = 1.0,
    seed: int = 0,
    variant: str = "full",
) -> tuple[ControlPoints, Tensor]:
    """Instance and distance maps of a clip -> LeviTor control points and control maps.

    The one path from masks to the ControlNet's input: inference (masks and depth rendered from
    a MotionSpec) and training (ground-truth masks and depth of a video) both call it. Maps are
    resized to ``size`` (the generation size) by nearest neighbour first.

    ``variant`` selects the paper's ablations (`CONTROL_VARIANTS`): ``single_point`` keeps one
    point per object (k = 1, Tab. S1), ``no_depth`` and ``no_instance`` zero channel 2 or 1
    (Tab. 2). A ControlNet must be fed the variant it was trained on (its config says which).

    Returns:
        The points and the ``(F, 3, H, W)`` raw 0..255 control maps (:func:`control_maps`).
    """
    size = tuple(size or instance.shape[-2:])
    instance, distance = resize_nearest(instance, size), resize_nearest(distance, size)
    if variant not in CONTROL_VARIANTS:
        raise ValueError(f"unknown control variant {variant!r} (use {', '.join(CONTROL_VARIANTS)})")
    points = compute_control_points(
        instance,
        distance,
        moved_ids,
        points_scale=points_scale,
        seed=seed,
        max_points=1 if variant == "single_point" else None,
    )
    maps = control_maps(points, size, first_frame_depth_range(distance))
    if variant == "no_instance":
        maps[:, 1] = 0.0
    elif variant == "no_depth":
        maps[:, 2] = 0.0
    return points, maps
