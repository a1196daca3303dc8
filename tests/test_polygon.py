"""Polygon selections: the rasterisation rule, the scene's grids, and the README's examples,
whose exact outlines make the shuttle pass wholly behind the astronaut and the rocket move whole
(checked on what ``anima animate --dump`` writes)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from PIL import Image

from anima.cli import main
from anima.errors import InputError
from anima.perception.segmentation import mask_from_polygon
from anima.scene import (
    SELECTION_GROWTH,
    Grids,
    build_scene,
    check_selections,
    object_mask,
)
from anima.spec import load_spec, parse_spec
from anima.weights import Weights

# --------------------------------------------------------------------------- rasterisation


def test_integer_vertices_are_pixel_centres_and_the_outline_belongs() -> None:
    square = mask_from_polygon((6, 6), [(1, 1), (3, 1), (3, 3), (1, 3)])
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[1:4, 1:4] = True  # pixels 1..3: the corners' pixels and the outline's are in
    assert torch.equal(square, expected)


def test_vertices_round_to_the_nearest_pixel_centre() -> None:
    # 0.6 -> 1 and 3.4 -> 3, half up: 0.5 -> 1 and 2.5 -> 3
    assert torch.equal(
        mask_from_polygon((6, 6), [(0.6, 0.6), (3.4, 0.6), (3.4, 3.4), (0.6, 3.4)]),
        mask_from_polygon((6, 6), [(1, 1), (3, 1), (3, 3), (1, 3)]),
    )
    half = mask_from_polygon((6, 6), [(0.5, 0.5), (2.5, 0.5), (2.5, 2.5), (0.5, 2.5)])
    assert half.nonzero().min().item() == 1 and half.nonzero().max().item() == 3


def test_triangle_is_its_pixels_and_no_others() -> None:
    triangle = mask_from_polygon((5, 5), [(0, 0), (4, 0), (0, 4)])
    rows = [[int(v) for v in row] for row in triangle.tolist()]
    assert rows == [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 0, 0, 0, 0],
    ]


def test_vertex_order_does_not_matter() -> None:
    outline = [(2.3, 1.2), (14.8, 3.1), (11.2, 12.7), (3.9, 9.4)]
    assert torch.equal(
        mask_from_polygon((16, 16), outline), mask_from_polygon((16, 16), outline[::-1])
    )


def test_far_vertices_are_clipped_not_overflowed() -> None:
    """Vertices far outside the image (OpenCV's fixed point would overflow) cover the image."""
    huge = [(-1e9, -1e9), (1e9, -1e9), (1e9, 1e9), (-1e9, 1e9)]
    assert bool(mask_from_polygon((7, 9), huge).all())
    half = mask_from_polygon((8, 8), [(-1e7, -1e7), (3, -1e7), (3, 1e7), (-1e7, 1e7)])
    assert half[:, :4].all() and not half[:, 4:].any()
    assert not mask_from_polygon((8, 8), [(20, 20), (30, 20), (25, 30)]).any()


def test_bad_polygons_are_input_errors() -> None:
    with pytest.raises(InputError, match="at least 3 vertices"):
        mask_from_polygon((8, 8), [(1, 1), (2, 2)])
    with pytest.raises(InputError, match="finite") as caught:
        mask_from_polygon((8, 8), [(1, 1), (float("nan"), 2), (3, 1)])
    assert caught.value.where == "polygon[1]"


# --------------------------------------------------------------------------- the scene


def _spec(tmp_path: Path, polygon: list, **extra) -> object:
    data = {
        "version": 1,
        "image": str(EXAMPLES / "astronaut.png"),
        "objects": [{"id": 1, "polygon": polygon}],
    }
    return parse_spec(data | extra, base_dir=tmp_path)


def test_polygon_is_exact_in_the_scene_and_not_grown(tmp_path: Path) -> None:
    outline = [[100, 100], [200, 110], [180, 220], [90, 190]]
    spec = _spec(tmp_path, outline)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scene = build_scene(spec)
    assert SELECTION_GROWTH > 0  # boxes and points are grown; a polygon is not
    assert torch.equal(scene.mask(1), mask_from_polygon((512, 512), outline))


def test_polygon_scales_through_the_perception_grid(tmp_path: Path) -> None:
    """At half the size the vertices scale by their pixel centres into the (source) perception
    grid and the working mask is rasterised at the working size itself."""
    outline = [[100, 100], [200, 110], [180, 220], [90, 190]]
    small = [[(x + 0.5) / 2 - 0.5, (y + 0.5) / 2 - 0.5] for x, y in outline]
    spec = _spec(tmp_path, small, size=[256, 256])
    grids = Grids((256, 256), (512, 512))
    assert np.allclose(grids.polygon(small), outline)
    image = torch.zeros(3, 256, 256)
    found = object_mask(spec.objects[0], 0, spec, image, Weights(None))
    assert torch.equal(found, mask_from_polygon((512, 512), outline))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scene = build_scene(spec)
    assert torch.equal(scene.mask(1), mask_from_polygon((256, 256), small))


def test_check_selections_names_a_polygon_outside_the_image(tmp_path: Path) -> None:
    spec = _spec(tmp_path, [[600, 10], [700, 10], [650, 90]])
    with pytest.raises(InputError) as caught:
        check_selections(spec, (512, 512))
    assert caught.value.where == "objects[0].polygon"
    assert "selects no pixel of the 512x512 image" in caught.value.what
    check_selections(spec, (1024, 1024))  # inside a larger image


# --------------------------------------------------------------------------- the examples

# Pixels chosen by looking at the photos (x, y), each well inside what it names: parts the old
# GrabCut boxes lost (the astronaut's neck ring and helmet, the shuttle's wings, booster tips and
# nozzle, the rocket's lower half).
ASTRONAUT_PROBES = {
    "hair top": (230, 20),
    "neck ring, left": (128, 172),
    "neck ring bracket": (116, 195),
    "neck ring, right": (296, 214),
    "shoulder": (340, 268),
    "arm": (28, 400),
    "helmet rim": (470, 380),
    "helmet": (400, 430),
}
SHUTTLE_PROBES = {
    "tank top": (413, 2),
    "left booster tip": (386, 42),
    "right booster tip": (444, 42),
    "left booster edge": (381, 70),
    "right booster edge": (453, 120),
    "left wing tip": (356, 222),
    "right wing tip": (454, 222),
    "engines": (398, 250),
    "booster nozzle": (449, 270),
}
ROCKET_PROBES = {
    "nose": (322, 130),
    "fairing, left": (312, 160),
    "fairing, right": (332, 160),
    "upper stage": (322, 200),
    "lower half": (322, 330),
    "bottom": (322, 404),
}
SHUTTLE, ASTRONAUT = 1, 2


def _maps(dump: Path, kind: str) -> np.ndarray:
    """(F, H, W) instance or visible maps, or (F, H, W, 3) frames, from a dump folder."""
    folder = dump / ("frames" if kind == "frames" else f"render/{kind}")
    files = sorted(folder.glob("*.png"))
    mode = "RGB" if kind == "frames" else "L"
    return np.stack([np.asarray(Image.open(f).convert(mode)) for f in files])


@pytest.fixture(scope="module")
def astronaut_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's main command, as it is: ``anima animate examples/astronaut_behind.json -o
    out.mp4 --dump d``."""
    folder = tmp_path_factory.mktemp("astronaut")
    spec = EXAMPLES / "astronaut_behind.json"
    assert (
        main(["animate", str(spec), "-o", str(folder / "out.mp4"), "--dump", str(folder / "d")])
        == 0
    )
    return folder / "d"


def test_examples_select_exactly_without_warnings() -> None:
    """The examples use polygons, and their first keyframes sit on their objects at the
    scene's distance (no warning), so the motion is what the keyframes say."""
    for name in ("astronaut_behind.json", "rocket_recede.json"):
        spec = load_spec(EXAMPLES / name)
        assert all(obj.polygon is not None for obj in spec.objects), name
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            scene = build_scene(spec)
        for obj in spec.objects:
            if obj.trajectory:
                first = obj.trajectory[0]
                here = float(scene.distance[round(first.y), round(first.x)])
                assert first.depth == pytest.approx(here, rel=0.02), name


def test_the_shuttle_never_shows_through_the_astronaut(astronaut_dump: Path) -> None:
    instance, frames = _maps(astronaut_dump, "instance"), _maps(astronaut_dump, "frames")
    for name, (x, y) in ASTRONAUT_PROBES.items():
        assert instance[0, y, x] == ASTRONAUT, name
    for name, (x, y) in SHUTTLE_PROBES.items():
        assert instance[0, y, x] == SHUTTLE, name
    astronaut = instance[0] == ASTRONAUT
    for f in range(len(instance)):
        assert (instance[f][astronaut] == ASTRONAUT).all(), f
        change = np.abs(frames[f].astype(int) - frames[0].astype(int))[astronaut]
        assert change.max() <= 1, f  # her pixels are the photo's in every frame
    # the shuttle really passes behind her: most of it is hidden in the middle of the clip
    middle = len(instance) // 2
    assert (instance[middle] == SHUTTLE).sum() < 0.5 * (instance[0] == SHUTTLE).sum()


def test_no_part_of_the_shuttle_is_left_behind(astronaut_dump: Path) -> None:
    instance, visible = _maps(astronaut_dump, "instance"), _maps(astronaut_dump, "visible")
    frames = _maps(astronaut_dump, "frames")
    last = len(instance) - 1
    shuttle = instance[0] == SHUTTLE
    uncovered = shuttle & (instance[last] == 0)
    assert uncovered.sum() > 0.9 * shuttle.sum()  # it moved away
    # where it was, no observed pixel is left: the background is filled in there
    assert not visible[last][uncovered].any()
    for name, (x, y) in SHUTTLE_PROBES.items():
        assert instance[last, y, x] != SHUTTLE and not visible[last, y, x], name
    # and no soft edge of it either: above the table, the area it stood in is smooth (every
    # pixel within 30 grey levels of its 9x9 median; the GrabCut box left edges of up to 65)
    grey = cv2.cvtColor(frames[last], cv2.COLOR_RGB2GRAY)
    contrast = np.abs(grey.astype(int) - cv2.medianBlur(grey, 9).astype(int))
    assert contrast[0:215, 345:465].max() <= 30


def test_the_rocket_moves_whole(tmp_path: Path) -> None:
    dump = tmp_path / "d"
    spec = EXAMPLES / "rocket_recede.json"
    argv = ["animate", str(spec), "-o", str(tmp_path / "r.mp4"), "--dump", str(dump), "-q"]
    assert main(argv) == 0
    instance, visible = _maps(dump, "instance"), _maps(dump, "visible")
    for name, (x, y) in ROCKET_PROBES.items():
        assert instance[0, y, x] == 1, name
        assert instance[-1, y, x] != 1 and not visible[-1, y, x], name
    rocket = instance[0] == 1
    assert not visible[-1][rocket & (instance[-1] == 0)].any()
    # receding from 4.1 to 10.4 scales its area by (4.1 / 10.4)^2
    data = json.loads(spec.read_text())["objects"][0]["trajectory"]
    expected = (data[0]["depth"] / data[-1]["depth"]) ** 2
    ratio = (instance[-1] == 1).sum() / rocket.sum()
    assert ratio == pytest.approx(expected, rel=0.15)
