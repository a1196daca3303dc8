"""The background plate inpainted by a diffusion pipeline (I2V3D §3.1 removes the object with
SDXL inpainting): only the uncovered pixels change, the pipeline comes from the weights'
``inpaint/`` folder, and the plate is made once per scene, not per frame."""

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
from anima.perception.inpaint import (
    DiffusionInpainter,
    inpainter_for,
    load_inpaint_pipeline,
    opencv_inpaint,
    plate_inpainting,
    tiny_inpaint_pipeline,
)
from anima.pipeline import animate, resolve_spec
from anima.render import background_plate, render
from anima.spec import load_spec, parse_spec
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (48, 64)


@pytest.fixture(scope="module")
def tiny() -> DiffusionInpainter:
    return DiffusionInpainter(tiny_inpaint_pipeline(seed=0), num_inference_steps=2)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    tiny_inpaint_pipeline(seed=0).save_pretrained(root / "inpaint")
    return root


def test_tiny_plate_changes_only_the_uncovered_pixels(tiny: DiffusionInpainter) -> None:
    scene = make_scene(SIZE, objects={1: ((20, 14, 36, 34), 4.0)})
    plate = background_plate(scene, inpainter=tiny)
    objects = scene.instance > 0
    assert torch.equal(plate.rgb[:, ~objects], scene.image[:, ~objects])  # bit for bit
    assert torch.equal(plate.observed, ~objects)
    opencv = background_plate(scene)  # the diffusion model did paint the uncovered pixels
    assert float((plate.rgb[:, objects] - opencv.rgb[:, objects]).abs().mean()) > 0.01
    assert float(plate.rgb.min()) >= 0.0 and float(plate.rgb.max()) <= 1.0


def test_diffusion_inpainter_keeps_everything_outside_its_region(tiny) -> None:
    image = torch.rand(3, 80, 40, generator=torch.Generator().manual_seed(1))
    region = torch.zeros(80, 40, dtype=torch.bool)
    region[50:70, 3:9] = True  # near an edge: the crop is clipped to the image
    out = tiny(image, region)
    assert torch.equal(out[:, ~region], image[:, ~region])
    assert not torch.equal(out[:, region], image[:, region])
    assert torch.equal(tiny(image, region), out)  # seeded: the same plate every time
    assert torch.equal(opencv_inpaint(image, region)[:, ~region], image[:, ~region])


def test_weights_inpaint_folder_is_the_runs_plate_inpainter(weights_dir: Path, tiny) -> None:
    scene = make_scene(SIZE, objects={1: ((20, 14, 36, 34), 4.0)})
    inpainter = inpainter_for(Weights(root=weights_dir))
    assert inpainter is not None and inpainter_for(Weights()) is None
    with plate_inpainting(inpainter):
        loaded = background_plate(scene)
    direct = background_plate(scene, inpainter=DiffusionInpainter(tiny.pipeline))
    assert torch.allclose(loaded.rgb, direct.rgb, atol=1e-5)  # same weights, same seed
    assert torch.equal(background_plate(scene).rgb, background_plate(scene).rgb)  # OpenCV again
    assert not torch.allclose(background_plate(scene).rgb, loaded.rgb)


def test_the_plate_is_inpainted_once_per_scene_not_per_frame(tiny) -> None:
    scene = make_scene(SIZE, objects={1: ((20, 14, 36, 34), 4.0)})
    path = [{"t": 0, "x": 28, "y": 24, "depth": 4.0}, {"t": 1, "x": 44, "y": 24, "depth": 4.0}]
    objects = [{"id": 1, "box": [20, 14, 36, 34], "trajectory": path}]
    spec = parse_spec({"version": 1, "image": "x.png", "num_frames": 6, "objects": objects})
    calls = []

    def counting(image: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return tiny(image, region)

    with plate_inpainting(counting):
        clip = render(scene, build_animation(spec, scene))
    assert len(calls) == 1
    # what the object uncovers in the last frame is the diffusion plate there
    uncovered = (scene.instance > 0) & (clip.instance[-1] == 0)
    plate = background_plate(scene, inpainter=tiny)
    assert bool(uncovered.any())
    assert torch.allclose(clip.rgb[-1][:, uncovered], plate.rgb[:, uncovered], atol=1e-6)


def test_animate_uses_the_weights_inpainting_and_weights_lists_it(
    weights_dir: Path, tmp_path: Path, capsys
) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    path = [{"t": 0, "x": 28, "y": 24, "depth": 4.0}, {"t": 1, "x": 44, "y": 24, "depth": 4.0}]
    data = {
        "version": 1,
        "image": "p.png",
        "num_frames": 3,
        "objects": [{"id": 1, "box": [20, 14, 36, 34], "trajectory": path}],
    }
    (tmp_path / "s.json").write_text(json.dumps(data))
    weights = Weights(root=weights_dir)
    spec = resolve_spec(load_spec(tmp_path / "s.json"), method="coarse", weights=weights)
    result = animate(spec, weights)
    plate, scene = result.controls.renderer.plate, result.controls.scene
    loaded = DiffusionInpainter(load_inpaint_pipeline(weights_dir / "inpaint"))
    assert torch.equal(plate.rgb, background_plate(scene, inpainter=loaded).rgb)
    assert not torch.equal(plate.rgb, background_plate(scene).rgb)  # not OpenCV's

    capsys.readouterr()
    assert main(["weights", "--weights", str(weights_dir)]) == 0
    listing = capsys.readouterr().out.splitlines()
    line = next(line for line in listing if "perception/inpaint" in line)
    assert "present" in line and "absent" not in line


def test_a_bad_inpaint_folder_is_one_input_error(tmp_path: Path) -> None:
    folder = tmp_path / "inpaint"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(InputError, match="StableDiffusionInpaintPipeline"):
        load_inpaint_pipeline(folder)
    (folder / "model_index.json").write_text("{")
    with pytest.raises(InputError, match="model_index.json"):
        load_inpaint_pipeline(folder)
