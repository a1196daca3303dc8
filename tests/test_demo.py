"""`anima demo --toy`: a held-out toy scene, truth | coarse render | generated, side by side."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableVideoDiffusionPipeline

from anima.cli import main
from anima.demo import side_by_side
from anima.io import read_video
from anima.methods.levitor import load_pipeline
from anima.models.tiny import tiny_controlnet, tiny_svd_components


@pytest.fixture(autouse=True)
def fresh_pipeline_cache():
    load_pipeline.cache_clear()
    yield
    load_pipeline.cache_clear()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """DIR/svd + DIR/levitor in the layouts a user's weights have, with tiny random models."""
    root = tmp_path_factory.mktemp("weights")
    components = tiny_svd_components(seed=0)
    StableVideoDiffusionPipeline(**components).save_pretrained(root / "svd")
    controlnet = tiny_controlnet(components["unet"], seed=1, random_output=True)
    controlnet.save_pretrained(root / "levitor")
    return root


def test_side_by_side_keeps_every_panel_pixel() -> None:
    panels = [torch.rand(3, 3, 8, 10, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    out = side_by_side(panels, ("a", "b", "c"), scale=2)
    strip = out.shape[2] - 16
    assert out.shape == (3, 3, strip + 16, 3 * 20 + 2 * 4)
    for i, panel in enumerate(panels):
        x0 = i * 24
        shown = out[:, :, strip:, x0 : x0 + 20 : 2][:, :, ::2]
        expected = (panel * 255 + 0.5).floor() / 255
        assert torch.allclose(shown, expected, atol=1e-6)
    assert float(out[:, :, :strip].max()) > 0.5  # the labels are drawn


def test_toy_demo_writes_three_panels_and_a_complete_dump(tiny_weights, tmp_path) -> None:
    out, dump = tmp_path / "demo.mp4", tmp_path / "dump"
    argv = ["demo", "--toy", "--weights", str(tiny_weights), "--steps", "2", "--seed", "3"]
    assert main([*argv, "-o", str(out), "--dump", str(dump), "-q"]) == 0
    frames, _ = read_video(out)
    truth, _ = read_video(dump / "clip" / "frames")
    assert frames.shape[0] == truth.shape[0] == 8
    # the left panel is the clip's ground truth, enlarged 4x (mp4 is lossy: compare loosely)
    height, width = truth.shape[-2] * 4, truth.shape[-1] * 4
    left = frames[:, :, -height:, :width][:, :, 1::4, 1::4]
    assert float((left - truth).abs().mean()) < 0.05
    generated = frames[:, :, -height:, 2 * (width + 4) :]
    assert generated.shape[-1] == width and float(generated.std()) > 0.01
    assert (dump / "levitor" / "controls.json").is_file()
    assert (dump / "clip" / "spec.json").is_file()


def test_toy_demo_rejects_bad_options(tmp_path, capsys) -> None:
    out = tmp_path / "demo.mp4"
    assert main(["demo", "--toy", "--steps", "0", "-o", str(out), "-q"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert not out.exists()
