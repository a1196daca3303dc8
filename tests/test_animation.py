"""Keyframe interpolation and camera paths."""

from __future__ import annotations

import numpy as np
import torch
from conftest import make_scene

from anima.animation import build_animation, interpolate_keyframes
from anima.camera import project, transform_points, unproject
from anima.spec import parse_spec


def test_pchip_passes_through_keyframes_is_monotone_and_clamps() -> None:
    times = [0.2, 0.5, 0.9]
    values = np.array([[0.0], [10.0], [11.0]])
    at = np.linspace(0, 1, 101)
    out = interpolate_keyframes(times, values, at)[:, 0]
    assert np.allclose(interpolate_keyframes(times, values, np.array(times))[:, 0], [0, 10, 11])
    assert np.all(np.diff(out) >= -1e-12)  # monotone data -> monotone path, no overshoot
    assert out[0] == 0.0 and out[-1] == 11.0  # held outside the keyframes


def test_anchor_follows_the_trajectory_in_3d() -> None:
    scene = make_scene(size=(96, 160), objects={1: ((40, 30, 60, 50), 5.0)})
    traj = [{"t": 0, "x": 50, "y": 40, "depth": 5}, {"t": 1, "x": 120, "y": 60, "depth": 8}]
    spec = parse_spec(
        {
            "version": 1,
            "image": "x.png",
            "num_frames": 5,
            "objects": [{"id": 1, "box": [40, 30, 60, 50], "trajectory": traj}],
        }
    )
    animation = build_animation(spec, scene)
    anchor0 = unproject(torch.tensor([50.0, 40.0]), torch.tensor(5.0), scene.intrinsics)
    moved = transform_points(animation.object_poses[1][-1], anchor0[None])
    xy, z = project(moved, scene.intrinsics)
    assert torch.allclose(xy[0], torch.tensor([120.0, 60.0], dtype=xy.dtype), atol=1e-6)
    assert abs(float(z[0]) - 8.0) < 1e-9
    assert animation.moved_ids == {1}


def test_rotation_keyframes_turn_the_object_about_its_centre() -> None:
    scene = make_scene(size=(96, 160), objects={1: ((40, 30, 60, 50), 5.0)})
    traj = [
        {"t": 0, "x": 50, "y": 40, "depth": 5, "rotation": [0, 0, 0]},
        {"t": 1, "x": 50, "y": 40, "depth": 5, "rotation": [0, 0, 90]},
    ]
    spec = parse_spec(
        {
            "version": 1,
            "image": "x.png",
            "num_frames": 3,
            "objects": [{"id": 1, "box": [40, 30, 60, 50], "trajectory": traj}],
        }
    )
    pose = build_animation(spec, scene).object_poses[1][-1]
    assert torch.allclose(pose[:3, :3] @ pose[:3, :3].T, torch.eye(3, dtype=pose.dtype))
    centre = scene.points()[scene.mask(1)].mean(dim=0)
    assert torch.allclose(transform_points(pose, centre[None])[0], centre, atol=1e-9)


def test_camera_presets() -> None:
    scene = make_scene(size=(96, 160), background=10.0)
    base = {"version": 1, "image": "x.png", "num_frames": 4}
    zoom = build_animation(parse_spec(base | {"camera": {"type": "zoom", "factor": 2}}), scene)
    assert torch.allclose(zoom.intrinsics[-1, 0, 0], 2 * scene.intrinsics[0, 0])
    dolly = build_animation(
        parse_spec(base | {"camera": {"type": "dolly", "distance": 0.5}}), scene
    )
    assert torch.allclose(dolly.world_to_camera[-1, 2, 3], torch.tensor(-5.0, dtype=torch.float64))
    orbit = build_animation(
        parse_spec(base | {"camera": {"type": "orbit", "degrees": 30, "pivot": 6.0}}), scene
    )
    pivot = torch.tensor([[0.0, 0.0, 6.0]], dtype=torch.float64)
    for f in range(4):
        seen = transform_points(orbit.world_to_camera[f], pivot)[0]
        assert torch.allclose(seen, pivot[0], atol=1e-9)  # the pivot stays straight ahead
    assert not orbit.camera_static and zoom.intrinsics.shape == (4, 3, 3)
    keyframes = {"type": "keyframes", "keyframes": [{"t": 0}, {"t": 1, "position": [1, 0, 0]}]}
    path = build_animation(parse_spec(base | {"camera": keyframes}), scene)
    assert torch.allclose(path.world_to_camera[-1, 0, 3], torch.tensor(-1.0, dtype=torch.float64))
