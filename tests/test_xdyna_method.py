"""The ``xdyna`` method through the CLI: spec ``pose`` section, alignment, weights loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline

from anima.cli import main
from anima.io import read_video
from anima.methods.xdyna import load_pipeline
from anima.methods.xdyna.adapter import DynamicsAdapter
from anima.methods.xdyna.keypoints import load_openpose, save_openpose
from anima.models.ip_adapter import save_ip_adapter
from anima.models.tiny import tiny_clip_image_encoder
from anima.models.tiny_sd import (
    motion_unet,
    randomise_zero_convs,
    tiny_controlnet_2d,
    tiny_ip_adapter_state,
    tiny_motion_adapter,
    tiny_sd_unet,
    tiny_sd_vae,
    tiny_text_encoder,
    tiny_tokenizer,
    xdyna_scheduler,
)

EXAMPLE = Path(__file__).parents[1] / "examples" / "figure_dance"


@pytest.fixture(autouse=True)
def fresh_pipeline_cache():
    load_pipeline.cache_clear()
    yield
    load_pipeline.cache_clear()


def example_copy(tmp_path: Path, **updates) -> Path:
    """The figure_dance example in ``tmp_path`` with 6 frames, 2 steps and ``updates``."""
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLE, folder)
    spec = json.loads((folder / "spec.json").read_text())
    spec.update({"num_frames": 6, "options": {"num_inference_steps": 2}})
    for key, value in updates.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    (folder / "spec.json").write_text(json.dumps(spec))
    return folder / "spec.json"


def animate(spec: Path, out: Path, *extra: str) -> int:
    return main(["animate", str(spec), "-o", str(out), "--weights", "tiny", *extra])


def test_example_animates_with_tiny_weights_and_follows_the_driving_pose(tmp_path) -> None:
    spec = example_copy(tmp_path)
    assert animate(spec, tmp_path / "a.mp4", "--dump", str(tmp_path / "dump")) == 0
    frames, _ = read_video(tmp_path / "a.mp4")
    assert frames.shape[0] == 6 and frames.shape[-2:] == (256, 256)
    controls = json.loads((tmp_path / "dump" / "controls.json").read_text())
    assert controls["generation_size"] == [64, 64]
    assert controls["alignment"]["measure"] == "height"

    # the same person driven by a shifted skeleton gives another video
    driving = load_openpose(spec.parent / "driving_keypoints.json")
    moved = driving.transformed(1.0, [30.0, 0.0], driving.size)
    save_openpose(spec.parent / "driving_keypoints.json", moved)
    shifted = example_copy(
        tmp_path / "other",
        pose={
            "keypoints": str(spec.parent / "driving_keypoints.json"),
            "reference_keypoints": "person_keypoints.json",
            "align": False,
        },
    )
    assert animate(shifted, tmp_path / "b.mp4") == 0
    other, _ = read_video(tmp_path / "b.mp4")
    assert (other.float() - frames.float()).abs().max() > 0


def test_alignment_puts_the_driving_neck_on_the_persons_neck(tmp_path) -> None:
    spec = example_copy(tmp_path)
    assert animate(spec, tmp_path / "a.mp4", "--dump", str(tmp_path / "dump")) == 0
    aligned = np.array(json.loads((tmp_path / "dump" / "controls.json").read_text())["keypoints"])
    person = load_openpose(spec.parent / "person_keypoints.json")
    neck = 1  # the anchor: the driving neck's median over the first frames lands on the person's
    assert np.allclose(np.median(aligned[:, neck], axis=0), person.body[0, neck], atol=1e-2)


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ({"pose": None}, "needs a 'pose' section"),
        ({"pose": {"align": True}}, "needs 'video' or 'keypoints'"),
        ({"num_frames": 500}, "num_frames asks for 500"),
        ({"pose": {"keypoints": "missing.json"}}, "missing.json"),
        ({"options": {"window": 40}}, "at most 32"),
    ],
)
def test_bad_pose_input_is_a_one_line_error(tmp_path, capsys, updates, message) -> None:
    spec = example_copy(tmp_path, **updates)
    assert animate(spec, tmp_path / "out.mp4") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.mp4").exists()


def save_tiny_weights(root: Path) -> None:
    """DIR/sd15, DIR/motion-adapter, DIR/xdyna/* written from tiny random models."""
    unet = tiny_sd_unet(seed=0)
    StableDiffusionPipeline(
        vae=tiny_sd_vae(),
        text_encoder=tiny_text_encoder(),
        tokenizer=tiny_tokenizer(),
        unet=unet,
        scheduler=xdyna_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(root / "sd15")
    adapter = tiny_motion_adapter(seed=1)
    adapter.save_pretrained(root / "motion-adapter")
    DynamicsAdapter.from_unet(motion_unet(unet, adapter)).save_pretrained(root / "xdyna/adapter")
    pose = tiny_controlnet_2d(unet, 3, seed=2)
    randomise_zero_convs(pose, std=0.3)
    pose.save_pretrained(root / "xdyna/pose_controlnet")


def test_user_weights_directory_loads_and_runs(tmp_path, capsys) -> None:
    root = tmp_path / "weights"
    save_tiny_weights(root)
    spec = example_copy(tmp_path, options={"num_inference_steps": 1, "size": [32, 32]})
    out = tmp_path / "a.mp4"
    assert main(["animate", str(spec), "-o", str(out), "--weights", str(root)]) == 0
    assert read_video(out)[0].shape[0] == 6
    shutil.rmtree(root / "xdyna/pose_controlnet")
    load_pipeline.cache_clear()
    assert main(["animate", str(spec), "-o", str(tmp_path / "b.mp4"), "--weights", str(root)]) == 2
    assert "pose_controlnet" in capsys.readouterr().err


def test_ip_adapter_in_the_weights_directory_gives_image_tokens(tmp_path) -> None:
    """DIR/ip-adapter/ adds the reference's image tokens; options.ip_adapter_scale 0 gives
    the video of the weights without it."""
    root = tmp_path / "weights"
    save_tiny_weights(root)

    def video(name: str, scale: float) -> np.ndarray:
        options = {"num_inference_steps": 1, "size": [32, 32], "ip_adapter_scale": scale}
        spec = example_copy(tmp_path / name, options=options)
        out = tmp_path / f"{name}.mp4"
        assert main(["animate", str(spec), "-o", str(out), "--weights", str(root)]) == 0
        load_pipeline.cache_clear()
        return read_video(out)[0].numpy()

    without = video("without", 1.0)
    folder = root / "ip-adapter"
    folder.mkdir()
    state = tiny_ip_adapter_state(tiny_sd_unet(seed=0), image_features=32, seed=1)
    save_ip_adapter(state, folder / "ip-adapter-plus_sd15.safetensors")
    tiny_clip_image_encoder(seed=0).save_pretrained(folder / "image_encoder")
    with_tokens = video("with", 1.0)
    assert np.abs(with_tokens.astype(float) - without).max() > 0
    assert np.array_equal(video("scale0", 0.0), without)
