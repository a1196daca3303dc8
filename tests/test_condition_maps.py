"""Conditional images drawn from the scene (`anima.perception.condition_maps`)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_scene

from anima.palette import colour
from anima.perception.condition_maps import CONDITION_MAPS, condition_map
from anima.scene import Scene


def step_scene() -> Scene:
    """Left half dark, right half bright; object 1 nearer (distance 2) than the wall (10)."""
    scene = make_scene((64, 96), objects={1: ((20, 16, 44, 48), 2.0)})
    image = torch.full((3, 64, 96), 0.1)
    image[:, :, 48:] = 0.9
    return Scene(image, scene.distance, scene.instance, scene.intrinsics, scene.object_ids)


@pytest.mark.parametrize("kind", [*CONDITION_MAPS, "as_is"])
def test_every_map_is_a_float_image_of_the_scene_size(kind: str) -> None:
    out = condition_map(kind, step_scene())
    assert out.shape == (3, 64, 96) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_canny_marks_the_step_and_nothing_flat() -> None:
    edges = condition_map("canny", step_scene())[0]
    assert bool((edges[:, 46:50] > 0).any(dim=1).all())  # every row crosses the step
    assert float(edges[:, :40].sum()) == 0 and float(edges[:, 56:].sum()) == 0


def test_depth_is_near_white_far_black() -> None:
    depth = condition_map("depth", step_scene())[0]
    assert float(depth[30, 30]) == pytest.approx(1.0)  # the object at distance 2
    assert float(depth[5, 5]) == pytest.approx(0.0)  # the wall at 10


def test_normals_of_a_plane_facing_the_camera_and_of_a_floor() -> None:
    facing = condition_map("normal", make_scene((32, 48)))  # constant distance: a wall
    torch.testing.assert_close(facing[:, 16, 24], torch.tensor([0.5, 0.5, 1.0]), atol=1e-3, rtol=0)
    scene = make_scene((32, 48))
    rows = torch.arange(32, dtype=torch.float32)[:, None].expand(32, 48)
    floor = Scene(scene.image, 40.0 / (rows + 8.0), scene.instance, scene.intrinsics, [])
    up = condition_map("normal", floor)[:, 20, 24]  # nearer at the bottom: a floor
    assert float(up[1]) > 0.75 and float(up[2]) > 0.5  # points up (G) and towards us (B)


def test_sketch_draws_a_dark_stroke_and_leaves_flat_paper_blank() -> None:
    scene = make_scene((40, 40))
    image = torch.ones(3, 40, 40)
    image[:, :, 19:21] = 0.0  # a black vertical stroke
    lines = condition_map(
        "sketch", Scene(image, scene.distance, scene.instance, scene.intrinsics, [])
    )
    assert bool((lines[0][:, 19:21] == 1).all())
    assert float(lines[0][:, :12].sum()) == 0 and float(lines[0][:, 28:].sum()) == 0


def test_segmentation_colours_each_object() -> None:
    scene = make_scene((40, 60), objects={3: ((0, 0, 10, 10), 2.0), 7: ((30, 20, 40, 30), 3.0)})
    out = condition_map("segmentation", scene)
    torch.testing.assert_close(out[:, 5, 5], torch.tensor(colour(3), dtype=torch.float32) / 255)
    torch.testing.assert_close(out[:, 25, 35], torch.tensor(colour(7), dtype=torch.float32) / 255)
    assert float(out[:, 15, 20].sum()) == 0
