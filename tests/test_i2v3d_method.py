"""`anima animate --method i2v3d --weights tiny` (stage "keyframes") end to end on both bases,
``anima weights check i2v3d``, LoRA folders, and bad input as one line before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES

from anima.cli import main
from anima.io import read_video
from anima.methods.i2v3d import I2V3DOptions, load_pipeline
from anima.methods.i2v3d.keyframes import depth_condition
from anima.methods.i2v3d.loading import LORA_FILE, tiny_base_unet
from anima.methods.registry import default_method, get_method
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

SIDE = 64


def spec_file(tmp_path: Path, options: dict | None = None) -> Path:
    """examples/astronaut_behind.json scaled to 64x64 and 5 frames: keyframes 0, 2, 4."""
    data = json.loads((EXAMPLES / "astronaut_behind.json").read_text())
    data["image"] = str((EXAMPLES / data["image"]).resolve())
    scale = SIDE / 512
    data["size"] = [SIDE, SIDE]
    data["num_frames"] = 5
    for obj in data["objects"]:
        obj["polygon"] = [[x * scale, y * scale] for x, y in obj["polygon"]]
        for key in obj.get("trajectory", []):
            key["x"] *= scale
            key["y"] *= scale
    fast = {"stage": "keyframes", "keyframe_every": 2, "num_inference_steps": 2, "lora": None}
    data["options"] = fast | (options or {})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(autouse=True)
def fresh_pipeline_cache():
    load_pipeline.cache_clear()
    yield
    load_pipeline.cache_clear()


def animate(spec: Path, out: Path, dump: Path | None = None) -> int:
    argv = ["animate", str(spec), "-o", str(out), "--method", "i2v3d", "--weights", "tiny"]
    return main([*argv, *(["--dump", str(dump)] if dump else []), "-q"])


def save_lora(folder: Path, base: str) -> Path:
    """A random rank-4 LoRA of ``base``'s tiny UNet in diffusers' ``save_lora_weights``
    layout (what the LoRA trainer writes)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = tiny_base_unet(base)  # type: ignore[arg-type]
    config = LoraConfig(
        r=4,
        lora_alpha=4,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        init_lora_weights=False,
    )
    unet.add_adapter(config)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True
    )
    assert (folder / LORA_FILE).is_file()
    return folder


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
def test_keyframes_animate_on_both_bases(tmp_path: Path, base: str) -> None:
    out, dump = tmp_path / "out.mp4", tmp_path / "dump"
    assert animate(spec_file(tmp_path, {"base": base}), out, dump) == 0
    frames, _fps = read_video(out)
    assert frames.shape[0] == 3 and frames.shape[-2:] == (SIDE, SIDE)
    controls = json.loads((dump / "controls.json").read_text())
    assert controls["keyframes"] == [0, 2, 4]
    assert controls["generation_size"] == [SIDE, SIDE]
    assert (dump / "depth_0002.png").is_file()


def test_weights_check_lists_the_components(tmp_path: Path, capsys) -> None:
    assert main(["weights", "check", "i2v3d", "--weights", "tiny"]) == 0
    text = capsys.readouterr().out
    for subdir in ("sdxl/", "controlnet-depth-sdxl/", "sd15/", "controlnet-depth-sd15/"):
        assert subdir in text
    for subdir, name in (
        ("sdxl", "model_index.json"),
        ("controlnet-depth-sdxl", "config.json"),
        ("svd", "model_index.json"),
    ):
        (tmp_path / subdir).mkdir()
        (tmp_path / subdir / name).write_text("{}")
    assert main(["weights", "check", "i2v3d", "--weights", str(tmp_path)]) == 2
    assert "temporal-depth-controlnet" in capsys.readouterr().err  # the video's ControlNet
    (tmp_path / "temporal-depth-controlnet").mkdir()
    (tmp_path / "temporal-depth-controlnet" / "config.json").write_text("{}")
    assert main(["weights", "check", "i2v3d", "--weights", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "sdxl/ present" in text and "sd15/ absent" in text and "svd/ present" in text
    assert "sdxl-vae-fp16-fix/ (optional) absent" in text


def test_weights_for_the_other_base_are_missing(tmp_path: Path, capsys) -> None:
    for subdir, name in (("sd15", "model_index.json"), ("controlnet-depth-sd15", "config.json")):
        (tmp_path / subdir).mkdir()
        (tmp_path / subdir / name).write_text("{}")
    cls = get_method("i2v3d")
    weights = Weights(root=tmp_path)
    assert not cls.missing_components(weights, I2V3DOptions(base="sd15", stage="keyframes"))
    missing = cls.missing_components(weights, I2V3DOptions(base="sdxl", stage="keyframes"))
    assert [c.subdir for c in missing] == ["sdxl", "controlnet-depth-sdxl"]
    missing = cls.missing_components(weights, I2V3DOptions(base="sd15"))  # the whole video
    assert [c.subdir for c in missing] == ["svd", "temporal-depth-controlnet"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"num_inference_steps": "many"}, "options.num_inference_steps"),
        ({"stage": "interpolation"}, "options.stage"),
        ({"base": "sd3"}, "options.base"),
        ({"size": [50, 64]}, "options.size"),
        ({"window": 2, "overlap": 2}, "overlap"),
        ({"lora": "no-such-folder"}, LORA_FILE),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, options, expected) -> None:
    out = tmp_path / "out.mp4"
    assert animate(spec_file(tmp_path, options), out) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], lines
    assert not out.exists()


def test_a_lora_of_another_base_is_one_line(tmp_path, capsys) -> None:
    folder = save_lora(tmp_path / "lora-sd15", "sd15")
    out = tmp_path / "out.mp4"
    assert animate(spec_file(tmp_path, {"base": "sdxl", "lora": str(folder)}), out) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "does not fit the sdxl UNet" in lines[0] and str(folder) in lines[0]
    assert not out.exists()


def test_a_lora_of_the_base_changes_the_keyframes_and_comes_off(tmp_path) -> None:
    folder = save_lora(tmp_path / "lora", "sd15")
    pipe = load_pipeline(Weights(builtin="tiny"), torch.device("cpu"), torch.float32, "sd15")
    pipe.set_progress_bar_config(disable=True)
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masks = torch.ones(1, 32, 32, dtype=torch.bool)
    depth = depth_condition(torch.rand(1, 32, 32) + 1)

    def run() -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return pipe(
            images,
            depth,
            masks,
            masks,
            "a cat",
            num_inference_steps=2,
            generator=generator,
            output_type="latent",
        )

    plain = run()
    pipe.use_lora(folder, 1.0)
    assert pipe.lora == (folder, 1.0)
    with_lora = run()
    pipe.use_lora(None)
    assert not torch.allclose(with_lora, plain, atol=1e-4)
    torch.testing.assert_close(run(), plain, atol=1e-6, rtol=0)


def test_the_method_is_registered_and_the_default_is_unchanged() -> None:
    cls = get_method("i2v3d")
    assert cls.name == "i2v3d" and "tiny" in cls.builtin_weights
    assert default_method(Weights(builtin="tiny")) != "i2v3d"
