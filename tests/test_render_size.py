"""Each method renders at the size it generates at: `Scene.resized`, `Animation.resized`.

(issue "Photos as people take them", part 2)"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import make_scene

from anima.animation import build_animation
from anima.camera import project, transform_points
from anima.methods.levitor import load_pipeline
from anima.methods.registry import get_method
from anima.render import render
from anima.scene import nearest_source_pixels
from anima.spec import parse_spec
from anima.weights import Weights

FULL = (240, 320)
BOX = (120, 90, 180, 150)  # x0, y0, x1, y1: 60 x 60 pixels at distance 6


def spec_coming_nearer(num_frames: int = 5):
    """The object moves right and down while coming from distance 6 to 3 (twice as large)."""
    path = [{"t": 0, "x": 150, "y": 120, "depth": 6}, {"t": 1, "x": 190, "y": 140, "depth": 3}]
    objects = [{"id": 1, "box": list(BOX), "trajectory": path}]
    return parse_spec(
        {"version": 1, "image": "x.png", "num_frames": num_frames, "objects": objects}
    )


def scene_full():
    scene = make_scene(size=FULL, objects={1: ((BOX[0], BOX[1], BOX[2], BOX[3]), 6.0)})
    ramp = torch.linspace(0, 1, FULL[1]).expand(*FULL)
    scene.image = torch.stack([ramp, 0.5 * ramp, 1 - ramp])
    return scene


def pixel_map(p: torch.Tensor, full: tuple[int, int], small: tuple[int, int]) -> torch.Tensor:
    """Pixel coordinates (..., 2) of the full grid in the small one."""
    scale = torch.tensor([small[1] / full[1], small[0] / full[0]], dtype=p.dtype)
    return (p + 0.5) * scale - 0.5


def test_same_size_is_identity() -> None:
    scene = scene_full()
    assert scene.resized(FULL) is scene
    animation = build_animation(spec_coming_nearer(), scene)
    assert animation.resized(FULL) is animation


@pytest.mark.parametrize("small", [(120, 160), (102, 136), (80, 128), (300, 400)])
def test_a_3d_point_projects_at_the_mapped_pixel(small: tuple[int, int]) -> None:
    scene = scene_full()
    resized = scene.resized(small)
    assert resized.size == small
    assert resized.image.shape == (3, *small) and resized.instance.dtype == torch.int64
    points = torch.tensor(
        [[0.3, -0.2, 4.0], [-1.0, 0.7, 9.0], [0.0, 0.0, 2.0]], dtype=torch.float64
    )
    full_xy, full_z = project(points, scene.intrinsics)
    small_xy, small_z = project(points, resized.intrinsics)
    assert torch.allclose(small_xy, pixel_map(full_xy, FULL, small), atol=1e-9)
    assert torch.equal(full_z, small_z)
    # the principal point stays the image centre, the field of view stays the same
    k = resized.intrinsics
    assert float(k[0, 2]) == pytest.approx((small[1] - 1) / 2)
    assert float(k[1, 2]) == pytest.approx((small[0] - 1) / 2)


def test_distance_and_instance_sampled_together() -> None:
    scene = scene_full()
    small = (102, 136)
    resized = scene.resized(small)
    rows = nearest_source_pixels(FULL[0], small[0])
    cols = nearest_source_pixels(FULL[1], small[1])
    assert torch.equal(resized.instance, scene.instance[rows][:, cols])
    # no edge pixel mixes the object's distance with the background's
    assert set(resized.distance.unique().tolist()) == {6.0, 10.0}
    assert bool((resized.distance[resized.instance == 1] == 6.0).all())
    # the nearest source pixel of a target centre: within half a source pixel of it
    centres = (torch.arange(small[1], dtype=torch.float64) + 0.5) * FULL[1] / small[1] - 0.5
    assert float((cols.double() - centres).abs().max()) <= 0.5
    # shrinking averages the image: a linear ramp keeps its value at the mapped positions
    expected = (centres / (FULL[1] - 1)).float()
    assert torch.allclose(resized.image[0, 50], expected, atol=1e-3)


def test_a_vanishing_object_keeps_its_id_with_an_empty_mask() -> None:
    scene = make_scene(size=FULL, objects={1: ((100, 100, 101, 101), 4.0)})  # one pixel
    resized = scene.resized((24, 32))
    assert resized.object_ids == [1]
    assert not bool(resized.mask(1).any())


def test_resized_animation_is_the_same_3d_motion_in_the_other_grid() -> None:
    scene = scene_full()
    small = (102, 136)
    spec = spec_coming_nearer()
    animation = build_animation(spec, scene)
    resized = animation.resized(small)
    assert resized.size == small and animation.size == FULL
    # 3D quantities are unchanged, pixel ones mapped
    assert torch.equal(resized.object_poses[1], animation.object_poses[1])
    assert torch.equal(resized.world_to_camera, animation.world_to_camera)
    assert torch.equal(resized.anchors[1][:, 2], animation.anchors[1][:, 2])
    mapped = pixel_map(animation.anchors[1][:, :2], FULL, small)
    assert torch.allclose(resized.anchors[1][:, :2], mapped, atol=1e-9)
    assert torch.allclose(resized.intrinsics, scene.resized(small).intrinsics.expand(5, 3, 3))

    # The same motion, built on the resized scene from a spec whose pixels are mapped too:
    # the same poses (a translation only) and anchors.
    data = spec.model_dump(mode="json", exclude_none=True)
    for keyframe in data["objects"][0]["trajectory"]:
        keyframe["x"], keyframe["y"] = pixel_map(
            torch.tensor([keyframe["x"], keyframe["y"]], dtype=torch.float64), FULL, small
        ).tolist()
    rebuilt = build_animation(parse_spec(data), scene.resized(small))
    assert torch.allclose(rebuilt.object_poses[1], resized.object_poses[1], atol=1e-9)
    assert torch.allclose(rebuilt.anchors[1], resized.anchors[1], atol=1e-9)
    assert torch.allclose(rebuilt.intrinsics, resized.intrinsics, atol=1e-12)
    # ... whereas the spec's working-size pixels read in the small grid move it elsewhere
    misread = build_animation(spec, scene.resized(small))
    assert not torch.allclose(misread.object_poses[1], resized.object_poses[1], atol=1e-3)

    # the anchor, moved by its pose, projects at the resized anchor in every frame
    first = scene.resized(small)
    anchor_3d = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)
    x0, y0, d0 = resized.anchors[1][0].tolist()
    k = first.intrinsics
    anchor_3d[0] = torch.tensor([(x0 - k[0, 2]) / k[0, 0] * d0, (y0 - k[1, 2]) / k[1, 1] * d0, d0])
    for f in range(spec.num_frames):
        xy, z = project(transform_points(resized.object_poses[1][f], anchor_3d), k)
        assert torch.allclose(xy[0], resized.anchors[1][f, :2], atol=1e-6)
        assert float(z[0]) == pytest.approx(float(resized.anchors[1][f, 2]))


def _boundary(instance: np.ndarray, pixels: int) -> np.ndarray:
    """Pixels within ``pixels`` of an instance edge (either side)."""
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    labels = instance.astype(np.uint8)
    grown, shrunk = cv2.dilate(labels, kernel), cv2.erode(labels, kernel)
    return grown != shrunk


@pytest.mark.parametrize("small", [(120, 160), (102, 136)])
def test_render_at_the_small_size_agrees_with_the_full_render_downsampled(
    small: tuple[int, int],
) -> None:
    scene = scene_full()
    spec = spec_coming_nearer()
    animation = build_animation(spec, scene)
    full = render(scene, animation)
    low = render(scene.resized(small), animation.resized(small))
    assert low.rgb.shape == (spec.num_frames, 3, *small)
    rows = nearest_source_pixels(FULL[0], small[0])
    cols = nearest_source_pixels(FULL[1], small[1])
    for f in range(spec.num_frames):
        sampled = full.instance[f][rows][:, cols]
        away = ~_boundary(sampled.numpy(), 1)
        agree = (low.instance[f] == sampled).numpy()[away].mean()
        assert agree >= 0.97, (f, agree)
        # the object's centroid is where the full render's centroid maps to
        ys, xs = torch.nonzero(full.instance[f] == 1, as_tuple=True)
        centre = torch.stack([xs.double().mean(), ys.double().mean()])
        ys, xs = torch.nonzero(low.instance[f] == 1, as_tuple=True)
        low_centre = torch.stack([xs.double().mean(), ys.double().mean()])
        assert float((low_centre - pixel_map(centre, FULL, small)).norm()) <= 1.0, f
    # it comes nearer: twice as wide in the last frame, at both sizes
    for result in (full, low):
        area = (result.instance == 1).sum(dim=(1, 2)).double()
        assert float(area[-1] / area[0]) == pytest.approx(4.0, rel=0.1)
    # distances are the scene's, not resampled into something else
    assert float(low.distance[-1][low.instance[-1] == 1].median()) == pytest.approx(3.0, rel=1e-3)


@pytest.fixture
def fresh_pipeline_cache():
    load_pipeline.cache_clear()
    yield
    load_pipeline.cache_clear()


@pytest.mark.usefixtures("fresh_pipeline_cache", "one_thread")
def test_levitor_renders_its_guidance_at_the_generation_size() -> None:
    scene = scene_full()
    spec = spec_coming_nearer(num_frames=3)
    cls = get_method("levitor")
    method = cls(cls.parse_options({}), Weights(builtin="tiny"), torch.device("cpu"), torch.float32)
    controls = method.prepare(spec, scene)
    assert controls.size == (96, 128)  # tiny weights: the longest side at most 128
    assert tuple(controls.render.rgb.shape[-2:]) == controls.size
    assert tuple(controls.render.instance.shape[-2:]) == controls.size
    assert tuple(controls.maps.shape[-2:]) == controls.size
    assert controls.scene is scene  # generate reads the full-size image
    # the object came nearer in the render made at the generation size
    area = (controls.render.instance == 1).sum(dim=(1, 2)).double()
    assert float(area[-1] / area[0]) == pytest.approx(4.0, rel=0.15)


@pytest.mark.usefixtures("fresh_pipeline_cache", "one_thread")
def test_levitor_copes_with_an_object_that_vanishes_at_the_generation_size() -> None:
    scene = make_scene(size=FULL, objects={1: ((BOX[0], BOX[1], BOX[2], BOX[3]), 6.0)})
    scene.instance[200, 20] = 2  # a one-pixel object: no pixel of it at 96 x 128
    scene.object_ids = [1, 2]
    spec = spec_coming_nearer(num_frames=3)
    data = spec.model_dump(mode="json", exclude_none=True)
    data["objects"].append({"id": 2, "box": [19, 199, 22, 202]})
    cls = get_method("levitor")
    method = cls(cls.parse_options({}), Weights(builtin="tiny"), torch.device("cpu"), torch.float32)
    controls = method.prepare(parse_spec(data), scene)
    assert set(controls.render.instance.unique().tolist()) == {0, 1}
