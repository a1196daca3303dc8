"""`anima animate --method animate124 --weights tiny` end to end, `anima export animate124`,
``anima weights check animate124``, the spec's camera on the reference camera, the reference
view's preprocessing, and bad input as one line with nothing written (issue 21, parts 5-7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES

from anima.cli import main
from anima.io import read_video
from anima.methods.animate124 import Animate124Options, spec_cameras
from anima.methods.animate124.cameras import make_cameras, reference_camera
from anima.methods.animate124.preprocess import Framing, reference_view
from anima.methods.animate124.stages import STAGES
from anima.methods.animate124.textual_inversion import load_token
from anima.methods.animate124.train import is_finished, load_reference
from anima.methods.registry import get_method
from anima.scene import Scene
from anima.spec import parse_spec
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

SIDE = 64
#: Tiny stages: a small field, 16 px renders, a few steps each.
FAST = {
    "static_steps": 2,
    "dynamic_steps": 1,
    "refine_steps": 1,
    "render_size": 16,
    "march_steps": 16,
    "num_times": 4,
    "grid_levels": 4,
    "grid_base_resolution": 4,
    "grid_max_resolution": 32,
    "grid_log2_table": 10,
    "mlp_hidden": 16,
    "tv_points": 256,
    "shading": "albedo",
    "reference_warmup": 0,
    "output_side": 32,
    "token_steps": 2,
    "token_batch_size": 2,
    "token_resolution": 64,
}


def spec_data(tmp_path: Path, options: dict | None = None, frames: int = 3) -> dict:
    """examples/astronaut_behind.json at 64x64: the shuttle (object 1) is lifted."""
    data = json.loads((EXAMPLES / "astronaut_behind.json").read_text())
    data["image"] = str((EXAMPLES / data["image"]).resolve())
    scale = SIDE / 512
    data["size"] = [SIDE, SIDE]
    data["num_frames"] = frames
    for obj in data["objects"]:
        obj["polygon"] = [[x * scale, y * scale] for x, y in obj["polygon"]]
        for key in obj.get("trajectory", []):
            key["x"] *= scale
            key["y"] *= scale
    data["options"] = FAST | {"run": "run"} | (options or {})
    return data


def spec_file(tmp_path: Path, options: dict | None = None, **changes) -> Path:
    data = spec_data(tmp_path, options) | changes
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    return path


def animate(spec: Path, out: Path, weights: str = "tiny") -> int:
    argv = ["animate", str(spec), "-o", str(out), "--method", "animate124", "--weights", weights]
    return main([*argv, "-q"])


def only_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """The spec animated with every stage (tiny weights): its folder and video."""
    folder = tmp_path_factory.mktemp("animate124")
    out = folder / "out.mp4"
    assert animate(spec_file(folder), out) == 0
    return folder, out


def test_animate_trains_every_stage_and_writes_the_specs_frames(trained) -> None:
    folder, out = trained
    frames, fps = read_video(out)
    assert frames.shape[0] == 3 and tuple(frames.shape[-2:]) == (SIDE, SIDE) and fps == 8
    run = folder / "run"
    assert all(is_finished(run, stage) for stage in STAGES)
    token, vector = load_token(run / "token")  # textual inversion ran before refine
    assert token == "<animate124>" and vector.ndim == 1
    reference = load_reference(run)
    assert reference.image.shape == (3, 16, 16) and float(reference.mask.sum()) > 10


def test_animate_again_reuses_the_finished_stages(trained, tmp_path: Path) -> None:
    folder, _out = trained
    stamp = (folder / "run" / "static" / "field.safetensors").stat().st_mtime_ns
    assert animate(folder / "spec.json", tmp_path / "again.mp4") == 0
    assert (folder / "run" / "static" / "field.safetensors").stat().st_mtime_ns == stamp
    again, _ = read_video(tmp_path / "again.mp4")
    first, _ = read_video(folder / "out.mp4")
    assert torch.equal(again, first)


def test_export_writes_ten_orbit_videos_and_a_glb_per_time(trained, tmp_path: Path) -> None:
    import trimesh

    folder, _out = trained
    out = tmp_path / "export"
    argv = ["export", "animate124", str(folder / "run"), "-o", str(out), "--size", "16"]
    argv += ["--frames", "3", "--time", "0", "--time", "1", "--resolution", "24"]
    assert main([*argv, "--march-steps", "16", "-q"]) == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    videos = [f"view_{k:02d}.mp4" for k in range(10)]
    assert names == sorted([*videos, "mesh_t0.000.glb", "mesh_t1.000.glb"])
    frames, _fps = read_video(out / "view_03.mp4")
    assert frames.shape == (3, 3, 16, 16)
    mesh = trimesh.load(out / "mesh_t0.000.glb", force="mesh")
    assert len(mesh.faces) > 0 and bool((abs(mesh.vertices) <= 1.0 + 1e-6).all())


def test_export_of_a_folder_without_a_run_is_one_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    argv = ["export", "animate124", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "no stage" in only_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_an_image_without_a_selected_object_is_one_error(tmp_path: Path, capsys) -> None:
    spec = spec_file(tmp_path, objects=[])
    assert animate(spec, tmp_path / "out.mp4") == 2
    assert "select" in only_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json"]


def test_a_stage_before_its_predecessor_is_one_error(tmp_path: Path, capsys) -> None:
    spec = spec_file(tmp_path, {"stage": "dynamic", "only_stage": True})
    assert animate(spec, tmp_path / "out.mp4") == 2
    assert "static stage" in only_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json"]


def test_absent_weights_are_one_error(tmp_path: Path, capsys) -> None:
    weights = tmp_path / "weights"
    (weights / "sd15").mkdir(parents=True)
    (weights / "sd15" / "model_index.json").write_text("{}")
    spec = spec_file(tmp_path, {"stage": "static"})
    assert animate(spec, tmp_path / "out.mp4", str(weights)) == 2
    assert "zero123-xl" in only_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json", "weights"]


def test_weights_check_lists_the_components(tmp_path: Path, capsys) -> None:
    assert main(["weights", "check", "animate124", "--weights", "tiny"]) == 0
    text = capsys.readouterr().out
    for subdir in ("sd15/", "zero123-xl/", "modelscope-t2v/", "controlnet-tile/"):
        assert subdir in text
    cls = get_method("animate124")
    root = Weights(root=tmp_path)
    for subdir, name in (("sd15", "model_index.json"), ("zero123-xl", "unet/config.json")):
        (tmp_path / subdir / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / subdir / name).write_text("{}")
    assert not cls.missing_components(root, Animate124Options(stage="static"))
    missing = cls.missing_components(root, Animate124Options(stage="refine"))
    assert [c.subdir for c in missing] == ["modelscope-t2v", "controlnet-tile"]


def flat_scene(size: int = 40) -> Scene:
    image = torch.ones(3, size, size) * 0.5
    instance = torch.zeros(size, size, dtype=torch.int64)
    instance[10:20, 5:25] = 3  # a 10 x 20 object left of centre
    distance = torch.full((size, size), 4.0)
    intrinsics = torch.tensor([[40.0, 0, 20], [0, 40.0, 20], [0, 0, 1]], dtype=torch.float64)
    return Scene(image, distance, instance, intrinsics, [3])


def test_the_reference_view_squares_the_object_at_its_share() -> None:
    reference, framing = reference_view(flat_scene(), 3, 25, object_fraction=0.8)
    assert framing.side == 25 and framing.distance == 4.0
    assert (framing.top, framing.left) == (2.0, 2.0)  # centred on the box (15, 15)
    rows = reference.mask.gt(0.5).any(1).nonzero().squeeze(1)
    cols = reference.mask.gt(0.5).any(0).nonzero().squeeze(1)
    assert int(cols[-1] - cols[0] + 1) == 20 and int(rows[-1] - rows[0] + 1) == 10
    outside = reference.mask < 0.5
    assert torch.equal(reference.image[:, outside], torch.ones(3, int(outside.sum())))


def test_the_specs_camera_moves_the_reference_camera() -> None:
    framing = Framing(3, 0.0, 0.0, 40.0, 4.0, 40.0)
    base = {"version": 1, "image": "x.png", "num_frames": 3}
    still, fovs = spec_cameras(parse_spec(base), flat_scene(), framing, 1.8, 40.0)
    assert torch.allclose(still, reference_camera().poses.expand(3, 4, 4), atol=1e-6)
    assert torch.allclose(fovs, torch.full((3,), 40.0))
    # an orbit of 90 degrees about y around the object turns the camera about the box centre
    orbit = base | {"camera": {"type": "orbit", "degrees": 90, "pivot": 4.0}}
    poses, _ = spec_cameras(parse_spec(orbit), flat_scene(), framing, 1.8, 40.0)
    centres = poses[:, :3, 3]
    assert torch.allclose(centres.norm(dim=-1), torch.full((3,), 1.8), atol=1e-4)
    side = make_cameras(90.0, 90.0).poses[0, :3, 3]
    assert torch.allclose(centres[-1].abs(), side.abs(), atol=1e-4)
    # a dolly half-way to the object halves the distance to the box centre
    dolly = base | {
        "camera": {
            "type": "keyframes",
            "keyframes": [{"t": 0.0}, {"t": 1.0, "position": [0.0, 0.0, 2.0]}],
        }
    }
    poses, _ = spec_cameras(parse_spec(dolly), flat_scene(), framing, 1.8, 40.0)
    assert float(poses[-1, :3, 3].norm()) == pytest.approx(0.9, abs=1e-4)
    zoom = base | {"camera": {"type": "zoom", "factor": 2.0}}
    _, fovs = spec_cameras(parse_spec(zoom), flat_scene(), framing, 1.8, 40.0)
    assert float(fovs[-1]) < 22.0
