"""Geometric truths of the point renderer: identity, perspective scaling, occlusion, camera."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import EXAMPLES, make_scene

from anima.animation import build_animation
from anima.render import background_plate, render
from anima.scene import build_scene
from anima.spec import load_spec, parse_spec


def spec_for(objects: list[dict], num_frames: int = 8, camera: dict | None = None):
    data = {"version": 1, "image": "unused.png", "num_frames": num_frames, "objects": objects}
    if camera is not None:
        data["camera"] = camera
    return parse_spec(data)


def path(x0, y0, d0, x1, y1, d1) -> list[dict]:
    return [{"t": 0, "x": x0, "y": y0, "depth": d0}, {"t": 1, "x": x1, "y": y1, "depth": d1}]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def test_identity_trajectory_reproduces_a_real_photo() -> None:
    spec = load_spec(EXAMPLES / "astronaut_behind.json")
    spec.num_frames = 4
    first = spec.objects[0].trajectory[0]
    for obj in spec.objects:  # every keyframe equal to the first: the object stays
        obj.trajectory = [first.model_copy(update={"t": 0.0}), first.model_copy(update={"t": 1})]
    scene = build_scene(spec)
    result = render(scene, build_animation(spec, scene))
    for frame in result.rgb:
        assert psnr(frame, scene.image) >= 40.0
    assert bool(result.visible.all())


@pytest.mark.parametrize(("d0", "d1"), [(5.0, 2.5), (5.0, 10.0), (4.0, 3.0)])
def test_perspective_area_scales_with_inverse_square_distance(d0: float, d1: float) -> None:
    scene = make_scene(size=(240, 320), objects={1: ((120, 80, 200, 160), d0)})
    spec = spec_for(
        [{"id": 1, "box": [120, 80, 200, 160], "trajectory": path(160, 120, d0, 160, 120, d1)}]
    )
    result = render(scene, build_animation(spec, scene))
    area0 = int((result.instance[0] == 1).sum())
    area1 = int((result.instance[-1] == 1).sum())
    expected = (d0 / d1) ** 2
    assert abs(area1 / area0 - expected) <= 0.10 * expected
    # no holes inside the object: its silhouette is a filled rectangle
    ys, xs = torch.nonzero(result.instance[-1] == 1, as_tuple=True)
    inside = result.instance[-1, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert bool((inside == 1).all())


def test_magnified_object_keeps_its_texture() -> None:
    scene = make_scene(size=(120, 200), objects={1: ((90, 50, 110, 70), 6.0)})
    ramp = torch.linspace(0, 1, 200).expand(120, 200)
    scene.image = torch.stack([ramp, ramp * 0.5, 1 - ramp])  # smooth: resampling is exact-ish
    spec = spec_for(
        [{"id": 1, "box": [90, 50, 110, 70], "trajectory": path(100, 60, 6, 100, 60, 2)}]
    )
    result = render(scene, build_animation(spec, scene))
    # the object grows 3x about its anchor; its pixels keep the colour of the point they show
    assert torch.allclose(result.rgb[-1, :, 60, 100], scene.image[:, 60, 100], atol=0.01)
    left_edge = scene.image[:, 60, 90]
    assert torch.allclose(result.rgb[-1, :, 60, 100 - 28], left_edge, atol=0.02)


def test_object_moved_behind_a_nearer_region_is_hidden_and_in_front_covers_it() -> None:
    objects = {1: ((20, 40, 50, 70), 5.0), 2: ((120, 20, 180, 100), 3.0)}
    scene = make_scene(size=(120, 200), objects=objects)
    wall = [{"id": 2, "box": [120, 20, 180, 100]}]
    behind = spec_for(
        [{"id": 1, "box": [20, 40, 50, 70], "trajectory": path(35, 55, 5, 150, 55, 5)}] + wall
    )
    result = render(scene, build_animation(behind, scene))
    assert int((result.instance[-1] == 1).sum()) == 0  # fully hidden by the nearer object 2
    assert int((result.instance[-1] == 2).sum()) == 60 * 80

    front = spec_for(
        [{"id": 1, "box": [20, 40, 50, 70], "trajectory": path(35, 55, 5, 150, 55, 2.5)}] + wall
    )
    result = render(scene, build_animation(front, scene))
    covered = result.instance[-1, 40:70, 130:170]
    assert bool((covered == 1).all())  # it is nearer than the wall: it covers it


def test_disoccluded_background_comes_from_the_plate_and_is_not_visible() -> None:
    scene = make_scene(size=(96, 160), objects={1: ((20, 30, 50, 60), 5.0)})
    spec = spec_for([{"id": 1, "box": [20, 30, 50, 60], "trajectory": path(35, 45, 5, 120, 45, 5)}])
    plate = background_plate(scene)
    result = render(scene, build_animation(spec, scene), plate=plate)
    hole = result.rgb[-1, :, 30:60, 20:50]
    assert torch.allclose(hole, plate.rgb[:, 30:60, 20:50])
    assert not bool(result.visible[-1, 30:60, 20:50].any())
    assert bool(result.visible[-1, 30:60, 105:135].all())
    assert int(result.instance[-1, 45, 120]) == 1


def test_static_camera_and_no_objects_is_exact_for_every_frame() -> None:
    scene = make_scene()
    result = render(scene, build_animation(spec_for([]), scene))
    assert torch.equal(result.rgb, scene.image.expand_as(result.rgb))
    assert torch.equal(result.distance[0], scene.distance)


def test_pan_moves_the_image_against_the_camera_by_the_expected_pixels() -> None:
    scene = make_scene(size=(96, 160), background=10.0)
    spec = spec_for([], camera={"type": "pan", "x": 0.1})
    result = render(scene, build_animation(spec, scene))
    focal = float(scene.intrinsics[0, 0])
    shift = focal * 0.1 * 10.0 / 10.0  # camera moves 1 unit right at distance 10: 13.86 px
    whole, fraction = int(shift), shift - int(shift)
    assert 0.1 < fraction < 0.9  # a sub-pixel shift: nearest-pixel splatting would be off
    width = 160 - whole - 1
    expected = (1 - fraction) * scene.image[:, :, whole : whole + width] + fraction * (
        scene.image[:, :, whole + 1 : whole + 1 + width]
    )
    assert torch.allclose(result.rgb[-1, :, :, :width], expected, atol=1e-4)
    hidden = round(shift)
    assert not bool(result.visible[-1, :, -hidden:].any())  # newly seen border: not observed


def test_zoom_and_dolly_magnify_without_holes() -> None:
    scene = make_scene(size=(96, 160), background=10.0)
    ramp = torch.linspace(0, 1, 160).expand(96, 160)
    scene.image = torch.stack([ramp, ramp * 0.5, 1 - ramp])  # smooth: resampling is exact-ish
    for camera in ({"type": "zoom", "factor": 2.0}, {"type": "dolly", "distance": 0.5}):
        result = render(scene, build_animation(spec_for([], camera=camera), scene))
        assert bool(result.visible[-1].all()), camera
        centre = scene.image[:, 48, 80]
        assert torch.allclose(result.rgb[-1, :, 48, 80], centre, atol=0.1)


def test_orbit_keeps_the_pivot_at_the_image_centre() -> None:
    scene = make_scene(size=(97, 161), objects={1: ((70, 38, 90, 58), 5.0)}, background=12.0)
    spec = spec_for(
        [{"id": 1, "box": [70, 38, 90, 58]}], camera={"type": "orbit", "degrees": 20, "pivot": 5.0}
    )
    result = render(scene, build_animation(spec, scene))
    assert int(result.instance[-1, 48, 80]) == 1
    # the far background shifts sideways relative to the pivot (parallax)
    assert not torch.equal(result.rgb[-1, :, 10, 10], scene.image[:, 10, 10])
