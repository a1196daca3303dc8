"""AnyI2V's boxes and query points from the MotionSpec (`anima.methods.anyi2v.boxes`)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_scene

from anima.animation import build_animation
from anima.errors import InputError
from anima.methods.anyi2v.boxes import CAMERA_TRACK_ID, box_tracks, follow_anchor
from anima.spec import parse_spec

SIZE = (96, 160)


def spec_with(objects: list[dict], camera: dict | None = None, frames: int = 8):
    data = {"version": 1, "image": "unused.png", "num_frames": frames, "objects": objects}
    if camera is not None:
        data["camera"] = camera
    return parse_spec(data)


def tracks(objects: list[dict], camera: dict | None = None, **kwargs):
    scene = make_scene(SIZE, objects={1: ((40, 30, 60, 50), 2.0), 2: ((100, 40, 120, 70), 3.0)})
    spec = spec_with(objects, camera)
    return box_tracks(spec, scene, build_animation(spec, scene), **kwargs), scene


def moving(object_id: int, box=None, points=None, end=(80.0, 40.0, 4.0)) -> dict:
    obj: dict = {
        "id": object_id,
        "trajectory": [
            {"t": 0, "x": 50, "y": 40, "depth": 2.0},
            {"t": 1, "x": end[0], "y": end[1], "depth": end[2]},
        ],
    }
    if box is not None:
        obj["box"] = box
    if points is not None:
        obj["points"] = points
    return obj


def test_a_box_taken_from_distance_2_to_4_halves_about_its_anchor() -> None:
    (track,), _ = tracks([moving(1, box=[40, 30, 60, 50])])
    first, last = track.boxes[0], track.boxes[-1]
    torch.testing.assert_close(first, torch.tensor([40.0, 30.0, 60.0, 50.0], dtype=torch.float64))
    assert float(last[2] - last[0]) == pytest.approx(10.0)
    assert float(last[3] - last[1]) == pytest.approx(10.0)
    # the anchor (50, 40) sat at the box's centre; the end anchor (80, 40) does too
    assert float((last[0] + last[2]) / 2) == pytest.approx(80.0)
    assert float((last[1] + last[3]) / 2) == pytest.approx(40.0)


def test_the_start_box_of_a_mask_selection_is_its_bounding_box() -> None:
    obj = moving(2)
    (track,), _ = tracks([obj | {"polygon": [[100, 40], [119, 40], [119, 69], [100, 69]]}])
    torch.testing.assert_close(
        track.boxes[0], torch.tensor([100.0, 40.0, 119.0, 69.0], dtype=torch.float64)
    )


def test_query_points_are_the_clicks_or_kmeans_points_of_the_mask() -> None:
    given = {1: [(45.0, 35.0), (55.0, 45.0)]}
    (chosen,), _ = tracks([moving(1, box=[40, 30, 60, 50])], given_points=given)
    assert chosen.query_points.tolist() == [[45.0, 35.0], [55.0, 45.0]]
    (clicked,), _ = tracks([moving(1, points=[[45, 35], [52, 41]])])
    assert clicked.query_points.tolist() == [[45.0, 35.0], [52.0, 41.0]]
    (found,), scene = tracks([moving(1, box=[40, 30, 60, 50])])
    assert len(found.query_points) >= 3  # a moved object gets at least 3 (LeviTor Eq. 5)
    x, y = found.query_points.round().long().unbind(-1)
    assert bool((scene.instance[y, x] == 1).all())


def test_an_end_box_sets_the_size_linearly() -> None:
    boxes = follow_anchor(
        torch.tensor([40.0, 30.0, 60.0, 50.0], dtype=torch.float64),
        torch.tensor([[50.0, 40.0, 2.0], [60.0, 40.0, 2.0], [70.0, 40.0, 2.0]]),
        end_box=torch.tensor([0.0, 0.0, 40.0, 10.0], dtype=torch.float64),
    )
    sizes = boxes[:, 2:] - boxes[:, :2]
    torch.testing.assert_close(
        sizes, torch.tensor([[20.0, 20.0], [30.0, 15.0], [40.0, 10.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        (boxes[:, 0] + boxes[:, 2]) / 2, torch.tensor([50.0, 60.0, 70.0], dtype=torch.float64)
    )


def test_two_objects_and_a_camera_pan_give_three_tracks() -> None:
    pan = {"type": "pan", "x": 0.2}
    found, _ = tracks(
        [moving(1, box=[40, 30, 60, 50]), moving(2, box=[100, 40, 120, 70], end=(110, 55, 3.0))],
        camera=pan,
    )
    assert [t.object_id for t in found] == [1, 2, CAMERA_TRACK_ID]
    camera = found[-1].boxes
    torch.testing.assert_close(
        camera[0], torch.tensor([0.0, 0.0, 159.0, 95.0], dtype=torch.float64), atol=1e-6, rtol=0
    )
    widths = camera[:, 2] - camera[:, 0]
    torch.testing.assert_close(widths, torch.full_like(widths, 159.0), atol=0.5, rtol=0)
    assert float(camera[-1, 0]) < -20  # the camera goes right: the frame's box moves left


def test_a_box_outside_the_image_in_every_frame_is_refused() -> None:
    far = moving(1, box=[40, 30, 60, 50], end=(50, 40, 2.0))
    far["box"] = [400, 300, 420, 320]
    far["trajectory"] = [
        {"t": 0, "x": 410, "y": 310, "depth": 2},
        {"t": 1, "x": 500, "y": 310, "depth": 2},
    ]
    with pytest.raises(InputError, match="outside the image in every frame"):
        tracks([far])


def test_query_points_outside_their_box_are_refused() -> None:
    with pytest.raises(InputError, match="query point lies outside"):
        tracks([moving(1, box=[40, 30, 60, 50])], given_points={1: [(10.0, 10.0)]})
