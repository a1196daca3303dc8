"""``anima train xdyna`` on tiny models and toy-world clips: the loss goes down, resume is exact,
stage 2 trains the face ControlNet alone, and the output is a weights directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anima.cli import main
from anima.methods.xdyna.dataset import XDynaDataset
from anima.methods.xdyna.pipeline import XDynaPipeline
from anima.methods.xdyna.train import (
    XDynaTrainConfig,
    load_components,
    train_xdyna,
    xdyna_loss,
)
from anima.training import loss_history, step_generator
from anima.weights import Weights
from anima.world import WorldConfig, make_clip
from anima.world.writer import write_clip

SIZE = (32, 32)
TINY = Weights(builtin="tiny")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Three clips with a figure (human) and two without (scene)."""
    root = tmp_path_factory.mktemp("xdyna_data")
    human = WorldConfig(size=(64, 64), num_frames=6, figure_prob=1.0, camera_move_prob=0.0)
    scene = WorldConfig(size=(64, 64), num_frames=6, figures=False)
    found = 0
    for seed in range(100):
        clip = make_clip(seed, human)
        if clip.keypoints.shape[0] and clip.keypoint_visible[0, :, 1].all():
            write_clip(clip, root / f"human_{found}")
            found += 1
            if found == 3:
                break
    for i in range(2):
        write_clip(make_clip(1000 + i, scene), root / f"scene_{i}")
    return root


def config(data_dir: Path, out: Path, **kwargs) -> XDynaTrainConfig:
    settings = dict(
        data=data_dir,
        out=out,
        steps=4,
        batch_size=2,
        lr=1e-3,
        size=SIZE,
        num_frames=4,
        checkpoint_every=2,
        quiet=True,
    )
    return XDynaTrainConfig(**(settings | kwargs))


def fixed_loss(data_dir: Path, init: Path | None, stage: str = "motion") -> float:
    """Mean loss on four fixed batches with the parts in ``init`` (fresh ones when None)."""
    components = load_components(TINY, init, stage)
    pipe = XDynaPipeline(**components)
    dataset = XDynaDataset(data_dir, 4, SIZE)
    losses = []
    with torch.no_grad(), pipe.adapter_context():
        text = pipe.encode_prompt([""])
        for i in range(4):
            batch = dataset.sample_batch(step_generator(99, i, 0, 0), 4, 0.3)
            generator = step_generator(99, i, 0, 1)
            losses.append(float(xdyna_loss(pipe, batch, text, generator, stage == "face")))
    return sum(losses) / len(losses)


def test_dataset_mixes_human_and_blank_scene_samples(data_dir) -> None:
    dataset = XDynaDataset(data_dir, 4, SIZE)
    assert len(dataset.human) == 3 and len(dataset.scene) == 2
    batch = dataset.sample_batch(torch.Generator().manual_seed(0), 16, 0.5)
    assert batch.frames.shape == (16, 4, 3, *SIZE) and batch.face.shape == (16, 4, 6, *SIZE)
    human = batch.human
    assert human.any() and (~human).any()
    assert batch.pose[~human].abs().sum() == 0 and batch.face[~human].abs().sum() == 0
    assert (batch.pose[human].flatten(1).amax(1) > 0).all()


def test_thirty_steps_lower_the_loss_on_fixed_batches(data_dir, tmp_path) -> None:
    out = tmp_path / "run"
    result = train_xdyna(config(data_dir, out, steps=30, checkpoint_every=30), TINY)
    assert len(result.losses) == 30
    before, after = fixed_loss(data_dir, None), fixed_loss(data_dir, out)
    assert after < 0.9 * before, (before, after)
    for part in ("xdyna/adapter", "xdyna/pose_controlnet", "motion-adapter"):
        assert (out / part / "config.json").is_file()


def test_resume_is_bit_exact_and_logs_each_step_once(data_dir, tmp_path) -> None:
    """A run that went on past its checkpoint (as if killed at step 3) resumes from the newest
    one: the weights and the log are the uninterrupted run's, each step logged once."""
    whole = tmp_path / "whole"
    full = train_xdyna(config(data_dir, whole, log_every=1), TINY)
    resumed = tmp_path / "resumed"
    first = train_xdyna(config(data_dir, resumed, steps=3, log_every=1), TINY)
    assert first.losses == full.losses[:3]  # a fresh run is reproducible: the seed decides
    result = train_xdyna(config(data_dir, resumed, resume="latest", log_every=1), TINY)
    assert result.start_step == 2 and result.losses == full.losses[2:]
    for part in ("xdyna/adapter", "xdyna/pose_controlnet", "motion-adapter"):
        (a,) = (whole / part).glob("*.safetensors")
        (b,) = (resumed / part).glob("*.safetensors")
        first_weights, second = load_file(a), load_file(b)
        assert first_weights.keys() == second.keys()
        assert all(torch.equal(first_weights[k], second[k]) for k in first_weights), part

    def lines(out: Path) -> list[tuple]:
        return [(x["stage"], x["step"], x["loss"], x["lr"]) for x in loss_history(out)]

    assert lines(resumed) == lines(whole)
    assert [line[1] for line in lines(resumed)] == [1, 2, 3, 4]


def test_face_stage_trains_the_face_controlnet_alone(data_dir, tmp_path) -> None:
    stage1 = tmp_path / "stage1"
    train_xdyna(config(data_dir, stage1, steps=2), TINY)
    stage2 = tmp_path / "stage2"
    train_xdyna(config(data_dir, stage2, stage="face", init=stage1, steps=2), TINY)
    for part in ("xdyna/adapter", "xdyna/pose_controlnet", "motion-adapter"):
        (a,) = (stage1 / part).glob("*.safetensors")
        (b,) = (stage2 / part).glob("*.safetensors")
        assert a.read_bytes() == b.read_bytes(), part  # stage 2 leaves them alone
    face = load_file(next((stage2 / "xdyna/face_controlnet").glob("*.safetensors")))
    zero_convs = [k for k in face if k.startswith("controlnet_down_blocks")]
    assert any(face[k].abs().sum() > 0 for k in zero_convs)  # it learned from zero


def test_cli_trains_and_rejects_bad_options(data_dir, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    argv = ["train", "xdyna", "--data", str(data_dir), "--out", str(out), "--weights", "tiny"]
    small = ["--steps", "2", "--height", "32", "--width", "32", "--frames", "4", "-q"]
    assert main([*argv, *small]) == 0
    assert (out / "xdyna" / "adapter" / "config.json").is_file()
    assert main([*argv, *small, "--stage", "dance"]) == 2
    assert "--stage" in capsys.readouterr().err
    assert main([*argv, *small, "--stage", "face"]) == 2  # out holds checkpoints already
    fresh = ["--out", str(tmp_path / "face")]
    face = [*argv[:4], *fresh, "--weights", "tiny", *small, "--stage", "face"]
    assert main(face) == 2
    assert "--init" in capsys.readouterr().err
