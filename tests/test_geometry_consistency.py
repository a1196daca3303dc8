"""Consistent geometry: frame 0 is always the photo, the scene does not depend on the working
size, selections are checked before perception, and inputs that cannot do what they seem to
say are warned about."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, make_scene
from PIL import Image

from anima.animation import build_animation
from anima.camera import rotation_matrix
from anima.errors import InputError
from anima.render import render
from anima.scene import (
    Scene,
    build_scene,
    check_selections,
    perception_size,
    working_size,
)
from anima.spec import MotionSpec, load_spec, parse_spec

SIZES = (256, 512, 1024)  # the astronaut photo is 512x512
COMMON = 256


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


# --------------------------------------------------------------------------- camera keyframes


def _camera_spec(keyframes: list[dict]) -> MotionSpec:
    return parse_spec(
        {
            "version": 1,
            "image": "unused.png",
            "num_frames": 4,
            "objects": [{"id": 1, "box": [40, 30, 70, 60]}],
            "camera": {"type": "keyframes", "keyframes": keyframes},
        }
    )


@pytest.mark.parametrize(
    "keyframes",
    [
        pytest.param(
            [
                {"t": 0.5, "position": [0.5, 0.2, -0.3], "rotation": [2, 5, 1], "zoom": 1.3},
                {"t": 1.0, "position": [1.0, 0.0, 0.5], "zoom": 1.1},
            ],
            id="first-keyframe-at-t-0.5",
        ),
        pytest.param(
            [
                {"t": 0.0, "position": [0.4, -0.2, 0.3], "rotation": [3, -4, 2], "zoom": 0.8},
                {"t": 1.0, "position": [1.0, 0.0, 0.5], "rotation": [0, 8, 0]},
            ],
            id="non-identity-pose-at-t-0",
        ),
    ],
)
def test_camera_keyframes_start_at_the_photo(keyframes: list[dict]) -> None:
    scene = make_scene(size=(96, 160), objects={1: ((40, 30, 70, 60), 6.0)})
    animation = build_animation(_camera_spec(keyframes), scene)
    assert torch.equal(animation.world_to_camera[0], torch.eye(4, dtype=torch.float64))
    assert torch.equal(animation.intrinsics[0], scene.intrinsics)
    assert not animation.camera_static  # the camera does move after frame 0
    result = render(scene, animation)
    assert psnr(result.rgb[0], scene.image) >= 45.0  # was a mean error of 27 levels
    assert float((result.rgb[0] - scene.image).abs().mean()) < 1e-3
    assert bool(result.visible[0].all())


def test_camera_keyframes_move_relative_to_the_pose_at_t0() -> None:
    scene = make_scene(size=(96, 160), background=10.0)
    rotation0, position0 = [0.0, 10.0, 0.0], [0.5, 0.0, 1.0]
    position1 = [1.5, 0.0, 1.0]
    spec = _camera_spec(
        [
            {"t": 0.0, "position": position0, "rotation": rotation0, "zoom": 2.0},
            {"t": 1.0, "position": position1, "rotation": rotation0, "zoom": 3.0},
        ]
    )
    spec.objects = []
    animation = build_animation(spec, scene)
    # C_1' = C_0^-1 C_1: the same rotation, so only the displacement, seen by the first camera
    turn = rotation_matrix(torch.tensor(rotation0, dtype=torch.float64))
    moved = turn.T @ (torch.tensor(position1) - torch.tensor(position0)).double()
    last = animation.world_to_camera[-1]
    assert torch.allclose(last[:3, :3], torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(last[:3, 3], -moved, atol=1e-12)
    assert float(animation.intrinsics[-1, 0, 0] / scene.intrinsics[0, 0]) == pytest.approx(1.5)


# --------------------------------------------------------------------------- size independence


def _astronaut_at(size: int, num_frames: int = 4) -> MotionSpec:
    """The astronaut example at a working size of size x size, its coordinates scaled (boxes
    by their edges, trajectory points by their pixel centres)."""
    spec = load_spec(EXAMPLES / "astronaut_behind.json")
    scale = size / 512
    spec.size = (size, size)
    spec.num_frames = num_frames
    for obj in spec.objects:
        if obj.box is not None:
            obj.box = tuple(v * scale for v in obj.box)
        else:  # polygon vertices are pixel centres, like trajectory points
            assert obj.polygon is not None
            obj.polygon = [
                ((x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5) for x, y in obj.polygon
            ]
        obj.trajectory = [
            kf.model_copy(update={"x": (kf.x + 0.5) * scale - 0.5, "y": (kf.y + 0.5) * scale - 0.5})
            for kf in obj.trajectory
        ]
    return spec


def _lanczos(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(F, 3, H, W) frames at size x size, Lanczos per channel (as `read_image` resizes)."""
    out = np.empty((*frames.shape[:2], size, size), np.float32)
    for index, channel in np.ndindex(*frames.shape[:2]):
        plane = Image.fromarray(frames[index, channel].numpy().astype(np.float32))
        out[index, channel] = np.asarray(plane.resize((size, size), Image.Resampling.LANCZOS))
    return torch.from_numpy(out).clamp(0, 1)


@pytest.fixture(scope="module")
def astronaut_runs() -> dict[int, tuple[Scene, torch.Tensor]]:
    """Scene and coarse render of the astronaut example at every size in `SIZES`."""
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for size in SIZES:
            spec = _astronaut_at(size)
            scene = build_scene(spec)
            runs[size] = (scene, render(scene, build_animation(spec, scene)).rgb)
    return runs


def test_object_distances_do_not_depend_on_the_working_size(astronaut_runs) -> None:
    medians = {
        size: {i: float(scene.distance[scene.mask(i)].median()) for i in scene.object_ids}
        for size, (scene, _frames) in astronaut_runs.items()
    }
    reference = medians[512]
    # the example's keyframe depth is the shuttle's distance (it was 50 at 256 and 16 at 1024)
    shuttle = load_spec(EXAMPLES / "astronaut_behind.json").objects[0]
    assert reference[1] == pytest.approx(shuttle.trajectory[0].depth, rel=0.01)
    for size in SIZES:
        for object_id, distance in medians[size].items():
            assert distance == pytest.approx(reference[object_id], rel=0.01), (size, object_id)


def test_rendered_frames_do_not_depend_on_the_working_size(astronaut_runs) -> None:
    reference = _lanczos(astronaut_runs[512][1], COMMON)
    for size in SIZES:
        frames = _lanczos(astronaut_runs[size][1], COMMON)
        for f in range(frames.shape[0]):
            assert psnr(frames[f], reference[f]) >= 30.0, (size, f)


def test_perception_size_depends_on_the_source_only() -> None:
    assert perception_size((512, 512)) == (512, 512)
    assert perception_size((3000, 4000)) == (886, 1182)
    height, width = perception_size((4000, 3000))
    assert height * width <= 1024 * 1024 and abs(height / width - 4 / 3) < 0.01


# --------------------------------------------------------------------------- selections


def _spec(tmp_path: Path, objects: list[dict], **extra) -> MotionSpec:
    data = {"version": 1, "image": str(EXAMPLES / "astronaut.png"), "objects": objects}
    return parse_spec(data | extra, base_dir=tmp_path)


@pytest.mark.parametrize(
    ("objects", "message", "where"),
    [
        (
            [{"id": 1, "box": [100, 100, 140, 140]}],
            "box [100.0, 100.0, 140.0, 140.0] lies outside the 64x64 image",
            "objects[0].box",
        ),
        (
            [{"id": 1, "box": [1, 1, 9, 9]}, {"id": 2, "points": [[5, 5], [70, 3]]}],
            "point (70, 3) lies outside the 64x64 image",
            "objects[1].points[1]",
        ),
    ],
)
def test_check_selections_needs_only_the_working_size(
    tmp_path: Path, objects: list[dict], message: str, where: str
) -> None:
    spec = _spec(tmp_path, objects, size=[64, 64])
    with pytest.raises(InputError) as caught:
        check_selections(spec, (64, 64))
    assert (caught.value.what, caught.value.where) == (message, where)
    with pytest.raises(InputError) as built:  # build_scene fails the same way
        build_scene(spec)
    assert (built.value.what, built.value.where) == (message, where)
    check_selections(spec, (512, 512))  # inside a larger image


def test_working_size_reads_the_header_with_exif_orientation(tmp_path: Path) -> None:
    assert working_size(_spec(tmp_path, [])) == (512, 512)
    assert working_size(_spec(tmp_path, [], size=[32, 48])) == (32, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated a quarter: W and H swap
    Image.new("RGB", (40, 24)).save(tmp_path / "turned.jpg", exif=exif)
    Image.new("RGB", (40, 24)).save(tmp_path / "plain.png")
    turned = parse_spec({"version": 1, "image": "turned.jpg"}, base_dir=tmp_path)
    plain = parse_spec({"version": 1, "image": "plain.png"}, base_dir=tmp_path)
    assert working_size(turned) == (40, 24) and working_size(plain) == (24, 40)
    missing = parse_spec({"version": 1, "image": "nope.png"}, base_dir=tmp_path)
    with pytest.raises(InputError, match="file not found"):
        working_size(missing)


# --------------------------------------------------------------------------- warnings


def _small_scene_spec(tmp_path: Path, trajectory: list[dict], image: str = "photo.png"):
    return parse_spec(
        {
            "version": 1,
            "image": image,
            "depth": "depth.npy",
            "objects": [{"id": 1, "box": [8, 8, 24, 24], "trajectory": trajectory}],
        },
        base_dir=tmp_path,
    )


@pytest.fixture
def small_inputs(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    np.save(tmp_path / "depth.npy", np.full((32, 32), 5.0, np.float32))
    return tmp_path


@pytest.mark.parametrize(
    ("trajectory", "message"),
    [
        ([{"t": 0.3, "x": 16, "y": 16, "depth": 5}], "give at least two keyframes"),
        (
            [{"t": t, "x": 16, "y": 16, "depth": 5, "rotation": [0, 0, 0]} for t in (0, 0.5, 1)],
            "all 3 keyframes are identical",
        ),
    ],
)
def test_a_trajectory_that_cannot_move_is_warned_about(
    small_inputs: Path, trajectory: list[dict], message: str
) -> None:
    with pytest.warns(UserWarning, match=message) as caught:
        build_scene(_small_scene_spec(small_inputs, trajectory))
    assert any(str(w.message).startswith("objects[0].trajectory") for w in caught)


def test_moving_and_empty_trajectories_are_not_warned_about(small_inputs: Path) -> None:
    moving = [{"t": 0, "x": 16, "y": 16, "depth": 5}, {"t": 1, "x": 20, "y": 16, "depth": 5}]
    for trajectory in (moving, []):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            build_scene(_small_scene_spec(small_inputs, trajectory))


def test_a_transparent_photo_is_warned_about(small_inputs: Path) -> None:
    rgba = np.full((32, 32, 4), 200, np.uint8)
    Image.fromarray(rgba).save(small_inputs / "translucent.png")  # alpha 200 < 255 everywhere
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(small_inputs / "solid.png")  # an alpha band, all opaque
    moving = [{"t": 0, "x": 16, "y": 16, "depth": 5}, {"t": 1, "x": 20, "y": 16, "depth": 5}]
    with pytest.warns(UserWarning, match="transparent pixels: they are composited on black"):
        build_scene(_small_scene_spec(small_inputs, moving, image="translucent.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_scene(_small_scene_spec(small_inputs, moving, image="solid.png"))
