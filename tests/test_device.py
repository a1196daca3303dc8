"""Every method's tiny path on each accelerator present (CUDA, MPS), in float32 and in half
precision: tests marked `device`, skipped where there is none (`scripts/device_check.sh` runs
them on a machine with an accelerator). A method that works on the CPU can still fail there: a
random draw with a CPU generator on a CUDA tensor, a dtype a kernel lacks, a tensor left on the
CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES
from test_animate124_method import FAST as ANIMATE124_FAST

from anima.pipeline import animate, resolve_spec
from anima.spec import load_spec
from anima.weights import Weights


def _accelerators() -> list[tuple[str, str]]:
    """(device, dtype) pairs to run: float32 and the half types each accelerator supports."""
    pairs = []
    if torch.cuda.is_available():
        pairs += [("cuda", "float32"), ("cuda", "float16"), ("cuda", "bfloat16")]
    if torch.backends.mps.is_available():
        pairs += [("mps", "float32"), ("mps", "float16")]
    return pairs or [pytest.param("none", "none", marks=pytest.mark.skip("no accelerator"))]


def _spec(tmp_path: Path, example: str, **changes) -> Path:
    """An example spec made small (tiny models: noise out, every stage run)."""
    source = EXAMPLES / example
    data = json.loads(source.read_text())
    for key in ("image",):
        data[key] = str((source.parent / data[key]).resolve())
    for key in ("keypoints", "reference_keypoints", "video"):
        if data.get("pose", {}).get(key):
            data["pose"][key] = str((source.parent / data["pose"][key]).resolve())
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data | changes))
    return path


CASES = {
    "animate124": (
        "astronaut_behind.json",
        {
            "num_frames": 3,
            "method": "animate124",
            "options": {"run": "run"}
            | {k: v for k, v in ANIMATE124_FAST.items() if k != "shading"},
        },
    ),
    "anyi2v": (
        "astronaut_behind.json",
        {
            "num_frames": 4,
            "method": "anyi2v",
            "options": {
                "num_inference_steps": 2,
                "inversion_timestep": 3,
                "injection_steps": [0],
                "optimisation_steps": [0, 1],
                "optimisation_iterations": 2,
                "size": [32, 48],
            },
        },
    ),
    "coarse": ("astronaut_behind.json", {"num_frames": 4, "method": "coarse"}),
    "i2v3d": (
        "shuttle_turn.json",
        {
            "num_frames": 5,
            "options": {
                "base": "sdxl",
                "lora": "auto",
                "lora_steps": 2,
                "keyframe_every": 4,
                "num_inference_steps": 2,
                "interpolation_steps": 2,
                "size": [32, 48],
            },
        },
    ),
    "levitor": (
        "astronaut_behind.json",
        {
            "num_frames": 4,
            "method": "levitor",
            "options": {"num_inference_steps": 2, "size": [64, 96]},
        },
    ),
    "xdyna": (
        "figure_dance/spec.json",
        {"num_frames": 6, "options": {"num_inference_steps": 2, "size": [32, 32]}},
    ),
}


@pytest.mark.device
@pytest.mark.parametrize(("device", "dtype"), _accelerators())
@pytest.mark.parametrize("method", sorted(CASES))
def test_tiny_path_runs_on_the_accelerator(
    tmp_path: Path, monkeypatch, method: str, device: str, dtype: str
):
    monkeypatch.setenv("ANIMA_CACHE", str(tmp_path / "cache"))  # I2V3D's LoRA, trained here
    example, changes = CASES[method]
    weights = Weights(builtin="tiny")
    spec = resolve_spec(load_spec(_spec(tmp_path, example, **changes)), weights=weights)
    result = animate(spec, weights, device=device, dtype=dtype)
    frames = result.frames
    assert frames.shape[0] == spec.num_frames and frames.shape[1] == 3
    assert frames.device.type == "cpu" and frames.dtype == torch.float32
    assert torch.isfinite(frames).all()
