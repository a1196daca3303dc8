"""Masks found in the perception grid are brought to a finer working grid along the photo's edges.

A synthetic photo larger than the perception grid (a smooth background and an anti-aliased
red disc) is segmented by GrabCut in the perception grid and the mask upsampled with the photo
as a guide (`anima.perception.upsampling.upsample_mask`, the guided filter of He, Sun and Tang,
"Guided Image Filtering"). Every pixel farther than 2 px from the true outline must be right;
nearest neighbour, the previous way, misses that bar. To keep the test fast the perception grid
is capped at 512 x 512 pixels instead of a megapixel: a 2400 x 1800 photo is then upsampled by
a factor of 4, more than the factor of 3.4 of a 12-megapixel photo perceived at a megapixel.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import anima.scene as scene_module
from anima.perception.segmentation import mask_from_box
from anima.perception.upsampling import guided_filter, upsample_mask, upsampling_factor
from anima.scene import (
    SELECTION_GROWTH,
    build_scene,
    object_mask,
    perception_size,
    resize_distance,
    resize_mask,
)
from anima.spec import parse_spec
from anima.weights import Weights

HEIGHT, WIDTH = 1800, 2400
CENTRE, RADIUS = (0.55 * HEIGHT, 0.45 * WIDTH), 0.3 * HEIGHT
BAR = 2.0  # pixels from the true outline beyond which every pixel must be classified right


def _photo() -> tuple[np.ndarray, np.ndarray]:
    """The (H, W, 3) float32 photo in [0, 1] and the signed distance (pixels) to the disc's
    outline (negative inside)."""
    yy, xx = np.ogrid[0:HEIGHT, 0:WIDTH]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    photo = np.empty((HEIGHT, WIDTH, 3), np.float32)
    photo[..., 0] = 0.35 + 0.25 * yy / HEIGHT
    photo[..., 1] = 0.45 + 0.1 * xx / WIDTH
    photo[..., 2] = 0.55 - 0.2 * yy / HEIGHT
    signed = np.sqrt((yy - CENTRE[0]) ** 2 + (xx - CENTRE[1]) ** 2) - RADIUS
    cover = np.clip(0.5 - signed, 0.0, 1.0)[..., None]
    photo += cover * (np.array([0.85, 0.3, 0.15], np.float32) - photo)
    photo += 0.01 * np.random.default_rng(0).standard_normal(photo.shape, dtype=np.float32)
    return np.clip(photo, 0.0, 1.0, out=photo), signed


@pytest.fixture(scope="module")
def photo() -> tuple[np.ndarray, np.ndarray]:
    return _photo()


@pytest.fixture
def small_perception(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """Perception capped at 512 x 512 pixels (module docstring); its grid for the photo."""
    monkeypatch.setattr(scene_module, "PERCEPTION_MAX_PIXELS", 512 * 512)
    return perception_size((HEIGHT, WIDTH))


def _save(image: np.ndarray, path: Path) -> None:
    Image.fromarray((image * 255).round().astype(np.uint8)).save(path, compress_level=1)


def _box() -> list[float]:
    half = 1.2 * RADIUS
    return [CENTRE[1] - half, CENTRE[0] - half, CENTRE[1] + half, CENTRE[0] + half]


def _errors(mask: np.ndarray, signed: np.ndarray) -> int:
    """Pixels farther than `BAR` from the outline that ``mask`` gets wrong."""
    return int(((mask != (signed <= 0)) & (np.abs(signed) > BAR)).sum())


def test_the_guided_filter_keeps_constants_and_follows_a_step() -> None:
    guide = np.zeros((40, 40, 3), np.float32)
    guide[:, 20:] = (0.9, 0.2, 0.1)
    flat = np.full((40, 40), 0.7, np.float32)
    assert np.allclose(guided_filter(guide, flat, 4, 1e-3), 0.7, atol=1e-4)
    blurred = np.zeros((40, 40), np.float32)
    blurred[:, 17:] = 0.5  # a soft step three pixels off the guide's edge
    blurred[:, 23:] = 1.0
    out = guided_filter(guide, blurred, 6, 1e-3)
    assert (out[:, :20] < 0.5).all() and (out[:, 20:] > 0.5).all()
    grey = guided_filter(guide[..., 0], blurred, 6, 1e-3)
    assert (grey[:, :20] < 0.5).all() and (grey[:, 20:] > 0.5).all()


def test_an_upsampled_grabcut_mask_follows_the_photo_edges(photo, small_perception) -> None:
    image, signed = photo
    height, width = small_perception
    factor = upsampling_factor(small_perception, (HEIGHT, WIDTH))
    assert factor > 3.4
    seen = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    sx, sy = width / WIDTH, height / HEIGHT
    x0, y0, x1, y1 = _box()
    seen_box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    found = mask_from_box(torch.from_numpy(seen.transpose(2, 0, 1)), seen_box)

    nearest = resize_mask(found, (HEIGHT, WIDTH)).numpy()
    assert _errors(nearest, signed) > 100  # staircase steps of about 4 px: the bar is missed

    guided = upsample_mask(found, torch.from_numpy(image.transpose(2, 0, 1))).numpy()
    assert _errors(guided, signed) == 0


def test_build_scene_upsamples_masks_and_distances_along_the_photo_edges(
    photo, small_perception, tmp_path: Path
) -> None:
    image, signed = photo
    _save(image, tmp_path / "photo.png")
    data = {"version": 1, "image": "photo.png", "objects": [{"id": 1, "box": _box()}]}
    scene = build_scene(parse_spec(data, base_dir=tmp_path), Weights())
    assert scene.size == (HEIGHT, WIDTH)
    mask = scene.mask(1).numpy()

    # the mask is the disc grown by SELECTION_GROWTH perception pixels (as working pixels)
    growth = round(SELECTION_GROWTH * upsampling_factor(small_perception, (HEIGHT, WIDTH)))
    inside = (signed <= 0).astype(np.uint8)
    grown = cv2.dilate(inside, np.ones((2 * growth + 1,) * 2, np.uint8)) > 0
    outside_far = cv2.distanceTransform((~grown).astype(np.uint8), cv2.DIST_L2, 5)
    inside_far = cv2.distanceTransform(grown.astype(np.uint8), cv2.DIST_L2, 5)
    far = np.maximum(outside_far, inside_far) > BAR
    assert int(((mask != grown) & far).sum()) == 0

    # the object's distance (the ground-plane prior: its contact row's) covers exactly the mask
    distance = scene.distance.numpy()
    value = float(np.median(distance[mask]))
    assert np.allclose(distance[mask], value, rtol=1e-5)
    bottom = int(np.nonzero(mask.any(axis=1))[0][-1])
    same = np.isclose(distance, value, rtol=1e-4)
    assert (same == mask)[: bottom - 10].all()  # below, the ground is as near as the object


def test_resize_distance_never_takes_another_instances_distance() -> None:
    """A working pixel of an instance with no pixel of that instance near it in the coarse
    grid takes the distance of that instance's nearest pixel, never the background's."""
    distance = torch.full((8, 8), 10.0)
    instance = torch.zeros((8, 8), dtype=torch.int64)
    distance[2:6, 2:6] = 3.0
    instance[2:6, 2:6] = 1
    target = torch.zeros((32, 32), dtype=torch.int64)
    target[4:28, 4:28] = 1  # reaches two coarse pixels past the object
    out = resize_distance(distance, instance, target)
    assert torch.allclose(out[target == 1], torch.tensor(3.0))
    assert torch.allclose(out[target == 0], torch.tensor(10.0))


def test_masks_are_not_upsampled_when_the_working_grid_is_not_finer(photo, tmp_path: Path) -> None:
    """At or below the perception grid the mask is the nearest-neighbour resize of the grown
    perception mask (`object_mask`), as before."""
    small = cv2.resize(photo[0], (300, 225), interpolation=cv2.INTER_AREA)
    _save(small, tmp_path / "photo.png")
    box = [v / 12 for v in _box()]
    data = {"version": 1, "image": "photo.png", "size": [150, 200]}
    spec = parse_spec(data | {"objects": [{"id": 1, "box": box}]}, base_dir=tmp_path)
    scene = build_scene(spec, Weights())
    found = object_mask(spec.objects[0], 0, spec, scene.image, Weights())
    assert found.shape == (225, 300)
    assert torch.equal(scene.mask(1), resize_mask(found, (150, 200)))
