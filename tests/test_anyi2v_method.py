"""`anima animate --method anyi2v --weights tiny` end to end: two objects, the condition map in
the dump, boxes that follow the distance, and bad input as one line before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES

from anima.cli import main
from anima.io import read_image, read_video
from anima.methods.anyi2v import AnyI2VControls, load_pipeline, map_tracks
from anima.methods.anyi2v.boxes import BoxTrack
from anima.methods.registry import default_method, get_method
from anima.scene import generation_size
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

#: Few frames, steps and iterations, a short inversion: tiny models, a smoke test.
FAST = {
    "num_inference_steps": 2,
    "inversion_timestep": 3,
    "optimisation_iterations": 2,
    "injection_steps": [0],
    "optimisation_steps": [0, 1],
}


def spec_file(tmp_path: Path, options: dict | None = None, **changes) -> Path:
    """Two boxed objects on the cat photo at 48x72: 1 moves right, 2 goes from distance 2 to 4."""
    data = {
        "version": 1,
        "image": str((EXAMPLES / "chelsea.png").resolve()),
        "size": [48, 72],
        "num_frames": 4,
        "prompt": "a cat",
        "objects": [
            {
                "id": 1,
                "box": [4, 8, 30, 40],
                "trajectory": [
                    {"t": 0.0, "x": 17, "y": 24, "depth": 3.0},
                    {"t": 1.0, "x": 25, "y": 24, "depth": 3.0},
                ],
            },
            {
                "id": 2,
                "box": [40, 10, 68, 44],
                "trajectory": [
                    {"t": 0.0, "x": 54, "y": 27, "depth": 2.0},
                    {"t": 1.0, "x": 54, "y": 27, "depth": 4.0},
                ],
            },
        ],
        "options": FAST | (options or {}),
    } | changes
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(autouse=True)
def fresh_pipeline_cache():
    load_pipeline.cache_clear()
    yield
    load_pipeline.cache_clear()


def animate(spec: Path, out: Path, dump: Path) -> int:
    argv = ["animate", str(spec), "-o", str(out), "--method", "anyi2v", "--weights", "tiny"]
    return main([*argv, "--dump", str(dump), "-q"])


def test_two_objects_animate_and_the_boxes_follow_the_distance(tmp_path: Path) -> None:
    out, dump = tmp_path / "out.mp4", tmp_path / "dump"
    assert animate(spec_file(tmp_path), out, dump) == 0
    frames, _fps = read_video(out)
    assert frames.shape[0] == 4 and frames.shape[-2:] == (48, 72)
    controls = json.loads((dump / "controls.json").read_text())
    assert controls["condition"] == "as_is"
    assert controls["generation_size"] == [40, 64] == list(generation_size((48, 72), 64))
    assert sorted(controls["boxes"]) == ["1", "2"]
    boxes = torch.tensor(controls["boxes"]["2"])
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    torch.testing.assert_close(width[-1] / width[0], torch.tensor(0.5, dtype=width.dtype))
    torch.testing.assert_close(height[-1] / height[0], torch.tensor(0.5, dtype=width.dtype))
    moving = torch.tensor(controls["boxes"]["1"])
    assert moving[-1, 0] > moving[0, 0]  # object 1 moved right
    assert len(controls["query_points"]["1"]) >= 1
    assert (dump / "condition.png").is_file()


def test_a_canny_condition_is_written_into_the_dump(tmp_path: Path) -> None:
    out, dump = tmp_path / "out.mp4", tmp_path / "dump"
    spec = spec_file(tmp_path, {"condition": "canny", "size": [48, 64]})
    assert animate(spec, out, dump) == 0
    assert json.loads((dump / "controls.json").read_text())["condition"] == "canny"
    condition = read_image(dump / "condition.png")
    assert condition.shape == (3, 48, 64)
    assert torch.equal(condition[0], condition[1])  # grey edges
    assert 0 < float(condition.mean()) < 0.5  # some edges on black


def test_boxes_map_to_the_generation_grid() -> None:
    track = BoxTrack(
        1,
        torch.tensor([[0.0, 0.0, 99.0, 49.0]], dtype=torch.float64),
        torch.tensor([[49.5, 24.5]], dtype=torch.float64),
    )
    (mapped,) = map_tracks([track], (50, 100), (25, 50))
    torch.testing.assert_close(
        mapped.boxes, torch.tensor([[-0.25, -0.25, 49.25, 24.25]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        mapped.query_points, torch.tensor([[24.5, 12.0]], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"query_points": {"1": [[50, 20]]}}, "query point lies outside"),
        ({"lr": "fast"}, "options.lr"),
        ({"end_boxes": {"9": [0, 0, 10, 10]}}, "no object with id 9"),
        ({"condition": "hed"}, "options.condition"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, options, expected) -> None:
    out, dump = tmp_path / "out.mp4", tmp_path / "dump"
    assert animate(spec_file(tmp_path, options), out, dump) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0]
    assert not out.exists() and not dump.exists()


def test_the_method_is_registered() -> None:
    cls = get_method("anyi2v")
    assert cls.name == "anyi2v" and "tiny" in cls.builtin_weights
    assert AnyI2VControls.images is not None


def test_adding_anyi2v_keeps_the_default_method() -> None:
    assert default_method(Weights(builtin="tiny")) == "levitor"
