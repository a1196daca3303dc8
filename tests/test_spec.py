"""Tests for the MotionSpec format (anima.spec) and the spec-facing CLI contract (anima.cli).

Bad input must give exit status 2 and exactly one line ``error: <json.path>: <what>, in <file>``
on stderr, with no traceback, nothing on stdout and no output file left behind.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from anima.cli import main
from anima.errors import InputError
from anima.scene import check_selections
from anima.spec import MotionSpec, load_spec, parse_spec, spec_to_json

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
IMAGE = ROOT / "examples" / "astronaut.png"

# A valid spec that uses every part of the format; each malformed case breaks one thing in it.
BASE: dict[str, Any] = {
    "version": 1,
    "image": "astronaut.png",
    "size": [64, 64],
    "num_frames": 4,
    "fps": 8,
    "seed": 0,
    "prompt": "a shuttle model flying",
    "negative_prompt": "blurry",
    "fov": 60,
    "objects": [
        {
            "id": 1,
            "label": "shuttle",
            "box": [10, 10, 40, 40],
            "trajectory": [
                {"t": 0.0, "x": 25, "y": 25, "depth": 5.0},
                {"t": 0.5, "x": 30, "y": 25, "depth": 6.0, "rotation": [0, 10, 0]},
                {"t": 1.0, "x": 35, "y": 25, "depth": 7.0},
            ],
        },
        {"id": 2, "points": [[50, 50], [52, 52]]},
        {"id": 3, "label": "exact", "polygon": [[4, 50], [20, 48], [14, 62.5]]},
    ],
    "camera": {
        "type": "keyframes",
        "keyframes": [{"t": 0.0}, {"t": 1.0, "position": [0, 0, 0.1], "zoom": 1.2}],
    },
    "options": {},
}

Mutation = Callable[[dict[str, Any]], None]


@pytest.fixture(autouse=True)
def _no_configured_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """The method default depends on $ANIMA_WEIGHTS; keep these tests independent of it."""
    monkeypatch.delenv("ANIMA_WEIGHTS", raising=False)


# --------------------------------------------------------------------------- helpers


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        data = data[key]
    return data


def put(*path_and_value: Any) -> Mutation:
    """Set the value at a path (keys and list indices), e.g. put("objects", 0, "id", 0)."""
    *path, value = path_and_value

    def mutate(spec: dict[str, Any]) -> None:
        _parent(spec, tuple(path))[path[-1]] = copy.deepcopy(value)

    return mutate


def drop(*path: Any) -> Mutation:
    """Delete the value at a path."""

    def mutate(spec: dict[str, Any]) -> None:
        del _parent(spec, path)[path[-1]]

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(spec)

    return mutate


def write_spec(directory: Path, spec: dict[str, Any] | str, name: str = "spec.json") -> Path:
    """Write a spec (dict or raw text) with the example image next to it."""
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / IMAGE.name).exists():
        shutil.copyfile(IMAGE, directory / IMAGE.name)
    path = directory / name
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec, indent=2))
    return path


def mutated(mutation: Mutation) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    mutation(spec)
    return spec


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def one_error_line(err: str) -> str:
    """The single stderr line of a bad-input failure, after checking its shape."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert err == lines[0] + "\n"
    return lines[0]


# --------------------------------------------------------------------------- examples


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without weights; an example naming a learned method (AnyI2V's on a canny map) is checked
    with the tiny random weights instead (weights are all its checks lack here)."""
    named = json.loads(example.read_text()).get("method")
    weights = ["--weights", "tiny"] if named not in (None, "coarse") else []
    status, out, err = run(capsys, "spec", "validate", str(example), *weights)
    assert (status, err) == (0, "")
    assert out == f"{example}: ok\n"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_round_trips(example: Path) -> None:
    spec = load_spec(example)
    text = spec_to_json(spec)
    again = parse_spec(json.loads(text), base_dir=spec.base_dir)
    assert again.model_dump() == spec.model_dump()
    assert spec_to_json(again) == text
    assert again.base_dir == example.resolve().parent


def test_base_spec_is_valid_and_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The base of the malformed cases is itself valid, so each case breaks exactly one thing."""
    path = write_spec(tmp_path, BASE)
    status, out, err = run(capsys, "spec", "validate", str(path))
    assert (status, out, err) == (0, f"{path}: ok\n", "")
    spec = load_spec(path)
    again = parse_spec(json.loads(spec_to_json(spec)), base_dir=tmp_path.resolve())
    assert again.model_dump() == spec.model_dump()


@pytest.mark.parametrize(
    "camera",
    [
        {"type": "pan", "x": 0.1, "y": -0.05},
        {"type": "dolly", "distance": -0.5},
        {"type": "zoom", "factor": 1.5},
        {"type": "orbit", "degrees": -30, "axis": "x", "pivot": 4.0},
        {"type": "orbit", "degrees": 180},
    ],
    ids=lambda c: c["type"],
)
def test_every_camera_type_round_trips(camera: dict[str, Any]) -> None:
    spec = parse_spec(mutated(put("camera", camera)), base_dir=Path("/x"))
    assert spec.camera is not None and spec.camera.type == camera["type"]
    again = parse_spec(json.loads(spec_to_json(spec)), base_dir=Path("/x"))
    assert again.model_dump() == spec.model_dump()


# --------------------------------------------------------------------------- malformed specs

ORBIT = {"type": "orbit", "degrees": 30}
TRAJ = ("objects", 0, "trajectory")
CAM_KF = ("camera", "keyframes")

MALFORMED = [
    # version
    pytest.param(drop("version"), "version", id="version-missing"),
    pytest.param(put("version", 2), "version", id="version-2"),
    pytest.param(put("version", "1"), "version", id="version-string"),
    # image
    pytest.param(drop("image"), "image", id="image-missing"),
    pytest.param(put("image", ""), "image", id="image-empty"),
    pytest.param(put("image", 5), "image", id="image-number"),
    # size
    pytest.param(put("size", [64]), "size[1]", id="size-one-item"),
    pytest.param(put("size", [64, 64, 3]), "size", id="size-three-items"),
    pytest.param(put("size", [8, 64]), "size[0]", id="size-height-too-small"),
    pytest.param(put("size", [64, 15]), "size[1]", id="size-width-too-small"),
    pytest.param(put("size", [64.5, 64]), "size[0]", id="size-float"),
    pytest.param(put("size", ["tall", 64]), "size[0]", id="size-string"),
    pytest.param(put("size", 64), "size", id="size-scalar"),
    # num_frames, fps, seed
    pytest.param(put("num_frames", 0), "num_frames", id="num_frames-0"),
    pytest.param(put("num_frames", 1), "num_frames", id="num_frames-1"),
    pytest.param(put("num_frames", 2.5), "num_frames", id="num_frames-float"),
    pytest.param(put("num_frames", "many"), "num_frames", id="num_frames-string"),
    pytest.param(put("fps", 0), "fps", id="fps-0"),
    pytest.param(put("fps", -8), "fps", id="fps-negative"),
    pytest.param(put("fps", 241), "fps", id="fps-too-large"),
    pytest.param(put("fps", float("nan")), "fps", id="fps-nan"),
    pytest.param(put("seed", -1), "seed", id="seed-negative"),
    pytest.param(put("seed", "lucky"), "seed", id="seed-string"),
    pytest.param(put("seed", 2**63), "seed", id="seed-too-large"),
    # prompt, depth, fov, method, options
    pytest.param(put("prompt", 5), "prompt", id="prompt-number"),
    pytest.param(put("negative_prompt", ["x"]), "negative_prompt", id="negative_prompt-list"),
    pytest.param(put("depth", 3), "depth", id="depth-number"),
    pytest.param(put("fov", 0), "fov", id="fov-0"),
    pytest.param(put("fov", 180), "fov", id="fov-180"),
    pytest.param(put("method", 3), "method", id="method-number"),
    pytest.param(put("options", [1]), "options", id="options-list"),
    pytest.param(put("options", "fast"), "options", id="options-string"),
    # objects
    pytest.param(put("objects", {"id": 1}), "objects", id="objects-not-a-list"),
    pytest.param(put("objects", 0, 5), "objects[0]", id="object-not-an-object"),
    pytest.param(put("objects", 0, "id", 0), "objects[0].id", id="object-id-0"),
    pytest.param(put("objects", 0, "id", -3), "objects[0].id", id="object-id-negative"),
    pytest.param(put("objects", 0, "id", 256), "objects[0].id", id="object-id-256"),
    pytest.param(put("objects", 0, "id", "one"), "objects[0].id", id="object-id-string"),
    pytest.param(drop("objects", 0, "id"), "objects[0].id", id="object-id-missing"),
    pytest.param(put("objects", 1, "id", 1), "objects[1].id", id="object-id-duplicate"),
    pytest.param(put("objects", 0, "label", 7), "objects[0].label", id="object-label-number"),
    pytest.param(drop("objects", 0, "box"), "objects[0]", id="object-no-selection"),
    pytest.param(put("objects", 0, "mask", "m.png"), "objects[0]", id="object-mask-and-box"),
    pytest.param(put("objects", 1, "box", [1, 2, 3, 4]), "objects[1]", id="object-points-and-box"),
    pytest.param(put("objects", 0, "box", [10, 10, 40]), "objects[0].box[3]", id="box-3-items"),
    pytest.param(put("objects", 0, "box", [1, 2, 3, 4, 5]), "objects[0].box", id="box-5-items"),
    pytest.param(put("objects", 0, "box", [40, 10, 10, 40]), "objects[0].box", id="box-x0>x1"),
    pytest.param(put("objects", 0, "box", [10, 10, 10, 40]), "objects[0].box", id="box-x0=x1"),
    pytest.param(put("objects", 0, "box", [10, 40, 40, 40]), "objects[0].box", id="box-y0=y1"),
    pytest.param(
        put("objects", 0, "box", ["a", "b", "c", "d"]), "objects[0].box[0]", id="box-strings"
    ),
    pytest.param(put("objects", 1, "points", []), "objects[1].points", id="points-empty"),
    pytest.param(put("objects", 1, "points", [[1, 2, 3]]), "objects[1].points[0]", id="points-3"),
    pytest.param(put("objects", 1, "points", [[1]]), "objects[1].points[0][1]", id="points-1"),
    pytest.param(put("objects", 1, "points", [5, 6]), "objects[1].points[0]", id="points-flat"),
    pytest.param(put("objects", 2, "box", [1, 2, 3, 4]), "objects[2]", id="object-polygon-and-box"),
    pytest.param(
        put("objects", 2, "polygon", [[1, 1], [5, 5]]), "objects[2].polygon", id="polygon-2"
    ),
    pytest.param(put("objects", 2, "polygon", []), "objects[2].polygon", id="polygon-empty"),
    pytest.param(
        put("objects", 2, "polygon", [[1, 1], [3, 3], [9, 9]]),
        "objects[2].polygon",
        id="polygon-collinear",
    ),
    pytest.param(
        put("objects", 2, "polygon", [[1, 1], [3, 3, 3], [9, 1]]),
        "objects[2].polygon[1]",
        id="polygon-vertex-3-numbers",
    ),
    pytest.param(
        put("objects", 2, "polygon", [[1, 1], ["a", 3], [9, 1]]),
        "objects[2].polygon[1][0]",
        id="polygon-vertex-string",
    ),
    pytest.param(
        put("objects", 2, "polygon", [[1, 1], [float("inf"), 3], [9, 1]]),
        "objects[2].polygon[1][0]",
        id="polygon-vertex-infinite",
    ),
    # unknown fields
    pytest.param(put("colour", "red"), "colour", id="unknown-top-level"),
    pytest.param(put("objects", 0, "colour", "red"), "objects[0].colour", id="unknown-in-object"),
    pytest.param(
        put(*TRAJ, 1, "colour", "red"), "objects[0].trajectory[1].colour", id="unknown-in-keyframe"
    ),
    pytest.param(put("camera", "colour", "red"), "camera.colour", id="unknown-in-camera"),
    pytest.param(
        put(*CAM_KF, 0, "colour", "red"),
        "camera.keyframes[0].colour",
        id="unknown-in-camera-keyframe",
    ),
    pytest.param(
        put("camera", {**ORBIT, "colour": "red"}), "camera.colour", id="unknown-in-orbit-camera"
    ),
    # trajectory keyframes
    pytest.param(put(*TRAJ, 0, "t", -0.1), "objects[0].trajectory[0].t", id="keyframe-t<0"),
    pytest.param(put(*TRAJ, 2, "t", 1.5), "objects[0].trajectory[2].t", id="keyframe-t>1"),
    pytest.param(
        put(*TRAJ, 2, "t", 0.25), "objects[0].trajectory[2].t", id="keyframe-t-decreasing"
    ),
    pytest.param(put(*TRAJ, 1, "t", 0.0), "objects[0].trajectory[1].t", id="keyframe-t-equal"),
    pytest.param(drop(*TRAJ, 1, "t"), "objects[0].trajectory[1].t", id="keyframe-t-missing"),
    pytest.param(put(*TRAJ, 2, "depth", 0), "objects[0].trajectory[2].depth", id="depth-0"),
    pytest.param(
        put(*TRAJ, 1, "depth", -2.0), "objects[0].trajectory[1].depth", id="depth-negative"
    ),
    pytest.param(drop(*TRAJ, 1, "x"), "objects[0].trajectory[1].x", id="keyframe-x-missing"),
    pytest.param(put(*TRAJ, 0, "y", "top"), "objects[0].trajectory[0].y", id="keyframe-y-string"),
    pytest.param(
        put(*TRAJ, 1, "rotation", [0, 10]),
        "objects[0].trajectory[1].rotation[2]",
        id="rotation-2-items",
    ),
    pytest.param(
        put(*TRAJ, 1, "rotation", [0, 10, 0, 0]),
        "objects[0].trajectory[1].rotation",
        id="rotation-4-items",
    ),
    pytest.param(put(*TRAJ, [5]), "objects[0].trajectory[0]", id="keyframe-not-an-object"),
    pytest.param(put(*TRAJ, {}), "objects[0].trajectory", id="trajectory-not-a-list"),
    # camera
    pytest.param(put("camera", 5), "camera", id="camera-not-an-object"),
    pytest.param(put("camera", {"type": "spin"}), "camera", id="camera-type-unknown"),
    pytest.param(drop("camera", "type"), "camera", id="camera-type-missing"),
    pytest.param(
        put("camera", {**ORBIT, "degrees": 181}), "camera.degrees", id="orbit-degrees>180"
    ),
    pytest.param(
        put("camera", {**ORBIT, "degrees": -190}), "camera.degrees", id="orbit-degrees<-180"
    ),
    pytest.param(put("camera", {"type": "orbit"}), "camera.degrees", id="orbit-degrees-missing"),
    pytest.param(put("camera", {**ORBIT, "axis": "z"}), "camera.axis", id="orbit-axis-z"),
    pytest.param(put("camera", {**ORBIT, "pivot": 0}), "camera.pivot", id="orbit-pivot-0"),
    pytest.param(
        put("camera", {"type": "dolly", "distance": 1.0}), "camera.distance", id="dolly-distance-1"
    ),
    pytest.param(
        put("camera", {"type": "dolly", "distance": 2.5}), "camera.distance", id="dolly-distance>1"
    ),
    pytest.param(put("camera", {"type": "zoom", "factor": 0}), "camera.factor", id="zoom-factor-0"),
    pytest.param(put("camera", {"type": "pan", "x": "left"}), "camera.x", id="pan-x-string"),
    pytest.param(put(*CAM_KF, []), "camera.keyframes", id="camera-keyframes-empty"),
    pytest.param(drop(*CAM_KF), "camera.keyframes", id="camera-keyframes-missing"),
    pytest.param(put(*CAM_KF, 1, "t", 0.0), "camera.keyframes[1].t", id="camera-keyframes-t-equal"),
    pytest.param(
        both(put(*CAM_KF, 0, "t", 0.6), put(*CAM_KF, 1, "t", 0.3)),
        "camera.keyframes[1].t",
        id="camera-keyframes-t-decreasing",
    ),
    pytest.param(
        put(*CAM_KF, 1, "zoom", -1.0), "camera.keyframes[1].zoom", id="camera-keyframe-zoom<0"
    ),
    pytest.param(
        put(*CAM_KF, 1, "position", [0, 0]),
        "camera.keyframes[1].position[2]",
        id="camera-keyframe-position-2-items",
    ),
]


@pytest.mark.parametrize(("mutation", "json_path"), MALFORMED)
def test_malformed_spec_fails_validate(
    mutation: Mutation, json_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_spec(tmp_path, mutated(mutation))
    status, out, err = run(capsys, "spec", "validate", str(path))
    assert status == 2
    assert out == ""
    line = one_error_line(err)
    # The JSON path comes first and exactly (followed by ': '); the file comes last.
    assert line.startswith(f"error: {json_path}: "), line
    assert line.endswith(f", in {path}"), line
    assert path.name in line


def test_malformed_table_is_large_and_distinct() -> None:
    ids = [case.id for case in MALFORMED]
    assert len(ids) >= 35
    assert len(set(ids)) == len(ids)


def test_several_errors_report_the_first_and_a_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_spec(tmp_path, mutated(both(put("fps", 0), put("fov", 0))))
    status, _, err = run(capsys, "spec", "validate", str(path))
    assert status == 2
    assert one_error_line(err) == f"error: fps: must be > 0 (and 1 more), in {path}"


@pytest.mark.parametrize(
    ("document", "message"),
    [("[1, 2]", "the spec must be a JSON object"), ('"spec"', "the spec must be a JSON object")],
)
def test_non_object_document(
    document: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_spec(tmp_path, document)
    status, out, err = run(capsys, "spec", "validate", str(path))
    assert (status, out) == (2, "")
    assert one_error_line(err) == f"error: {message}, in {path}"


def test_console_script_reports_one_line_without_traceback(tmp_path: Path) -> None:
    """The real installed ``anima`` script, in a fresh process."""
    script = Path(sys.executable).with_name("anima")
    if not script.exists():
        found = shutil.which("anima")
        assert found, "the anima console script is not installed"
        script = Path(found)
    path = write_spec(tmp_path, mutated(put(*TRAJ, 2, "depth", 0)))
    env = {k: v for k, v in os.environ.items() if k != "ANIMA_WEIGHTS"}
    proc = subprocess.run(
        [str(script), "spec", "validate", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    line = one_error_line(proc.stderr)
    assert line == f"error: objects[0].trajectory[2].depth: must be > 0, in {path}"


# --------------------------------------------------------------------------- anima animate


@pytest.mark.parametrize(
    ("mutation", "json_path"),
    [
        pytest.param(put(*TRAJ, 2, "depth", 0), "objects[0].trajectory[2].depth", id="depth-0"),
        pytest.param(put("camera", {"type": "spin"}), "camera", id="camera-type"),
        pytest.param(put("objects", 1, "id", 1), "objects[1].id", id="duplicate-id"),
    ],
)
def test_animate_malformed_spec_leaves_no_output(
    mutation: Mutation, json_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_spec(tmp_path / "specs", mutated(mutation))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    status, out, err = run(capsys, "animate", str(path), "-o", str(out_dir / "out.mp4"), "-q")
    assert (status, out) == (2, "")
    line = one_error_line(err)
    assert line.startswith(f"error: {json_path}: ") and line.endswith(f", in {path}")
    assert not (out_dir / "out.mp4").exists()
    assert list(out_dir.iterdir()) == []  # no temporary either


@pytest.mark.parametrize("command", ["validate", "animate"])
def test_invalid_json_names_line_and_column(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_spec(tmp_path, '{\n  "version": 1,\n  "image": "astronaut.png",\n}\n')
    argv = ["spec", "validate", str(path)]
    if command == "animate":
        argv = ["animate", str(path), "-o", str(tmp_path / "out.mp4")]
    status, out, err = run(capsys, *argv)
    assert (status, out) == (2, "")
    line = one_error_line(err)
    assert "invalid JSON at line 4 column 1" in line
    assert line.endswith(f", in {path}")
    assert not (tmp_path / "out.mp4").exists()


def test_spec_file_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "")
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(BASE).encode("utf-8"))  # UTF-8 with a BOM
    spec = load_spec(path)
    assert spec.objects[0].label == "shuttle" and spec.base_dir == tmp_path.resolve()


@pytest.mark.parametrize("command", ["validate", "animate"])
def test_missing_spec_file(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nowhere.json"
    argv = ["spec", "validate", str(path)]
    if command == "animate":
        argv = ["animate", str(path), "-o", str(tmp_path / "out.mp4")]
    status, out, err = run(capsys, *argv)
    assert (status, out) == (2, "")
    assert one_error_line(err) == f"error: spec file not found: {path}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_missing_image_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec(tmp_path, mutated(put("image", "missing.png")))
    status, out, err = run(capsys, "spec", "validate", str(path))
    assert (status, out) == (2, "")
    line = one_error_line(err)
    assert str(tmp_path.resolve() / "missing.png") in line
    assert line.endswith(f"image in {path}")
    # --no-check-files skips the check.
    status, out, err = run(capsys, "spec", "validate", "--no-check-files", str(path))
    assert (status, out, err) == (0, f"{path}: ok\n", "")


def test_missing_image_file_animate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec(tmp_path / "specs", mutated(put("image", "missing.png")))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    status, out, err = run(capsys, "animate", str(path), "-o", str(out_dir / "out.mp4"), "-q")
    assert (status, out) == (2, "")
    assert "missing.png" in one_error_line(err)
    assert list(out_dir.iterdir()) == []


def test_box_outside_image_fails_animate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = mutated(put("objects", 0, "box", [100, 100, 140, 140]))  # the image is 64x64
    path = write_spec(tmp_path / "specs", spec)
    line = geometry_error_line(tmp_path, capsys, path)
    assert "lies outside the 64x64 image" in line
    assert line.endswith(f"objects[0].box in {path}")


def geometry_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], path: Path) -> str:
    """The one error line a spec that holds to the schema but not to its image gets: from
    `spec validate` and from `animate` alike (which writes nothing)."""
    assert run(capsys, "spec", "validate", "--no-check-files", str(path))[0] == 0
    validate_status, _, validate_err = run(capsys, "spec", "validate", str(path))
    assert validate_status == 2
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    status, out, err = run(capsys, "animate", str(path), "-o", str(out_dir / "out.mp4"), "-q")
    assert (status, out) == (2, "")
    line = one_error_line(err)
    assert line == one_error_line(validate_err)
    assert list(out_dir.iterdir()) == []
    return line


def test_polygon_messages_name_the_json_path(tmp_path: Path) -> None:
    """The polygon's own rules give the messages a user can act on."""
    cases = {
        "objects[2].polygon: must enclose an area (its vertices lie on one line)": [
            [1, 1],
            [3, 3],
            [9, 9],
        ],
        "objects[2].polygon: list should have at least 3 items after validation, not 2": [
            [1, 1],
            [3, 3],
        ],
    }
    for message, polygon in cases.items():
        with pytest.raises(InputError) as caught:
            parse_spec(mutated(put("objects", 2, "polygon", polygon)), "spec")
        assert caught.value.what == message
    with pytest.raises(InputError) as caught:
        parse_spec(mutated(put("objects", 2, "box", [1, 2, 3, 4])), "spec")
    assert caught.value.what == (
        "objects[2]: needs exactly one of mask, box, points, polygon (found: box, polygon)"
    )


@pytest.mark.parametrize(
    ("polygon", "message"),
    [
        ([[100, 100], [140, 100], [120, 140]], "selects no pixel of the 64x64 image"),
        ([[-50, 70], [-10, 70], [-30, 90]], "selects no pixel of the 64x64 image"),
    ],
)
def test_polygon_outside_image_fails_animate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], polygon: list, message: str
) -> None:
    path = write_spec(tmp_path / "specs", mutated(put("objects", 2, "polygon", polygon)))
    line = geometry_error_line(tmp_path, capsys, path)
    assert message in line and line.endswith(f"objects[2].polygon in {path}")


def test_polygon_around_the_whole_image_is_fine(tmp_path: Path) -> None:
    """Every vertex outside the image, yet the outline covers it: a valid selection."""
    around = [[-10, -10], [80, -10], [80, 80], [-10, 80]]
    spec = parse_spec(mutated(put("objects", 2, "polygon", around)), base_dir=tmp_path)
    check_selections(spec, (64, 64))


# --------------------------------------------------------------------------- schema


def test_schema_stdout_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, text, err = run(capsys, "spec", "schema")
    assert (status, err) == (0, "")
    schema = json.loads(text)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["$id"].startswith("https://")
    assert set(MotionSpec.model_fields) <= set(schema["properties"])
    assert set(schema["required"]) == {"version", "image"}
    assert schema["additionalProperties"] is False
    polygon = schema["$defs"]["SceneObject"]["properties"]["polygon"]
    assert polygon["anyOf"][0]["minItems"] == 3 and "pixel centres" in polygon["description"]
    assert "polygon" in schema["$defs"]["SceneObject"]["description"]

    target = tmp_path / "schema" / "motionspec.json"
    status, out, err = run(capsys, "spec", "schema", "-o", str(target))
    assert (status, out, err) == (0, "", "")
    assert target.read_text() == text
    assert [p.name for p in target.parent.iterdir()] == ["motionspec.json"]


# --------------------------------------------------------------------------- method options


def test_method_options_are_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec(tmp_path, mutated(both(put("method", "coarse"), put("options", {"nope": 1}))))
    status, out, err = run(capsys, "spec", "validate", str(path))
    assert (status, out) == (2, "")
    assert one_error_line(err).startswith("error: options.nope: ")


def test_valid_method_options_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = mutated(both(put("method", "coarse"), put("options", {"points_scale": 2.0})))
    path = write_spec(tmp_path, spec)
    assert run(capsys, "spec", "validate", str(path)) == (0, f"{path}: ok\n", "")


# --------------------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    "mutation",
    [
        pytest.param(put("num_frames", "16"), id="num_frames-'16'"),
        pytest.param(put("seed", "3"), id="seed-'3'"),
        pytest.param(put("seed", True), id="seed-true"),
        pytest.param(put("fps", "8"), id="fps-'8'"),
        pytest.param(put("objects", 0, "id", "1"), id="id-'1'"),
        pytest.param(put("objects", 0, "box", ["10", "10", "40", "40"]), id="box-numeric-strings"),
        pytest.param(put(*TRAJ, 0, "depth", True), id="depth-true"),
    ],
)
def test_numeric_strings_and_booleans_are_rejected(
    mutation: Mutation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_spec(tmp_path, mutated(mutation))
    assert run(capsys, "spec", "validate", str(path))[0] == 2


def test_option_error_names_the_spec_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_spec(tmp_path, mutated(both(put("method", "coarse"), put("options", {"nope": 1}))))
    _, _, err = run(capsys, "spec", "validate", str(path))
    assert str(path) in err


def test_unknown_method_in_spec_names_the_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_spec(tmp_path, mutated(put("method", "nope")))
    status, _, err = run(capsys, "spec", "validate", str(path))
    assert status == 2
    assert "--method" not in err and str(path) in err
