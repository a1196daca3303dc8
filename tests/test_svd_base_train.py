"""Tiny SVD base-model training (`anima train svd-base`) on a few toy-world clips.

Runs are a handful of steps on 64x64, 4-frame clips with larger learning rates than the
defaults and no warm-up, so that the losses move measurably within the test budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anima.cli import main
from anima.errors import InputError
from anima.methods.levitor.pipeline import LeviTorPipeline
from anima.models.loading import load_svd_components
from anima.models.svd import stem_channels, vae_scale_factor
from anima.models.svd_controlnet import SVDControlNetModel
from anima.training import loss_history
from anima.training.edm import StepNoise
from anima.world.clip import WorldConfig
from anima.world.svd_base.train import (
    BaseTrainConfig,
    FramesDataset,
    build_pipeline,
    initial_unet_and_encoder,
    initial_vae,
    svd_loss,
    train_svd_base,
    vae_loss,
)
from anima.world.writer import write_world

FRAMES = 4
SIZE = (64, 64)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "data"
    return write_world(out, n=3, seed=0, config=WorldConfig(num_frames=FRAMES + 1, size=SIZE))


def make_config(data: Path, out: Path, **overrides) -> BaseTrainConfig:
    settings = dict(
        data=data,
        out=out,
        steps_vae=6,
        steps_unet=6,
        lr_vae=2e-3,
        lr_unet=1e-3,
        lr_warmup_steps=0,
        batch_size=2,
        num_frames=FRAMES,
        vae_batch_size=2,
        vae_frames=2,
        size=SIZE,
        scale_samples=4,
        checkpoint_every=2,
        log_every=1,
        quiet=True,
    )
    return BaseTrainConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def full_run(data_dir: Path, tmp_path_factory):
    config = make_config(data_dir, tmp_path_factory.mktemp("run") / "out")
    return config, train_svd_base(config)


@pytest.fixture(scope="module")
def fixed_frames(data_dir: Path) -> torch.Tensor:
    return FramesDataset(data_dir, FRAMES, SIZE).sample_batch(torch.Generator().manual_seed(7), 2)


def test_vae_steps_lower_the_reconstruction_loss(full_run, fixed_frames) -> None:
    config, result = full_run
    trained = load_svd_components(result.svd_dir, False, torch.float32)["vae"]
    with torch.no_grad():
        before = vae_loss(initial_vae(config.seed), fixed_frames, None, config.kl_weight).rec
        after = vae_loss(trained, fixed_frames, None, config.kl_weight).rec
    assert float(after) < float(before)
    assert len(result.losses["vae"]) == config.steps_vae


def test_unet_steps_lower_the_edm_loss(full_run, fixed_frames) -> None:
    config, result = full_run
    components = load_svd_components(result.svd_dir, False, torch.float32)
    vae = components["vae"]
    draws = StepNoise.draw(
        torch.Generator().manual_seed(3), 2, FRAMES, 4, SIZE, 0.0, 1.0, vae_scale_factor(vae)
    )
    draws.sigma = torch.tensor([0.7, 2.0])

    def loss(unet, encoder) -> float:
        pipe = build_pipeline(vae, encoder, unet)
        with torch.no_grad():
            return float(svd_loss(pipe, unet, fixed_frames, draws))

    fresh = initial_unet_and_encoder(config.seed, config.unet_channels)
    before = loss(*fresh)
    after = loss(components["unet"], components["image_encoder"])
    assert after < before
    assert len(result.losses["unet"]) == config.steps_unet


def test_output_loads_and_runs_in_the_levitor_pipeline(full_run) -> None:
    config, result = full_run
    components = load_svd_components(result.svd_dir, False, torch.float32)
    factor = components["vae"].config.scaling_factor
    assert factor == pytest.approx(result.scaling_factor)
    assert factor != pytest.approx(0.18215)  # measured on the data, not the default
    saved = json.loads((result.svd_dir / "model_index.json").read_text())
    assert saved["_class_name"] == "StableVideoDiffusionPipeline"
    assert list(result.svd_dir.glob("unet/*.safetensors"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        controlnet = SVDControlNetModel.from_unet(
            components["unet"],
            conditioning_embedding_out_channels=stem_channels(vae_scale_factor(components["vae"])),
        )
    pipe = LeviTorPipeline(**components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(3, *SIZE, generator=torch.Generator().manual_seed(0))
    control = torch.zeros(FRAMES, 3, *SIZE)
    frames = pipe(image, control, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert frames.shape == (FRAMES, 3, *SIZE)
    assert torch.isfinite(frames).all()
    stages = [(line["stage"], line["step"]) for line in loss_history(config.out)]
    assert stages == [("vae", i) for i in range(1, 7)] + [("unet", i) for i in range(1, 7)]
    assert (config.out / "train_config.json").is_file()


def _tensors(svd_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(svd_dir.glob("*/*.safetensors")):
        for key, value in load_file(file).items():
            tensors[f"{file.parent.name}/{key}"] = value
    return tensors


def test_resume_mid_stage_is_bit_exact(full_run, data_dir: Path, tmp_path: Path) -> None:
    config, result = full_run
    out = tmp_path / "out"
    assert train_svd_base(make_config(data_dir, out), stop_after=("vae", 3)) is None
    assert (
        train_svd_base(make_config(data_dir, out, resume="latest"), stop_after=("unet", 5)) is None
    )
    resumed = train_svd_base(make_config(data_dir, out, resume="latest"))
    assert resumed is not None and resumed.start == {"unet": 4}
    expected, actual = _tensors(result.svd_dir), _tensors(resumed.svd_dir)
    assert expected.keys() == actual.keys() and expected
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key
    strip = [{k: v for k, v in line.items() if k != "seconds"} for line in loss_history(out)]
    reference = [
        {k: v for k, v in line.items() if k != "seconds"} for line in loss_history(config.out)
    ]
    assert strip == reference


def test_bad_input_exits_with_status_2(data_dir: Path, tmp_path: Path, capsys) -> None:
    args = ["train", "svd-base", "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*args, "--data", str(tmp_path / "missing")]) == 2
    assert "dataset directory not found" in capsys.readouterr().err
    assert main([*args, "--data", str(data_dir), "--frames", "50"]) == 2
    assert "fewer than --frames" in capsys.readouterr().err
    assert main([*args, "--data", str(data_dir), "--height", "60"]) == 2
    assert "--height/--width" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*args, "--data", str(empty)]) == 2


def test_a_fresh_run_refuses_an_existing_run(full_run, data_dir: Path) -> None:
    config, _ = full_run
    with pytest.raises(InputError, match="resume"):
        train_svd_base(make_config(data_dir, config.out))
