"""Animate124's three stages on the shared training loop (issue 21, part 4).

Each stage runs on the tiny priors with finite losses and resumes exactly; priors are an
injectable mapping (a fake prior sees renders of the expected shapes and its gradient drives
the field); the reference reconstruction alone fits the reference view; a stage before its
predecessor is one `InputError` with nothing written; the grids' learning rate scale.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import Tensor

from anima.errors import InputError
from anima.methods.animate124.cameras import make_cameras
from anima.methods.animate124.stages import (
    STAGES,
    Animate124Trainer,
    Reference,
    StageOptions,
    Views,
    pearson,
)
from anima.methods.animate124.train import (
    initial_fields,
    is_finished,
    load_field,
    stage_dir,
    train_stage,
)
from anima.methods.animate124.volume import RenderOptions, render
from anima.training import loss_history
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

SIDE = 16
#: A tiny field, 16 px renders, 16 marching steps, cheap shading; every step checkpointed.
TINY = {
    "render_size": SIDE,
    "march_steps": 16,
    "num_times": 4,
    "grid_levels": 4,
    "grid_base_resolution": 4,
    "grid_max_resolution": 32,
    "grid_log2_table": 10,
    "mlp_hidden": 16,
    "tv_points": 256,
    "shading": "albedo",
    "checkpoint_every": 1,
    "log_every": 1,
    "reference_warmup": 0,
    "reference_every": 2,
    "sd_size": 32,
    "zero123_size": 32,
    "video_size": 32,
    "tile_size": 32,
}
TARGET = torch.tensor([0.1, 0.9, 0.2])


def options(**changes) -> StageOptions:
    return StageOptions(**(TINY | changes))


def reference(side: int = SIDE) -> Reference:
    """A red square on white, its mask, and a depth ramp inside it."""
    image = torch.ones(3, side, side)
    mask = torch.zeros(side, side)
    q = side // 4
    mask[q : side - q, q : side - q] = 1.0
    image[:, mask > 0] = torch.tensor([0.8, 0.2, 0.2])[:, None]
    depth = 1.6 + torch.linspace(0, 0.2, side)[None].expand(side, side)
    return Reference(image, mask, depth.clone())


class PullPrior:
    """A fake prior pulling renders towards `TARGET`: records each call's shape and draws from
    the step's noise generator (so exact resume covers that stream)."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.views: list[Views] = []

    def __call__(self, images: Tensor, views: Views, *, generator, control=None):
        self.shapes.append(tuple(images.shape))
        self.views.append(views)
        jitter = 1.0 + 0.1 * torch.rand((), generator=generator)
        shape = [1] * (images.dim() - 3) + [3, 1, 1]
        return {"fake": jitter * (images - TARGET.view(shape)).square().mean()}


def fake_priors(stage: str) -> dict[str, PullPrior]:
    names = {"static": ("sd15", "zero123"), "dynamic": ("video", "zero123")}
    return {name: PullPrior() for name in names.get(stage, ("video", "zero123", "tile"))}


def finish(run: Path, stage: str, opts: StageOptions, priors=None) -> None:
    train_stage(run, stage, reference(), opts, priors=priors if priors is not None else {})


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A run whose static and dynamic stages finished (fake priors, 2 steps each)."""
    run = tmp_path_factory.mktemp("a124") / "run"
    opts = options(static_steps=2, dynamic_steps=2)
    finish(run, "static", opts, fake_priors("static"))
    finish(run, "dynamic", opts, fake_priors("dynamic"))
    return run


def run_upto(base: Path, tmp: Path, stage: str) -> Path:
    """A copy of ``base`` holding only the stages before ``stage``."""
    run = tmp / "run"
    run.mkdir(parents=True)
    shutil.copy(base / "reference.safetensors", run)
    for before in STAGES[: STAGES.index(stage)]:
        shutil.copytree(base / before, run / before)
    return run


def test_each_stage_runs_on_the_tiny_priors_with_finite_losses(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # every clip starts at t = 0: the dynamic stages' reconstruction and Zero-1-to-3 run too
    opts = options(static_steps=2, dynamic_steps=1, refine_steps=1, zero_rate=1.0, mirror_rate=0.0)
    expected = {
        "static": {"sds_sd15", "sds_zero123", "rec_rgb", "rec_mask", "rec_depth", "entropy"},
        "dynamic": {"sds_video", "sds_zero123", "rec_rgb", "tv", "entropy"},
        "refine": {"sds_video", "sds_zero123", "sds_tile", "tv"},
    }
    tiny = Weights(builtin="tiny")
    for stage in STAGES:
        result = train_stage(run, stage, reference(), opts, weights=tiny, prompt="a red cube")
        assert not result.reused and result.step == opts.steps(stage)
        assert expected[stage] <= set(result.named), (stage, sorted(result.named))
        assert all(math.isfinite(v) for values in result.named.values() for v in values)
        assert is_finished(run, stage)
    # a finished stage is reused as it is, never trained again
    again = train_stage(run, "static", reference(), opts, weights=tiny, prompt="a red cube")
    assert again.reused and again.step == 0
    assert len(loss_history(stage_dir(run, "static"))) == 2


def test_random_shading_adds_the_normal_regularisers(tmp_path: Path) -> None:
    opts = options(static_steps=2, shading="random", textureless_rate=0.0)
    result = train_stage(tmp_path / "run", "static", reference(), opts, priors={})
    assert {"orientation", "normal_smooth", "entropy"} <= set(result.named)
    assert all(math.isfinite(v) for values in result.named.values() for v in values)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_resumes_exactly(stage: str, base_run: Path, tmp_path: Path) -> None:
    opts = options(static_steps=4, dynamic_steps=4, refine_steps=4)
    whole = run_upto(base_run, tmp_path / "whole", stage)
    parts = run_upto(base_run, tmp_path / "parts", stage)
    reference_ = reference()
    train_stage(whole, stage, reference_, opts, priors=fake_priors(stage))
    first = train_stage(parts, stage, reference_, opts, priors=fake_priors(stage), stop_after=2)
    assert first.stopped and not is_finished(parts, stage)
    second = train_stage(parts, stage, reference_, opts, priors=fake_priors(stage))
    assert second.start_step == 2 and second.step == 4
    expected = load_field(stage_dir(whole, stage)).state_dict()
    resumed = load_field(stage_dir(parts, stage)).state_dict()
    assert expected.keys() == resumed.keys()
    for key, value in expected.items():
        assert torch.equal(value, resumed[key]), key
    # and the stage did train: the tables moved from where they started
    start = load_field(stage_dir(base_run, "static")).grids[0].embeddings
    if stage == "static":
        assert not torch.equal(expected["grids.0.embeddings"], start)
    assert [line["step"] for line in loss_history(stage_dir(parts, stage))] == [1, 2, 3, 4]


@torch.no_grad()
def mean_distance_to_target(field, t: float = 0.0) -> float:
    """Mean |render - TARGET| of a fixed side view where the render is opaque."""
    camera = make_cameras(90.0, 60.0)
    out = render(
        field,
        camera.poses[0],
        camera.fov,
        (SIDE, SIDE),
        t,
        background=0.0,
        options=RenderOptions(num_steps=16),
    )
    inside = out.opacity > 0.5
    assert int(inside.sum()) > 10
    return float((out.rgb[:, inside] - TARGET[:, None]).abs().mean())


def test_a_plugged_in_static_prior_sees_images_and_drives_the_field(tmp_path: Path) -> None:
    priors = fake_priors("static")
    opts = options(static_steps=16, reference_every=1000, lr=3e-2, lambda_entropy=0.0)
    result = train_stage(tmp_path / "run", "static", reference(), opts, priors=priors)
    assert priors["sd15"].shapes == [(1, 3, SIDE, SIDE)] * 15  # step 0 is the reference step
    assert priors["zero123"].shapes == [(1, 3, SIDE, SIDE)] * 15
    views = priors["zero123"].views[0]
    assert len(views) == 1 and float(views.radius[0]) == pytest.approx(1.8)
    initial, _ = initial_fields(tmp_path, "static", opts, 0)
    before = mean_distance_to_target(initial)
    after = mean_distance_to_target(result.field)
    assert after < 0.5 * before
    assert result.named["fake"][-1] < result.named["fake"][0]


def test_a_plugged_in_video_prior_sees_clips_of_16_frames(base_run, tmp_path: Path) -> None:
    run = run_upto(base_run, tmp_path, "dynamic")
    priors = fake_priors("dynamic")
    # every clip starts at 0 (Zero-1-to-3 scores its frame 0); no reconstruction pulling back
    opts = options(
        dynamic_steps=8,
        lr=3e-2,
        zero_rate=1.0,
        mirror_rate=0.0,
        lambda_entropy=0.0,
        lambda_rgb=0.0,
        lambda_mask=0.0,
        lambda_depth=0.0,
    )
    result = train_stage(run, "dynamic", reference(), opts, priors=priors)
    assert priors["video"].shapes == [(1, 16, 3, SIDE, SIDE)] * 8
    assert priors["zero123"].shapes == [(1, 3, SIDE, SIDE)] * 8
    clip, first = priors["video"].views[0], priors["zero123"].views[0]
    assert len(clip) == 16 and float(clip.times[0]) == 0.0 and len(first) == 1
    assert torch.equal(first.cameras.poses[0], clip.cameras.poses[0])
    assert bool((clip.times[1:] > clip.times[:-1]).all())
    before = mean_distance_to_target(load_field(stage_dir(run, "static")), 0.5)
    after = mean_distance_to_target(result.field, 0.5)
    assert after < 0.5 * before


def test_the_tile_prior_reads_the_frozen_fields_renders(base_run, tmp_path: Path) -> None:
    run = run_upto(base_run, tmp_path, "refine")
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    frozen_start = load_field(stage_dir(run, "dynamic"))

    def tile(images, views, *, generator, control=None):
        seen.append((tuple(images.shape), tuple(control.shape)))
        expected = torch.stack(
            [
                render(
                    frozen_start,
                    views.cameras.poses[k],
                    views.cameras.fov,
                    (SIDE, SIDE),
                    views.times[k],
                    background=views.background,
                    options=RenderOptions(num_steps=16),
                ).rgb
                for k in range(len(views))
            ]
        )
        assert torch.allclose(control, expected, atol=1e-6)
        return {"tile": (images - control).square().mean()}

    opts = options(refine_steps=2)
    train_stage(run, "refine", reference(), opts, priors={"tile": tile})
    assert seen == [((2, 3, SIDE, SIDE), (2, 3, SIDE, SIDE))] * 2


def test_reconstruction_alone_fits_the_reference_view(tmp_path: Path) -> None:
    opts = options(static_steps=24, reference_every=1, lr=1e-2)
    result = train_stage(tmp_path / "run", "static", reference(), opts, priors={})
    assert set(result.named) == {"loss", "rec_rgb", "rec_mask", "rec_depth"}
    rgb, mask = result.named["rec_rgb"], result.named["rec_mask"]
    assert rgb[-1] < 0.7 * rgb[0] and mask[-1] < 0.7 * mask[0]


def test_pearson_is_scale_free() -> None:
    x = torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert float(pearson(x, 3 * x + 2)) == pytest.approx(1.0, abs=1e-6)
    assert float(pearson(x, -x)) == pytest.approx(-1.0, abs=1e-6)


def test_a_stage_before_its_predecessor_is_one_error_and_writes_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for stage, before in (("dynamic", "static"), ("refine", "dynamic")):
        with pytest.raises(InputError, match=f"{before} stage"):
            train_stage(run, stage, reference(), options(), priors={})
    assert not run.exists()


def test_the_grids_learning_rate_scale(tmp_path: Path) -> None:
    """One Adam step moves a parameter by about lr: the grids by grid_lr_scale x lr."""
    opts = options(static_steps=1, reference_every=1, grid_lr_scale=10.0, lr=1e-3)
    start, _ = initial_fields(tmp_path, "static", opts, 0)
    result = train_stage(tmp_path / "run", "static", reference(), opts, priors={})
    grid = (result.field.grids[0].embeddings - start.grids[0].embeddings).detach().abs().max()
    mlp = (result.field.mlp[0].weight - start.mlp[0].weight).detach().abs().max()
    assert float(grid) == pytest.approx(1e-2, rel=0.05)
    assert float(mlp) == pytest.approx(1e-3, rel=0.05)
    trainer = Animate124Trainer("static", start, reference(), {}, opts)
    assert trainer.lr_scale("field.grids.0.embeddings") == 10.0
    assert trainer.lr_scale("field.mlp.0.weight") == 1.0
