"""K-means control points of object masks (LeviTor §3.2, Eq. 1-5).

An object of a clip is represented by ``k`` K-means centres of its mask (Eq. 1), each with the
distance sampled there (Eq. 2), which gives 3D trajectories (Eq. 3); ``k`` grows with the
object's area and with how strongly it changes (Eq. 4-5). LeviTor draws them into its control
maps; the coarse method and the studio show them, and every dump records them
(``controls.json``). Nothing here is specific to one method.

Two ways of placing the points: `compute_control_points` (ours: k-means++, k from the first
frame, warm starts that follow the object) and `compute_release_control_points` (the LeviTor
release's K-means, the placement its released ControlNet was trained on).

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
#: Longest side of the render that control points only shown to the user are computed on (the
#: coarse method's): K-means of masks needs no more, and a long clip at a photo's size is never
#: held whole for them.
POINTS_RENDER_MAX_SIDE = 256
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


# --------------------------------------------------------------------------------------------
# The LeviTor release's K-means (the "release" control-map convention)
# --------------------------------------------------------------------------------------------

#: The release clusters every 10th mask pixel in raster order.
RELEASE_SUBSAMPLE = 10


def release_num_control_points(
    areas: Sequence[float], image_area: float, moved: bool, alpha: float = DEFAULT_ALPHA
) -> int:
    """``k`` of one object before the points scale, as the LeviTor release computes it.

    Eq. 4 (LeviTor §3.2) on the object's LARGEST area over the clip, rounded with Python's
    ``round`` (halves to even), clamped to ``[1, 8]``; then Eq. 5: at least 3 when the object
    is moved or its max/min area ratio exceeds 10 (an area of 0 in some frame counts). Unlike
    `num_control_points` the points scale is applied later (`release_points_count`), because
    the release compares the unscaled ``k`` with the object's pixel count.
    """
    if len(areas) == 0:
        raise ValueError("areas must hold at least one frame's area")
    if image_area <= 0:
        raise ValueError(f"image_area must be positive, got {image_area}")
    k = round(float(max(areas)) * alpha / float(image_area))  # Eq. 4
    k = min(max(k, MIN_POINTS), MAX_POINTS)
    if moved or _changes_strongly([float(a) for a in areas]):  # Eq. 5
        k = max(k, MIN_POINTS_CHANGING)
    return k


def release_points_count(k: int, points_scale: float, max_points: int | None = None) -> int:
    """Points of an object: ``int(k * points_scale)`` (truncated, as the release does), at
    least 1, at most ``max_points`` when given."""
    if points_scale <= 0:
        raise ValueError(f"points_scale must be positive, got {points_scale}")
    count = max(1, int(k * points_scale))
    return count if max_points is None else min(count, max_points)


def _raster_pixels(mask: np.ndarray) -> np.ndarray:
    """``(n, 2)`` float32 ``(row, col)`` of every 10th mask pixel in raster order."""
    rows, cols = np.nonzero(mask)
    pixels = np.stack([rows, cols], axis=1).astype(np.float32)
    return pixels[::RELEASE_SUBSAMPLE]


def _evenly_spaced(pixels: np.ndarray, k: int) -> np.ndarray:
    """The release's K-means start: ``k`` of the pixels, ``n // k`` apart in raster order, the
    first at half that step (``n`` pixels, ``n >= k``)."""
    step = pixels.shape[0] // k
    return pixels[step // 2 + step * np.arange(k)]


def _centres_present(centres: np.ndarray, pixels: np.ndarray) -> bool:
    """The release's test for keeping its warm start: every centre "is in" the pixels in
    numpy's sense of ``in`` on arrays, i.e. some pixel shares its row or its column."""
    return all(bool((pixels == centre).any()) for centre in centres)


def _fit_kmeans(pixels: np.ndarray, start: np.ndarray) -> np.ndarray:
    """scikit-learn's K-means (Lloyd) on ``pixels`` from the centres ``start``, one run, in
    float32 as the release's pixel array is; the fitted centres in the order of ``start``."""
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # fewer distinct pixels than centres: not the user's concern
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = KMeans(n_clusters=start.shape[0], init=start, n_init=1).fit(pixels)
    return fitted.cluster_centers_.astype(np.float32)


def _release_track(
    masks: np.ndarray, distance: np.ndarray, k: int, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The release's K-means of one object over the clip: ``xy (F,count,2)`` as ``(x, y)``,
    ``dist (F,count)``, ``visible (F,)``; see `compute_release_control_points`."""
    frames = masks.shape[0]
    xy = np.zeros((frames, count, 2), dtype=np.float64)
    dist = np.zeros((frames, count), dtype=np.float64)
    visible = np.zeros(frames, dtype=bool)
    start: np.ndarray | None = None
    for f in range(frames):
        pixels = _raster_pixels(masks[f])
        if pixels.shape[0] < max(k, count):  # skipped in this frame: keep the last values
            if f > 0:
                xy[f], dist[f] = xy[f - 1], dist[f - 1]
            continue
        if start is None:
            start = _fit_kmeans(pixels, _evenly_spaced(pixels, count))
        elif not _centres_present(start, pixels):
            start = _evenly_spaced(pixels, count)
        centres = _fit_kmeans(pixels, start)  # (row, col)
        rows, cols = np.trunc(centres).astype(np.int64).T  # int() of each coordinate
        xy[f] = centres[:, ::-1]
        dist[f], visible[f] = distance[f, rows, cols], True
    return xy, dist, visible


def compute_release_control_points(
    instance: Tensor,
    distance: Tensor,
    moved_ids: Collection[int],
    points_scale: float = 1.0,
    alpha: float = DEFAULT_ALPHA,
    max_points: int | None = None,
) -> ControlPoints:
    """Control trajectories placed as the LeviTor release places them (LeviTor §3.2, Eq. 1-5).

    Every object id present in some frame (ascending) gets ``count`` points:
    ``k = release_num_control_points(areas)`` (its largest area over the clip), then
    ``count = release_points_count(k, points_scale, max_points)`` (``int`` truncation). Per
    frame, scikit-learn's K-means (Lloyd, one run) clusters every 10th mask pixel in raster
    order as float32 ``(row, col)``:

    - the first frame where the object is clustered starts from ``count`` evenly spaced pixels
      (`_evenly_spaced`: ``n // count`` apart in raster order, the first at half a step), and
      its fitted centres become the object's warm start;
    - every frame (that one included) fits from the warm start; before that, if some warm-start
      centre shares neither its row nor its column with any sampled pixel of the frame (the
      release's ``centre in pixels`` test on arrays), the warm start is replaced, for this and
      later frames, by this frame's evenly spaced pixels.

    An object is skipped in a frame (its points invisible there, keeping their last values)
    when it has fewer sampled pixels than ``k``, as in the release, or than ``count`` (where the
    release's K-means would stop with an error). ``xy`` holds the fitted centres as floats; the
    release truncates them with ``int()``, which the distance sampling here (Eq. 2, at
    ``(int(row), int(col))`` of that frame's map) and the release's drawing
    (`anima.methods.levitor.release_maps`) do.

    Args:
        instance: ``(F, H, W)`` int64 object ids, 0 = background.
        distance: ``(F, H, W)`` float distance maps (larger = farther).
        moved_ids: ids of objects that the trajectories move (Eq. 5 gives them ``k >= 3``).
        points_scale: the release's "points scale" multiplier of ``k``.
        alpha: Eq. 4's alpha.
        max_points: cap on the points of an object (1: the single-point setting of Tab. S1).

    Returns:
        Points ordered by object id, then by cluster index (the release's drawing order).
    """
    if instance.dim() != 3 or distance.shape != instance.shape:
        raise ValueError(
            f"instance and distance must both be (F, H, W); got {tuple(instance.shape)} "
            f"and {tuple(distance.shape)}"
        )
    ids_map, dist_map = _as_numpy(instance), _as_numpy(distance)
    frames, h, w = ids_map.shape
    moved = {int(i) for i in moved_ids}
    xys = [np.zeros((frames, 0, 2))]
    dists = [np.zeros((frames, 0))]
    vis = [np.zeros((frames, 0), dtype=bool)]
    owners = [np.zeros(0, dtype=np.int64)]
    for obj in np.unique(ids_map[ids_map > 0]).tolist():
        masks = ids_map == obj
        k = release_num_control_points(masks.sum(axis=(1, 2)).tolist(), h * w, obj in moved, alpha)
        count = release_points_count(k, points_scale, max_points)
        xy, dist, visible = _release_track(masks, dist_map, k, count)
        xys.append(xy)
        dists.append(dist)
        vis.append(np.repeat(visible[:, None], count, axis=1))
        owners.append(np.full(count, obj, dtype=np.int64))
    return ControlPoints(
        xy=torch.from_numpy(np.concatenate(xys, axis=1)).float(),
        distance=torch.from_numpy(np.concatenate(dists, axis=1)).float(),
        instance=torch.from_numpy(np.concatenate(owners)),
        visible=torch.from_numpy(np.concatenate(vis, axis=1)),
    )
