"""The whole I2V3D method (I2V3D §3.2-3.3) on tiny models: keyframes, then interpolation
windows sharing them, a video of the spec's length; the example spec end to end; the LoRA trained
on the fly once and cached; the guidance strength; bad input as one line before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES

from anima.cli import main
from anima.io import read_video
from anima.methods.i2v3d import (
    I2V3DMethod,
    load_interpolation_pipeline,
    load_pipeline,
    video_keyframes,
)
from anima.methods.registry import get_method
from anima.scene import build_scene
from anima.spec import load_spec
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

SIDE = 64
FAST = {
    "base": "sd15",
    "lora": None,
    "num_inference_steps": 2,
    "interpolation_steps": 2,
}


@pytest.fixture(autouse=True)
def fresh_pipeline_caches():
    for cache in (load_pipeline, load_interpolation_pipeline):
        cache.cache_clear()
    yield
    for cache in (load_pipeline, load_interpolation_pipeline):
        cache.cache_clear()


def example(tmp_path: Path, frames: int | None = None, options: dict | None = None) -> Path:
    """examples/shuttle_turn.json at 64x64 (its pixels scaled), with fast options."""
    data = json.loads((EXAMPLES / "shuttle_turn.json").read_text())
    data["image"] = str((EXAMPLES / data["image"]).resolve())
    scale = SIDE / 512
    data["size"] = [SIDE, SIDE]
    if frames is not None:
        data["num_frames"] = frames
    for obj in data["objects"]:
        obj["polygon"] = [[x * scale, y * scale] for x, y in obj["polygon"]]
        for key in obj.get("trajectory", []):
            key["x"] *= scale
            key["y"] *= scale
    data["options"] = data.get("options", {}) | FAST | (options or {})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    return path


def method_for(spec_path: Path) -> tuple[I2V3DMethod, object]:
    spec = load_spec(spec_path)
    cls = get_method("i2v3d")
    options = cls.parse_options(spec.options)
    method = cls(options, Weights(builtin="tiny"), torch.device("cpu"), torch.float32)
    return method, spec


def test_video_keyframes_end_on_the_last_frame() -> None:
    assert video_keyframes(61, 15) == [0, 15, 30, 45, 60]
    assert video_keyframes(46, 15) == [0, 15, 30, 45]
    assert video_keyframes(50, 15) == [0, 15, 30, 45, 49]


def test_61_frames_are_four_windows_sharing_their_keyframes(tmp_path: Path) -> None:
    """61 frames: keyframes 0, 15, 30, 45, 60 and four 16-frame windows, each starting and
    ending on its two keyframes' latents (SVD's VAE encoding of the keyframes, exactly); the
    video has 61 frames, each shared keyframe once. (In pixels the tiny random VAE decodes
    every latent to nearly the same picture: 19.3 dB at the keyframes against 19.1 dB between
    them, so the check is on the latents.)"""
    method, spec = method_for(example(tmp_path, frames=61))
    controls = method.prepare(spec, build_scene(spec, method.weights))
    assert controls.keyframes == [0, 15, 30, 45, 60]
    ends: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    pipe = load_interpolation_pipeline(method.weights, method.device, method.dtype)
    original = type(pipe).__call__

    def recording(self, start, end, segment, **kwargs):
        generator = kwargs["generator"]
        state = generator.get_state()
        latents = original(self, start, end, segment, **kwargs | {"output_type": "latent"})
        ends.append((latents[0, 0], latents[0, -1], segment.num_frames))
        generator.set_state(state)  # the real call draws the same noise
        return original(self, start, end, segment, **kwargs)

    type(pipe).__call__ = recording
    try:
        keyframes = method.generate_keyframes(controls)
        video = method.interpolate(controls, keyframes)
    finally:
        type(pipe).__call__ = original
    assert [frames for _, _, frames in ends] == [16, 16, 16, 16]
    encoded = pipe.encode_frames(keyframes)[0]
    for i, (first, last, _) in enumerate(ends):
        assert torch.equal(first, encoded[i]) and torch.equal(last, encoded[i + 1])
    assert video.shape == (61, 3, SIDE, SIDE)


def test_the_example_runs_end_to_end(tmp_path: Path) -> None:
    """examples/shuttle_turn.json (46 frames, a turn of 180 degrees and a pan) with
    ``--weights tiny``: a 46-frame video and the dump's keyframes."""
    out, dump = tmp_path / "out.mp4", tmp_path / "dump"
    spec = example(tmp_path)
    argv = ["animate", str(spec), "-o", str(out), "--weights", "tiny", "--dump", str(dump), "-q"]
    assert main(argv) == 0
    frames, fps = read_video(out)
    assert frames.shape[0] == 46 and frames.shape[-2:] == (SIDE, SIDE) and fps == 24
    assert json.loads((dump / "controls.json").read_text())["keyframes"] == [0, 15, 30, 45]


def test_guidance_zero_is_no_3d_guidance_in_the_interpolation(tmp_path: Path) -> None:
    """``guidance`` scales injection and the ControlNet together: at 0 the interpolation is
    exactly the run without injection and with the ControlNet at scale 0."""
    short = {"keyframe_every": 3}
    method, spec = method_for(example(tmp_path, frames=4, options=short | {"guidance": 0.0}))
    controls = method.prepare(spec, build_scene(spec, method.weights))
    keyframes = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    zero = method.interpolate(controls, keyframes)
    off = {"interpolation_injection": False, "interpolation_controlnet_scale": 0.0}
    plain, _ = method_for(example(tmp_path, frames=4, options=short | off))
    assert torch.equal(zero, plain.interpolate(controls, keyframes))
    full, _ = method_for(example(tmp_path, frames=4, options=short))
    assert (full.interpolate(controls, keyframes) - zero).abs().max() > 1e-4


def test_the_lora_is_trained_once_and_cached(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ANIMA_CACHE", str(tmp_path / "cache"))
    spec_path = example(tmp_path, frames=4, options={"lora": "auto", "lora_steps": 2})
    method, spec = method_for(spec_path)
    scene = build_scene(spec, method.weights)
    first = method.prepare(spec, scene).lora
    assert first is not None and (first / "pytorch_lora_weights.safetensors").is_file()
    stamp = (first / "pytorch_lora_weights.safetensors").stat().st_mtime_ns
    again = method.prepare(spec, scene).lora
    assert again == first
    assert (first / "pytorch_lora_weights.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache" / "i2v3d-lora").iterdir()] == [first.name]


def test_a_spec_shorter_than_one_keyframe_interval_is_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "out.mp4"
    spec = example(tmp_path, frames=10)  # keyframes every 15 frames
    assert main(["animate", str(spec), "-o", str(out), "--weights", "tiny", "-q"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "keyframe_every + 1 = 16" in lines[0] and not out.exists()


def test_a_missing_temporal_controlnet_is_one_line_before_any_work(tmp_path, capsys) -> None:
    weights = tmp_path / "weights"
    for subdir, name in (
        ("sd15", "model_index.json"),
        ("controlnet-depth-sd15", "config.json"),
        ("svd", "model_index.json"),
    ):
        (weights / subdir).mkdir(parents=True)
        (weights / subdir / name).write_text("{}")
    out = tmp_path / "out.mp4"
    argv = ["animate", str(example(tmp_path)), "-o", str(out), "--weights", str(weights), "-q"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "temporal-depth-controlnet" in lines[0] and not out.exists()
