"""Guidance renders in I2V3D's layout (I2V3D §3.1): anima's render written and read back, a
release-style folder read with the release's polarities, the spec's ``render`` guiding
LeviTor, and every bad folder refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_scene
from PIL import Image

from anima.animation import build_animation
from anima.cli import main
from anima.errors import InputError
from anima.methods.levitor import LeviTorMethod, LeviTorOptions, load_pipeline
from anima.render import render
from anima.render_import import read_render_folder, write_render_folder
from anima.scene import build_scene
from anima.spec import load_spec, parse_spec
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (64, 96)
BOX = [30, 20, 50, 44]


def trajectory(x1: float, y1: float, d1: float = 5.0) -> list[dict]:
    return [{"t": 0, "x": 40, "y": 32, "depth": 5.0}, {"t": 1, "x": x1, "y": y1, "depth": d1}]


def spec_data(**changes) -> dict:
    data = {
        "version": 1,
        "image": "photo.png",
        "depth": "depth.npy",
        "num_frames": 4,
        "objects": [{"id": 1, "box": BOX, "trajectory": trajectory(60, 32)}],
    }
    return data | changes


def write_spec(folder: Path, name: str = "spec", **changes) -> Path:
    """A 64x96 photo over a distance-10 background with a box at distance 5."""
    photo = folder / "photo.png"
    if not photo.exists():
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8)).save(photo)
        depth = np.full(SIZE, 10.0, np.float32)
        depth[BOX[1] : BOX[3], BOX[0] : BOX[2]] = 5.0
        np.save(folder / "depth.npy", depth)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec_data(**changes)))
    return path


def per_frame_normalised(distance: torch.Tensor) -> torch.Tensor:
    low = distance.amin(dim=(1, 2), keepdim=True)
    high = distance.amax(dim=(1, 2), keepdim=True)
    return (distance - low) / (high - low)


# ----------------------------------------------------------------------------- round trip


def test_anima_render_written_and_read_back_is_the_same_guidance(tmp_path: Path) -> None:
    scene = make_scene(SIZE, objects={1: ((30, 20, 50, 44), 5.0), 2: ((60, 10, 80, 30), 7.0)})
    objects = [
        {"id": 1, "box": BOX, "trajectory": trajectory(50, 40, 4.0)},
        {"id": 2, "box": [60, 10, 80, 30]},
    ]
    spec = parse_spec({"version": 1, "image": "x.png", "num_frames": 4, "objects": objects})
    original = render(scene, build_animation(spec, scene))
    write_render_folder(original, tmp_path / "render")
    names = sorted(p.name for p in (tmp_path / "render").iterdir() if p.is_dir())
    assert names == ["ani", "depth", "fg_mask", "instance", "mask"]
    assert sorted(p.name for p in (tmp_path / "render" / "ani").iterdir())[0] == "0001.png"

    near, far = (float(v) for v in original.distance[0].aminmax())
    back = read_render_folder(
        tmp_path / "render", SIZE, num_frames=4, distance_range=(near, far), object_ids=[1, 2]
    )
    assert back.num_frames == original.num_frames == 4
    # RGB: 8-bit rounding, within half a level
    assert float((back.rgb - original.rgb).abs().max()) <= 0.5 / 255 + 1e-6
    assert torch.equal(back.instance, original.instance)  # several objects: instance/
    assert torch.equal(back.visible, original.visible)
    # Depth: the file keeps each frame's depth up to its own affine map, in 8 bits: the
    # per-frame normalised distances agree within half a level ...
    error = per_frame_normalised(back.distance) - per_frame_normalised(original.distance)
    assert float(error.abs().max()) <= 0.5 / 255 + 1e-6
    # ... and a frame whose range is the range read with comes back within (far - near) / 510
    assert float((back.distance[0] - original.distance[0]).abs().max()) <= (far - near) / 510 + 1e-5
    # near is bright in the depth files (I2V3D's polarity)
    depth0 = np.asarray(Image.open(tmp_path / "render" / "depth" / "0001.png"))
    object_level = depth0[original.instance[0].numpy() == 1].mean()
    assert object_level > depth0[original.instance[0].numpy() == 0].mean()


def test_release_folder_read_with_its_polarities_and_resized(tmp_path: Path) -> None:
    """A folder as the release has it: Blender's depth un-normalised in R (G, B junk),
    ``mask/`` = visibility, ``fg_mask/`` = foreground, frames from 0001, JPEG RGB."""
    root = tmp_path / "render"
    height, width = 32, 48
    for f in range(1, 4):
        rgb = np.full((height, width, 3), 40 * f, np.uint8)
        depth = np.zeros((height, width, 3), np.uint8)
        depth[..., 0] = 60  # far background
        depth[8:20, 10 + f : 20 + f, 0] = 200  # the object, near = bright
        depth[..., 1] = 17
        fg = np.zeros((height, width), np.uint8)
        fg[8:20, 10 + f : 20 + f] = 255
        visible = np.full((height, width), 255, np.uint8)
        visible[:, :4] = 0
        for folder, array in (("ani", rgb), ("depth", depth), ("fg_mask", fg), ("mask", visible)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            suffix = ".jpg" if folder == "ani" else ".png"
            Image.fromarray(array).save(root / folder / f"{f:04d}{suffix}")
    result = read_render_folder(root, (16, 24), num_frames=3, distance_range=(2.0, 8.0))
    assert tuple(result.rgb.shape) == (3, 3, 16, 24)
    assert torch.equal(result.distance.unique(), torch.tensor([2.0, 8.0]))
    assert bool((result.distance[result.instance == 1] == 2.0).all())  # near is bright
    assert set(result.instance.unique().tolist()) == {0, 1}
    assert not bool(result.visible[:, :, :2].any()) and bool(result.visible[:, :, 2:].all())


# ----------------------------------------------------------------------------- LeviTor


@pytest.fixture
def fresh_levitor_cache():
    load_pipeline.cache_clear()
    yield
    load_pipeline.cache_clear()


def test_spec_render_drives_levitor_controls(tmp_path: Path, fresh_levitor_cache) -> None:
    """The spec moves its object right; the render folder shows it moving down: LeviTor's
    control points follow the render (the same points as a spec that moves it down)."""
    fast = {"num_inference_steps": 1, "size": list(SIZE)}
    moving_down = [{"id": 1, "box": BOX, "trajectory": trajectory(40, 50)}]
    down = load_spec(write_spec(tmp_path, "down", objects=moving_down, options=fast))
    scene = build_scene(down)
    write_render_folder(render(scene, build_animation(down, scene)), tmp_path / "render")

    spec = write_spec(tmp_path, "right", render="render", options=fast)
    out, dump = tmp_path / "out.mp4", tmp_path / "dump"
    argv = ["animate", str(spec), "--method", "levitor", "--weights", "tiny", "-q"]
    assert main([*argv, "-o", str(out), "--dump", str(dump)]) == 0
    imported = json.loads((dump / "controls.json").read_text())["levitor_points"]

    method = LeviTorMethod(
        LeviTorOptions(**fast), Weights.resolve("tiny"), torch.device("cpu"), torch.float32
    )
    expected = method.prepare(down, scene).points.to_json()
    moved_right = method.prepare(load_spec(spec).model_copy(update={"render": None}), scene)
    assert imported["xy"] == expected["xy"] and imported["instance"] == expected["instance"]
    assert imported["xy"] != moved_right.points.to_json()["xy"]
    # the dump holds the guidance in the same layout
    assert len(list((dump / "render" / "i2v3d" / "depth").iterdir())) == 4


# ----------------------------------------------------------------------------- bad folders


def break_missing_frame(root: Path) -> str:
    (root / "depth" / "0003.png").unlink()
    return "0003.png"


def break_too_few(root: Path) -> str:
    for folder in ("ani", "depth", "fg_mask", "mask", "instance"):
        (root / folder / "0004.png").unlink()
    return "0004.png"


def break_size(root: Path) -> str:
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(root / "mask" / "0002.png")
    return "0002.png"


def break_unreadable(root: Path) -> str:
    (root / "fg_mask" / "0002.png").write_bytes(b"not a png")
    return "0002.png"


def break_missing_folder(root: Path) -> str:
    for file in root.rglob("*"):
        if file.is_file():
            file.unlink()
    for folder in sorted(root.rglob("*"), reverse=True):
        folder.rmdir()
    root.rmdir()
    return "render"


@pytest.mark.parametrize(
    "breaking",
    [break_missing_frame, break_too_few, break_size, break_unreadable, break_missing_folder],
)
def test_bad_render_folder_is_one_error_line_and_nothing_written(
    tmp_path: Path, capsys, breaking
) -> None:
    spec = write_spec(tmp_path, render="render")
    loaded = load_spec(spec)
    scene = build_scene(loaded)
    write_render_folder(render(scene, build_animation(loaded, scene)), tmp_path / "render")
    culprit = breaking(tmp_path / "render")
    out, dump = tmp_path / "out" / "video.mp4", tmp_path / "dump"
    capsys.readouterr()
    assert main(["animate", str(spec), "-o", str(out), "--dump", str(dump)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert "render" in err and culprit in err, err
    assert not out.exists() and not dump.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_several_objects_need_instance_frames(tmp_path: Path) -> None:
    scene = make_scene(SIZE, objects={1: ((30, 20, 50, 44), 5.0)})
    objects = [{"id": 1, "box": BOX}]
    spec = parse_spec({"version": 1, "image": "x.png", "num_frames": 2, "objects": objects})
    write_render_folder(render(scene, build_animation(spec, scene)), tmp_path / "r")
    for file in (tmp_path / "r" / "instance").iterdir():
        file.unlink()
    (tmp_path / "r" / "instance").rmdir()
    one = read_render_folder(tmp_path / "r", SIZE, num_frames=2, object_ids=[7])
    assert torch.equal(one.instance[0] == 7, scene.instance == 1)
    with pytest.raises(InputError, match="instance/"):
        read_render_folder(tmp_path / "r", SIZE, num_frames=2, object_ids=[1, 2])
    with pytest.raises(InputError, match="aspect ratio"):
        read_render_folder(tmp_path / "r", (64, 64), num_frames=2)
