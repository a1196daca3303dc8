"""Tests of LeviTor's K-means control points and control maps (LeviTor Eq. 1-5)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from anima.control_points import (
    ControlPoints,
    _sample_distance,
    compute_control_points,
    num_control_points,
)
from anima.methods.levitor.controls import (
    CONTROL_VARIANTS,
    control_maps,
    control_signal,
    depth_to_disparity_255,
    disc_geometry,
    first_frame_depth_range,
)


def disc(size: tuple[int, int], centre: tuple[float, float], radius: float) -> torch.Tensor:
    """Boolean (H, W) disc mask around ``centre = (x, y)``."""
    yy, xx = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2


def clip_of(masks: list[list[tuple[int, torch.Tensor]]], size: tuple[int, int]) -> torch.Tensor:
    """(F, H, W) int64 instance maps from per-frame lists of (id, mask)."""
    instance = torch.zeros(len(masks), *size, dtype=torch.int64)
    for f, objects in enumerate(masks):
        for obj, mask in objects:
            instance[f][mask] = obj
    return instance


def flat_distance(instance: torch.Tensor) -> torch.Tensor:
    """Distance maps: 10 on the background, 3 on objects."""
    return torch.where(instance > 0, 3.0, 10.0)


# ----------------------------------------------------------------------------- k (Eq. 4-5)


@pytest.mark.parametrize(
    ("area", "expected"),
    [(50.0, 1), (300.0, 2), (1000.0, 5), (1500.0, 8), (2000.0, 8), (4000.0, 8)],
)
def test_k_follows_eq4_and_clamps(area: float, expected: int) -> None:
    # S / (H*W) * alpha with H*W = 10000, alpha = 50: 0.25 -> 1 (clamp), 1.5 -> 2, 5, 7.5 -> 8,
    # 10 -> 8 (clamp), 20 -> 8 (clamp).
    assert num_control_points([area, area], 10000.0, moved=False) == expected


def test_k_at_least_three_when_moved() -> None:
    assert num_control_points([50.0], 10000.0, moved=True) == 3
    assert num_control_points([1000.0], 10000.0, moved=True) == 5


def test_k_at_least_three_when_area_ratio_exceeds_ten() -> None:
    assert num_control_points([50.0, 4.0], 10000.0, moved=False) == 3  # ratio 12.5
    assert num_control_points([50.0, 5.0], 10000.0, moved=False) == 1  # ratio 10, not > 10
    assert num_control_points([4.0, 50.0], 10000.0, moved=False) == 3  # growth counts too
    assert num_control_points([50.0, 0.0, 50.0], 10000.0, moved=False) == 3  # vanishes


def test_k_uses_first_frame_area() -> None:
    assert num_control_points([1000.0, 3000.0], 10000.0, moved=False) == 5


def test_k_alpha_and_points_scale() -> None:
    assert num_control_points([1000.0], 10000.0, moved=False, alpha=20.0) == 2
    assert num_control_points([1000.0], 10000.0, moved=False, points_scale=0.5) == 3  # 2.5 up
    assert num_control_points([2000.0], 10000.0, moved=False, points_scale=2.0) == 16
    assert num_control_points([50.0], 10000.0, moved=False, points_scale=0.1) == 1


# ------------------------------------------------------------------ control points (Eq. 1-3)


def test_translated_disc_keeps_point_identity() -> None:
    size, step, frames = (160, 240), (4.0, 3.0), 8
    masks = [[(1, disc(size, (60 + step[0] * f, 50 + step[1] * f), 30))] for f in range(frames)]
    instance = clip_of(masks, size)
    points = compute_control_points(instance, flat_distance(instance), moved_ids={1})
    k = num_control_points([float(masks[0][0][1].sum())], size[0] * size[1], moved=True)
    assert points.xy.shape == (frames, k, 2)
    assert k >= 3
    for f in range(frames):
        expected = points.xy[0] + torch.tensor(step) * f
        assert torch.allclose(points.xy[f], expected, atol=1.0)
    assert bool(points.visible.all())


def test_first_frame_points_sorted_by_y_then_x() -> None:
    size = (120, 200)
    instance = clip_of([[(5, disc(size, (100, 60), 40))]], size)
    xy = compute_control_points(instance, flat_distance(instance), moved_ids=set()).xy[0]
    keys = [(float(y), float(x)) for x, y in xy]
    assert keys == sorted(keys)


def test_two_objects_ids_and_order() -> None:
    size = (120, 200)
    small, large = disc(size, (40, 40), 12), disc(size, (140, 70), 35)
    late = disc(size, (40, 100), 10)
    masks = [[(7, large), (3, small)], [(7, large), (3, small), (9, late)]]
    instance = clip_of(masks, size)
    points = compute_control_points(instance, flat_distance(instance), moved_ids={3})
    image_area = size[0] * size[1]
    k3 = num_control_points([float(small.sum())] * 2, image_area, moved=True)
    k7 = num_control_points([float(large.sum())] * 2, image_area, moved=False)
    assert points.instance.tolist() == [3] * k3 + [7] * k7  # id 9 is absent from frame 0
    for f in range(2):
        cols, rows = torch.floor(points.xy[f] + 0.5).long().unbind(-1)
        assert instance[f, rows, cols].tolist() == points.instance.tolist()


def test_vanishing_object_is_invisible_and_keeps_last_position() -> None:
    size = (100, 140)
    masks = [[(2, disc(size, (50 + 2 * f, 50), 15))] if f < 3 else [] for f in range(6)]
    masks[5] = [(2, disc(size, (60, 50), 15))]
    instance = clip_of(masks, size)
    points = compute_control_points(instance, flat_distance(instance), moved_ids=set())
    assert points.num_points >= 3  # vanishing counts as an area ratio > 10 (Eq. 5)
    assert points.visible[:, 0].tolist() == [True, True, True, False, False, True]
    for f in (3, 4):
        assert torch.equal(points.xy[f], points.xy[2])
        assert torch.equal(points.distance[f], points.distance[2])


def test_object_smaller_than_k_repeats_its_pixels() -> None:
    size = (40, 60)
    mask = torch.zeros(size, dtype=torch.bool)
    mask[10, 20:22] = True
    instance = clip_of([[(1, mask)], [(1, mask.roll(3, dims=1))]], size)
    points = compute_control_points(instance, flat_distance(instance), moved_ids={1})
    assert points.num_points == 3
    for f in range(2):
        cols, rows = points.xy[f].long().unbind(-1)
        assert bool((instance[f, rows, cols] == 1).all())


def test_distance_sampled_at_rounded_point() -> None:
    size, frames = (90, 130), 3
    masks = [[(4, disc(size, (50 + 5 * f, 45), 25))] for f in range(frames)]
    instance = clip_of(masks, size)
    yy, xx = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    ramp = (1.0 + xx + 1000.0 * yy).float()
    distance = torch.stack([ramp + 0.5 * f for f in range(frames)])
    points = compute_control_points(instance, distance, moved_ids={4})
    cols, rows = torch.floor(points.xy + 0.5).long().unbind(-1)
    expected = 1.0 + cols + 1000.0 * rows + 0.5 * torch.arange(frames)[:, None]
    assert torch.allclose(points.distance, expected.float())


def test_distance_sampling_clamps_to_image() -> None:
    ramp = np.arange(12, dtype=np.float32).reshape(3, 4)
    xy = np.array([[-3.0, -2.0], [9.0, 1.2], [1.4, 7.0]])
    assert _sample_distance(ramp, xy).tolist() == [0.0, 7.0, 9.0]


def test_no_objects_gives_no_points() -> None:
    instance = torch.zeros(2, 30, 40, dtype=torch.int64)
    points = compute_control_points(instance, flat_distance(instance), moved_ids=set())
    assert points.xy.shape == (2, 0, 2)
    maps = control_maps(points, (30, 40), (1.0, 10.0))
    assert maps.shape == (2, 3, 30, 40)
    assert not bool(maps.any())


def test_deterministic_and_json_round_trip() -> None:
    size = (120, 200)
    masks = [
        [(1, disc(size, (60 + 3 * f, 60), 30)), (2, disc(size, (150, 50), 20))] for f in [0, 1]
    ]
    instance = clip_of(masks, size)
    first = compute_control_points(instance, flat_distance(instance), moved_ids={1})
    second = compute_control_points(instance, flat_distance(instance), moved_ids={1})
    for name in ("xy", "distance", "instance", "visible"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    data = json.loads(json.dumps(first.to_json()))
    again = ControlPoints.from_json(data)
    assert torch.equal(again.xy, first.xy)
    assert torch.equal(again.visible, first.visible)
    assert torch.equal(again.instance, first.instance)
    size_maps = control_maps(first, size, (3.0, 10.0))
    assert torch.equal(size_maps, control_maps(second, size, (3.0, 10.0)))


# ------------------------------------------------------------------------------ control maps


def two_points(distances: tuple[float, float], second_x: float = 150.3) -> ControlPoints:
    """One frame with points 3 at (50, 40) and 4 at (second_x, 100.6)."""
    return ControlPoints(
        xy=torch.tensor([[[50.0, 40.0], [second_x, 100.6]]]),
        distance=torch.tensor([list(distances)]),
        instance=torch.tensor([3, 4]),
        visible=torch.ones(1, 2, dtype=torch.bool),
    )


def test_control_maps_values_at_centres() -> None:
    near, far = 1.0, 10.0
    maps = control_maps(two_points((2.0, 5.0)), (288, 512), (near, far))
    assert maps.shape == (1, 3, 288, 512)
    assert maps.dtype == torch.float32
    # objects 3 and 4 are numbered 1 and 2, as the release numbers its masks
    for (x, y), obj, d in [((50, 40), 1, 2.0), ((150, 101), 2, 5.0)]:
        assert maps[0, 0, y, x] == 255.0
        assert maps[0, 1, y, x] == obj
        expected = 255.0 * (1.0 / d - 1.0 / far) / (1.0 / near - 1.0 / far)
        assert maps[0, 2, y, x] == pytest.approx(expected, rel=1e-5)
    assert maps[0, 2, 40, 50] > maps[0, 2, 101, 150]  # nearer point, larger value
    assert maps[0, 0].max() == 255.0
    assert maps[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_depth_normalisation_is_disparity_like() -> None:
    values = depth_to_disparity_255(torch.tensor([0.5, 1.0, 2.0, 10.0, 20.0]), 1.0, 10.0)
    assert values[0] == 255.0 and values[1] == 255.0
    assert values[2] == pytest.approx(255.0 * (0.5 - 0.1) / 0.9)
    assert values[3] == 0.0 and values[4] == 0.0


def test_overlap_nearer_point_wins_instance_and_depth() -> None:
    for near_first in (True, False):
        distances = (2.0, 6.0) if near_first else (6.0, 2.0)
        points = ControlPoints(
            xy=torch.tensor([[[50.0, 40.0], [55.0, 40.0]]]),
            distance=torch.tensor([list(distances)]),
            instance=torch.tensor([3, 4]),
            visible=torch.ones(1, 2, dtype=torch.bool),
        )
        maps = control_maps(points, (288, 512), (1.0, 10.0))
        winner = 1 if near_first else 2  # objects 3, 4 are numbered 1, 2
        for x in (50, 52, 55):
            assert maps[0, 1, 40, x] == winner
            assert maps[0, 2, 40, x] == depth_to_disparity_255(torch.tensor(2.0), 1.0, 10.0)
            assert maps[0, 0, 40, x] > 0
        assert maps[0, 0, 40, 50] == 255.0 and maps[0, 0, 40, 55] == 255.0


def test_invisible_points_are_not_drawn() -> None:
    points = two_points((2.0, 5.0))
    points.visible[0, 1] = False
    maps = control_maps(points, (288, 512), (1.0, 10.0))
    assert maps[0, 0, 40, 50] == 255.0
    assert not bool(maps[0, :, 95:107, 144:157].any())


@pytest.mark.parametrize(("size", "radius"), [((288, 512), 10), ((576, 1024), 20), ((144, 96), 3)])
def test_disc_radius_scales_with_resolution(size: tuple[int, int], radius: int) -> None:
    assert disc_geometry(size)[0] == pytest.approx(radius, abs=0.34)
    x, y = size[1] // 2, size[0] // 2
    points = ControlPoints(
        xy=torch.tensor([[[float(x), float(y)]]]),
        distance=torch.tensor([[2.0]]),
        instance=torch.tensor([1]),
        visible=torch.ones(1, 1, dtype=torch.bool),
    )
    maps = control_maps(points, size, (1.0, 10.0))
    assert maps[0, 1, y, x + radius] == 1 and maps[0, 1, y, x + radius + 1] == 0
    assert maps[0, 1, y - radius, x] == 1 and maps[0, 1, y - radius - 1, x] == 0
    footprint = int((maps[0, 1] > 0).sum())
    assert abs(footprint - math.pi * disc_geometry(size)[0] ** 2) < 2 * math.pi * (radius + 1)
    assert bool(((maps[0, 0] > 0) == (maps[0, 1] > 0)).all())


def test_first_frame_depth_range() -> None:
    distance = torch.tensor([[[2.0, 5.0], [0.0, float("inf")]], [[0.5, 50.0], [1.0, 1.0]]])
    assert first_frame_depth_range(distance) == (2.0, 5.0)


def _two_objects_clip() -> tuple[torch.Tensor, torch.Tensor]:
    instance = torch.zeros(3, 64, 96, dtype=torch.long)
    instance[:, 10:40, 10:40] = 1
    instance[:, 20:50, 50:90] = 2
    distance = torch.full((3, 64, 96), 9.0)
    distance[instance == 1] = 2.0
    distance[instance == 2] = 4.0
    return instance, distance


@pytest.mark.parametrize("variant", CONTROL_VARIANTS)
def test_control_variants_are_the_papers_ablations(variant: str) -> None:
    instance, distance = _two_objects_clip()
    full_points, full = control_signal(instance, distance, {1, 2}, seed=3)
    points, maps = control_signal(instance, distance, {1, 2}, seed=3, variant=variant)
    if variant == "single_point":
        assert points.instance.tolist() == [1, 2]  # one point per object: its centre
        # (the centroid of every 10th pixel in raster order, as the release subsamples)
        centroids = torch.tensor([[24.5, 24.5], [69.5, 34.5]])
        assert (points.xy[0] - centroids).abs().max() <= 5.0
        assert full_points.num_points > 2
    else:
        assert torch.equal(points.xy, full_points.xy)
        unchanged = {"full": (0, 1, 2), "no_depth": (0, 1), "no_instance": (0, 2)}[variant]
        for channel in range(3):
            if channel in unchanged:
                assert torch.equal(maps[:, channel], full[:, channel])
            else:
                assert not maps[:, channel].any() and full[:, channel].any()


def test_unknown_control_variant() -> None:
    instance, distance = _two_objects_clip()
    with pytest.raises(ValueError, match="unknown control variant"):
        control_signal(instance, distance, {1}, variant="no_heatmap")
