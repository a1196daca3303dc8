"""Strong magnification: a surface brought very near stays filled, or is clipped by the near
plane, and its area follows perspective until it fills the frame (`anima.render` footprints)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_scene
from scipy.ndimage import binary_fill_holes

import anima.render as render_module
from anima.animation import build_animation
from anima.render import background_plate, near_plane, render
from anima.spec import parse_spec

SIZE = (120, 160)
BOX = (76, 58, 84, 64)  # 8 x 6 pixels at distance 5, anchored at its centre (80, 61)
ANCHOR = (80.0, 61.0)


def move_spec(d1: float, rotation: tuple[float, float, float] | None = None, num_frames: int = 3):
    end = {"t": 1, "x": ANCHOR[0], "y": ANCHOR[1], "depth": d1}
    if rotation is not None:
        end["rotation"] = list(rotation)
    trajectory = [{"t": 0, "x": ANCHOR[0], "y": ANCHOR[1], "depth": 5.0}, end]
    data = {
        "version": 1,
        "image": "unused.png",
        "num_frames": num_frames,
        "objects": [{"id": 1, "box": list(BOX), "trajectory": trajectory}],
    }
    return parse_spec(data)


def expected_area(scale: float) -> float:
    """Pixels of the frame covered by the object's source squares scaled about the anchor."""
    (x0, y0, x1, y1), (ax, ay) = BOX, ANCHOR
    height, width = SIZE
    left, right = ax + (x0 - 0.5 - ax) * scale, ax + (x1 - 0.5 - ax) * scale
    top, bottom = ay + (y0 - 0.5 - ay) * scale, ay + (y1 - 0.5 - ay) * scale
    span_x = min(right, width - 0.5) - max(left, -0.5)
    span_y = min(bottom, height - 0.5) - max(top, -0.5)
    return max(span_x, 0.0) * max(span_y, 0.0)


def assert_filled(mask: torch.Tensor) -> None:
    """The silhouette has no holes: filling its outer contour changes nothing."""
    assert bool(mask.any())
    filled = torch.from_numpy(binary_fill_holes(mask.numpy()))
    assert torch.equal(filled, mask)


@pytest.mark.parametrize("d1", [0.5, 0.1, 0.05])
def test_object_brought_near_stays_filled_and_grows_with_inverse_square(d1: float) -> None:
    scene = make_scene(size=SIZE, objects={1: (BOX, 5.0)})
    result = render(scene, build_animation(move_spec(d1), scene))
    mask = result.instance[-1] == 1
    assert int((result.instance[0] == 1).sum()) == 48
    assert_filled(mask)
    # a rectangle: every pixel of its bounding box is the object's
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert bool(mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all())
    expected = expected_area(5.0 / d1)  # (d0 / d1)^2 x 48 until it fills the frame
    assert abs(int(mask.sum()) - expected) <= 0.10 * expected
    assert bool(result.visible[-1].all())  # every pixel shows an observed surface, no fill


def test_magnified_texture_is_looked_up_not_blocky() -> None:
    scene = make_scene(size=SIZE, objects={1: (BOX, 5.0)})
    ramp = torch.linspace(0, 1, SIZE[1]).expand(*SIZE)
    scene.image = torch.stack([ramp, ramp * 0.5, 1 - ramp])
    result = render(scene, build_animation(move_spec(0.5), scene))
    # 10 x magnification about x = 80: pixel x shows source x' = 80 + (x - 80) / 10, its colour
    # interpolated among the object's pixel centres 76..83 (held beyond them)
    row = result.rgb[-1, 0, 61, 35:115]
    source = 80 + (torch.arange(35, 115, dtype=torch.float32) - 80) / 10
    assert torch.allclose(row, source.clamp(76, 83) / (SIZE[1] - 1), atol=1e-3)
    assert int((result.instance[-1, 61] == 1).sum()) == 80


def test_turning_object_brought_near_stays_filled() -> None:
    scene = make_scene(size=SIZE, objects={1: (BOX, 5.0)})
    result = render(scene, build_animation(move_spec(0.5, rotation=(20.0, 35.0, 15.0)), scene))
    mask = result.instance[-1] == 1
    assert int(mask.sum()) > 20 * 48
    assert_filled(mask)


def test_object_past_the_near_plane_is_clipped() -> None:
    scene = make_scene(size=SIZE, objects={1: (BOX, 5.0)})
    assert near_plane(scene) == pytest.approx(render_module.NEAR_FRACTION * 5.0)
    plate = background_plate(scene)
    result = render(scene, build_animation(move_spec(0.02), scene), plate=plate)  # near: 0.025
    assert int((result.instance[-1] == 1).sum()) == 0
    assert torch.equal(result.rgb[-1], plate.rgb.clamp(0, 1))  # only the background is left


def test_object_turned_through_the_near_plane_is_cut_there() -> None:
    scene = make_scene(size=SIZE, objects={1: (BOX, 5.0)})
    # half its 0.29-unit width turned 80 degrees in depth about its centre at 0.05: one side
    # comes behind the camera, the other recedes
    result = render(scene, build_animation(move_spec(0.05, rotation=(0.0, 80.0, 0.0)), scene))
    mask = result.instance[-1] == 1
    assert_filled(mask)
    assert bool((result.distance[-1][mask] > near_plane(scene)).all())
    assert int(mask.sum()) < SIZE[0] * SIZE[1]  # the part beyond the near plane is gone


def test_footprints_in_small_chunks_render_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    scene = make_scene(size=SIZE, objects={1: (BOX, 5.0)})
    animation = build_animation(move_spec(0.1), scene)
    whole = render(scene, animation)
    monkeypatch.setattr(render_module, "_FOOTPRINT_BUDGET", 1000)  # one frame is 19200 pairs
    chunked = render(scene, animation)
    assert torch.equal(whole.instance, chunked.instance)
    assert torch.equal(whole.rgb, chunked.rgb)


def test_dolly_up_to_the_background_keeps_it_filled() -> None:
    scene = make_scene(size=SIZE, background=10.0)
    spec = parse_spec(
        {
            "version": 1,
            "image": "unused.png",
            "num_frames": 2,
            "objects": [],
            "camera": {"type": "dolly", "distance": 0.95},  # 20 x magnification
        }
    )
    result = render(scene, build_animation(spec, scene), fill_holes=False)
    assert bool(result.visible[-1].all())
