"""`anima animate --method levitor` end to end: tiny weights, weights on disk, bad weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES
from diffusers import StableVideoDiffusionPipeline

from anima.cli import main
from anima.io import read_video
from anima.methods.levitor import load_pipeline
from anima.models.tiny import tiny_controlnet, tiny_svd_components
from anima.scene import generation_size

CONVERT = ["weights", "convert", "levitor"]
FAST = {"num_inference_steps": 2, "size": [64, 96]}


def small_spec(tmp_path: Path, name: str = "astronaut_behind", **changes) -> Path:
    """An example spec generated at 64x96 with two Euler steps (tiny models are slow at 512 px)."""
    data = json.loads((EXAMPLES / f"{name}.json").read_text())
    data["image"] = str((EXAMPLES / data["image"]).resolve())
    data |= {"options": FAST} | changes
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(autouse=True)
def fresh_pipeline_cache():
    load_pipeline.cache_clear()
    yield
    load_pipeline.cache_clear()


def test_generation_size() -> None:
    assert generation_size((512, 512)) == (512, 512)
    assert generation_size((427, 640)) == (424, 640)
    assert generation_size((427, 640), max_side=128) == (80, 128)
    assert generation_size((30, 500), max_side=128, min_side=64) == (64, 128)
    assert generation_size((3024, 4032), max_side=512) == (384, 512)  # a phone photo


def test_tiny_weights_write_a_video_with_the_specs_frame_count(tmp_path: Path) -> None:
    spec = small_spec(tmp_path)
    out, dump = tmp_path / "out.mp4", tmp_path / "dump"
    code = main(
        ["animate", str(spec), "--method", "levitor", "--weights", "tiny", "-o", str(out)]
        + ["--dump", str(dump), "-q"]
    )
    assert code == 0
    frames, fps = read_video(out)
    assert frames.shape[0] == json.loads(spec.read_text())["num_frames"] == 16
    assert frames.shape[-2:] == (512, 512)  # generated at 64x96, resized to the scene
    controls = json.loads((dump / "controls.json").read_text())
    assert controls["generation_size"] == [64, 96]
    assert controls["levitor_points"]["num_frames"] == 16


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """A weights directory in the real layouts: DIR/svd (diffusers) and DIR/levitor given as
    the official release's shape (an accelerate state dir with controlnet/, pickle weights)."""
    root = tmp_path_factory.mktemp("weights")
    components = tiny_svd_components(seed=0)
    StableVideoDiffusionPipeline(**components).save_pretrained(root / "svd")
    controlnet = tiny_controlnet(components["unet"], seed=1, random_output=True)
    controlnet.save_pretrained(root / "release" / "controlnet", safe_serialization=False)
    (root / "release" / "random_states_0.pkl").write_bytes(b"not ours to read")
    return root


def with_controlnet(weights_dir: Path, tmp_path: Path, source: str) -> Path:
    root = tmp_path / "weights"
    root.mkdir()
    (root / "svd").symlink_to(weights_dir / "svd")
    (root / "levitor").symlink_to(source if Path(source).is_absolute() else weights_dir / source)
    return root


def animate(spec: Path, out: Path, weights: Path, *extra: str) -> int:
    argv = ["animate", str(spec), "--method", "levitor", "--weights", str(weights)]
    return main([*argv, "-o", str(out), "-q", *extra])


def test_pickle_weights_need_allow_pickle(weights_dir, tmp_path, capsys) -> None:
    root = with_controlnet(weights_dir, tmp_path, "release")
    spec, out = small_spec(tmp_path), tmp_path / "out.mp4"
    assert animate(spec, out, root) == 2
    error = capsys.readouterr().err.strip()
    assert "diffusion_pytorch_model.bin" in error and "--allow-pickle" in error
    assert "controlnet" in error and len(error.splitlines()) == 1
    assert not out.exists()
    assert animate(spec, out, root, "--allow-pickle") == 0
    assert read_video(out)[0].shape[0] == 16


def test_converted_release_loads_from_safetensors_and_matches(weights_dir, tmp_path) -> None:
    converted = tmp_path / "converted"
    assert main([*CONVERT, str(weights_dir / "release"), str(converted)]) == 2
    assert not converted.exists()
    argv = [*CONVERT, str(weights_dir / "release"), str(converted), "--allow-pickle"]
    assert main(argv) == 0
    assert (converted / "diffusion_pytorch_model.safetensors").is_file()
    root = with_controlnet(weights_dir, tmp_path, str(converted))
    spec = small_spec(tmp_path)
    assert animate(spec, tmp_path / "a.mp4", root) == 0
    # the same weights through the pickle path give the same video
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "svd").symlink_to(weights_dir / "svd")
    (pickled / "levitor").symlink_to(weights_dir / "release")
    load_pipeline.cache_clear()
    assert animate(spec, tmp_path / "b.mp4", pickled, "--allow-pickle") == 0
    a, b = read_video(tmp_path / "a.mp4")[0], read_video(tmp_path / "b.mp4")[0]
    assert torch.equal(a, b)


def test_convert_rejects_a_foreign_checkpoint(weights_dir, tmp_path, capsys) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(weights_dir / "release" / "controlnet", bad)
    config = json.loads((bad / "config.json").read_text())
    config["block_out_channels"] = [64, 64]
    (bad / "config.json").write_text(json.dumps(config))
    assert main([*CONVERT, str(bad), str(tmp_path / "o"), "--allow-pickle"]) == 2
    assert "does not match the SVD ControlNet" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("none", "weights directory not found"),
        ("empty", "model_index.json not found"),
        ("no-controlnet", "LeviTor ControlNet: config.json not found"),
        ("no-unet-weights", "no weights"),
    ],
)
def test_missing_weights_are_one_line_errors(weights_dir, tmp_path, capsys, layout, expected):
    root = tmp_path / "weights"
    if layout != "none":
        root.mkdir()
    if layout == "no-controlnet":
        (root / "svd").symlink_to(weights_dir / "svd")
    if layout == "no-unet-weights":
        shutil.copytree(weights_dir / "svd", root / "svd")
        (root / "svd" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        (root / "levitor").symlink_to(weights_dir / "release")
    out = tmp_path / "out.mp4"
    assert animate(small_spec(tmp_path), out, root, "--allow-pickle") == 2
    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1, error
    assert not out.exists()


def test_several_specs_write_one_video_each(tmp_path: Path) -> None:
    first = small_spec(tmp_path, num_frames=3)
    second = small_spec(tmp_path, "rocket_recede", num_frames=4)
    out = tmp_path / "videos"
    argv = ["animate", str(first), str(second), "--weights", "tiny", "--method", "levitor"]
    assert main([*argv, "-o", str(out), "-q"]) == 0
    assert read_video(out / "astronaut_behind.mp4")[0].shape[0] == 3
    assert read_video(out / "rocket_recede.mp4")[0].shape[0] == 4
    assert main([*argv, "-o", str(tmp_path / "x.mp4"), "-q"]) == 2


def test_specs_are_split_across_processes(tmp_path: Path) -> None:
    """Under a multi-process launch (torchrun; accelerate launch uses it) each process
    animates its share of the specs: every spec is written exactly once."""
    names = ("astronaut_behind", "rocket_recede")
    specs = [small_spec(tmp_path, name, num_frames=2, options={}) for name in names]
    out = tmp_path / "videos"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "anima.cli"]
        + ["animate", *map(str, specs), "--method", "coarse", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    written = [line for line in done.stderr.splitlines() if line.startswith("wrote ")]
    assert len(written) == 2, done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["astronaut_behind.mp4", "rocket_recede.mp4"]
