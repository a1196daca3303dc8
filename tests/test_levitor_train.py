"""LeviTor ControlNet training (LeviTor §3.2, Eq. 6) on tiny models and a toy dataset.

The toy clips are 64x64: a checkered square moving right, down and growing (nearer) in front of
a colour gradient, plus a static box; instance and 16-bit depth PNGs (the last clip has no depth
and uses the ground-plane fallback). Training runs use a larger learning rate than the paper's
1e-5 and a sigma distribution centred on the evaluation sigmas, so that 30 steps of a tiny model
move the loss measurably.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from anima.cli_train import train_app
from anima.errors import InputError
from anima.io import write_depth_png, write_png
from anima.methods.levitor.controls import control_signal
from anima.methods.levitor.dataset import (
    LevitorBatch,
    LevitorDataset,
    moved_objects,
    moving_pixels,
)
from anima.methods.levitor.train import (
    TrainConfig,
    build_pipeline,
    initial_controlnet,
    levitor_loss,
    load_frozen_models,
    moving_pixel_weight,
    svd_conditioning,
    train_levitor,
)
from anima.models.loading import load_svd_controlnet
from anima.models.svd import svd_scheduler
from anima.models.tiny import tiny_svd_unet
from anima.training import loss_history
from anima.training.edm import (
    StepNoise,
    edm_input_scale,
    edm_timestep,
    epsilon_loss,
    v_prediction_denoised,
)
from anima.weights import Weights

TINY = Weights(builtin="tiny")
SIZE = (64, 64)
FRAMES = 4
EVAL_SIGMAS = (0.5, 1.0, 2.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def write_clip(root: Path, name: str, frames: int = 6, depth: bool = True, phase: float = 0.0):
    h, w = SIZE
    clip = root / name
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    background = torch.stack([xx / w, yy / h, 0.5 + 0.3 * torch.sin(xx / 7 + phase)])
    for f in range(frames):
        image = background.clone()
        ids = torch.zeros(h, w, dtype=torch.uint8)
        distance = 8.0 + 4.0 * (1 - yy / h)
        side, x0, y0 = 12 + 2 * f, 6 + 4 * f, 20 + f
        box = (slice(y0, y0 + side), slice(x0, x0 + side))
        checker = ((yy[box] // 3 + xx[box] // 3) % 2).float()
        image[:, box[0], box[1]] = torch.stack([checker, 1 - checker, 0.2 + 0 * checker])
        ids[box], distance[box] = 1, 5.0 - 0.3 * f
        ids[50:60, 40:56], distance[50:60, 40:56] = 2, 6.0
        image[:, 50:60, 40:56] = torch.tensor([0.9, 0.1, 0.6])[:, None, None]
        write_png(clip / "frames" / f"{f:04d}.png", image)
        write_png(clip / "instance" / f"{f:04d}.png", ids.numpy())
        if depth:
            write_depth_png(clip / "depth" / f"{f:04d}.png", distance)
    return clip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("levitor-data")
    for i in range(3):
        write_clip(root, f"clip{i}", depth=i < 2, phase=float(i))
    return root


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        data=data,
        out=out,
        steps=30,
        size=SIZE,
        num_frames=FRAMES,
        lr=3e-3,  # the paper's 1e-5 barely moves a tiny random model in 30 steps
        p_mean=0.0,
        p_std=0.5,
        checkpoint_every=15,
        log_every=5,
        quiet=True,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def frozen_pipeline(controlnet=None):
    components = load_frozen_models(TINY)
    for model in components.values():
        if isinstance(model, torch.nn.Module):
            model.requires_grad_(False).eval()
    if controlnet is None:
        controlnet = initial_controlnet(components["unet"], None, False, seed=0)
    return build_pipeline(components, controlnet), controlnet


def evaluation_loss(data: Path, controlnet=None) -> float:
    """Eq. 6 on a FIXED batch (clip 0, frames 0-3) at fixed sigmas with fixed noise."""
    pipe, controlnet = frozen_pipeline(controlnet)
    batch = LevitorBatch.collate([LevitorDataset(data, FRAMES, SIZE).load(0, 0, points_seed=0)])
    total = 0.0
    for i, sigma in enumerate(EVAL_SIGMAS):
        draws = StepNoise.draw(torch.Generator().manual_seed(100 + i), 1, FRAMES, 4, SIZE, 0, 1)
        draws.sigma = torch.tensor([sigma])
        with torch.no_grad():
            total += float(levitor_loss(pipe, controlnet, batch, draws))
    return total / len(EVAL_SIGMAS)


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("levitor-full")
    before = evaluation_loss(data_dir)
    result = train_levitor(config(data_dir, out), TINY)
    return out, result, before


# ------------------------------------------------------------------------------ dataset


def test_sample_controls_are_control_signal_of_the_sample(data_dir: Path) -> None:
    dataset = LevitorDataset(data_dir, FRAMES, SIZE)
    drawn = dataset.sample(torch.Generator().manual_seed(0))
    # clip 0: depth from files; clip 2: the ground-plane fallback
    for sample in (dataset.load(0, 1, points_seed=5), dataset.load(2, 2, points_seed=9), drawn):
        assert sample.frames.shape == (FRAMES, 3, *SIZE)
        assert 0.0 <= float(sample.frames.min()) and float(sample.frames.max()) <= 1.0
        assert sample.instance.dtype == torch.int64 and sample.distance.min() > 0
        assert sample.moved_ids == (1,)  # the square moves, the box does not
        _, maps = control_signal(
            sample.instance, sample.distance, sample.moved_ids, size=SIZE, seed=sample.points_seed
        )
        assert torch.equal(maps, sample.control)
        assert set(sample.control[:, 1].unique().tolist()) == {0.0, 1.0, 2.0}


def test_centre_crop_keeps_ids_unblended(data_dir: Path) -> None:
    wide = LevitorDataset(data_dir, FRAMES, (32, 64)).load(0, 0)
    full = LevitorDataset(data_dir, FRAMES, SIZE).load(0, 0)
    assert wide.frames.shape == (FRAMES, 3, 32, 64)
    assert torch.equal(wide.instance, full.instance[:, 16:48])  # centre rows of a 64x64 clip
    small = LevitorDataset(data_dir, FRAMES, (16, 32)).load(0, 0)
    assert set(small.instance.unique().tolist()) <= {0, 1, 2}
    assert moved_objects(full.instance) == (1,)


def test_dataset_validation_names_the_clip(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_clip(root, "good")
    bad = write_clip(root, "no_masks", depth=False)
    for path in (bad / "instance").iterdir():
        path.unlink()
    (bad / "instance").rmdir()
    with pytest.raises(InputError, match="missing instance/") as error:
        LevitorDataset(root, FRAMES, SIZE)
    assert "no_masks" in str(error.value)

    write_clip(root, "no_masks", depth=False)
    short = write_clip(root, "short", frames=3)
    with pytest.raises(InputError, match="fewer than") as error:
        LevitorDataset(root, FRAMES, SIZE)
    assert str(short) in str(error.value)

    for path in (short / "depth").iterdir():
        path.unlink()
    (short / "depth").rmdir()
    write_clip(root, "short", frames=6, depth=False)
    (short / "instance" / "0005.png").unlink()
    with pytest.raises(InputError, match="6 frames but 5") as error:
        LevitorDataset(root, FRAMES, SIZE)
    assert "short" in str(error.value)

    write_png(short / "instance" / "0005.png", torch.zeros(32, 32, dtype=torch.uint8).numpy())
    with pytest.raises(InputError, match="32x32") as error:
        LevitorDataset(root, FRAMES, SIZE).load(2, 2)
    assert "short" in str(error.value)

    with pytest.raises(InputError, match="not found"):
        LevitorDataset(tmp_path / "absent", FRAMES, SIZE)


# ------------------------------------------------------------------------------ the loss


def test_edm_terms_are_the_euler_schedulers() -> None:
    scheduler = svd_scheduler()
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(0)
    for i, t in enumerate(scheduler.timesteps[:3]):
        sigma = scheduler.sigmas[i]
        sample = torch.randn(1, 2, 4, 3, 3, generator=generator) * float(sigma)
        output = torch.randn(1, 2, 4, 3, 3, generator=generator)
        assert torch.allclose(edm_timestep(sigma), t)
        scaled = scheduler.scale_model_input(sample, t)
        assert torch.allclose(scaled, edm_input_scale(sigma) * sample)
        x0 = scheduler.step(output, t, sample).pred_original_sample
        assert torch.allclose(x0, v_prediction_denoised(sample, output, sigma), atol=1e-5)

    # Eq. 6 equals the v-error weighted by 1 / (sigma^2 + 1)
    sigma = torch.tensor([0.3, 4.0]).reshape(2, 1, 1, 1, 1)
    z0, eps, v = (torch.randn(2, 3, 4, 5, 5, generator=generator) for _ in range(3))
    x = z0 + sigma * eps
    target = (eps - sigma * z0) / torch.sqrt(sigma**2 + 1)
    expected = torch.mean((target - v) ** 2 / (sigma**2 + 1))
    assert torch.allclose(epsilon_loss(x, eps, v, sigma), expected, atol=1e-6)
    # EDM's lambda(sigma) weighting is the plain v-error, and so the x0-error times lambda
    assert torch.allclose(epsilon_loss(x, eps, v, sigma, "edm"), torch.mean((target - v) ** 2))
    x0 = v_prediction_denoised(x, v, sigma)
    edm = torch.mean((sigma**2 + 1) / sigma**2 * (x0 - z0) ** 2)
    assert torch.allclose(epsilon_loss(x, eps, v, sigma, "edm"), edm, atol=1e-5)


def test_moving_weight_covers_the_moved_object_and_what_it_uncovers(data_dir: Path) -> None:
    sample = LevitorDataset(data_dir, FRAMES, SIZE).load(0, 1)
    moving = moving_pixels(sample.instance, sample.moved_ids)
    square, box = sample.instance == 1, sample.instance == 2
    assert torch.equal(moving, square | square[:1])  # the static box is not weighted
    assert not bool((moving & box).any())

    weight = moving_pixel_weight(moving[None], (16, 16), 10.0)
    assert weight.shape == (1, FRAMES, 1, 16, 16)
    assert set(weight.unique().tolist()) == {1.0, 10.0}
    # a latent pixel is weighted exactly when its 4x4 patch holds a moving pixel
    touched = moving.reshape(FRAMES, 16, 4, 16, 4).any(dim=4).any(dim=2)
    assert torch.equal(weight[0, :, 0] == 10.0, touched)

    # the weight scales each latent pixel's term of Eq. 6
    generator = torch.Generator().manual_seed(0)
    sigma = torch.tensor([2.0]).reshape(1, 1, 1, 1, 1)
    z0, eps, v = (torch.randn(1, FRAMES, 4, 16, 16, generator=generator) for _ in range(3))
    x = z0 + sigma * eps
    target = (eps - sigma * z0) / torch.sqrt(sigma**2 + 1)
    weighted = epsilon_loss(x, eps, v, sigma, "edm", weight)
    assert torch.allclose(weighted, torch.mean(weight * (target - v) ** 2), atol=1e-6)


def test_training_conditioning_is_the_inference_pipelines(data_dir: Path) -> None:
    """The ControlNet receives in training exactly what `LeviTorPipeline` gives it."""
    pipe, controlnet = frozen_pipeline()
    sample = LevitorDataset(data_dir, FRAMES, SIZE).load(1, 1, points_seed=3)
    seen: dict = {}

    def capture(module, args, kwargs):
        seen.update(kwargs, sample=args[0])

    handle = controlnet.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        pipe(  # the pipeline's defaults for fps, motion bucket and noise augmentation
            sample.frames[0],
            sample.control,
            num_inference_steps=1,
            min_guidance_scale=1.0,
            max_guidance_scale=1.0,
            generator=torch.Generator().manual_seed(7),
            output_type="latent",
        )
    finally:
        handle.remove()
    defaults = TrainConfig(data=data_dir, out=data_dir)
    aug_noise = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(7))
    cond = svd_conditioning(
        pipe,
        sample.frames[None, 0],
        aug_noise,
        FRAMES,
        defaults.fps,
        defaults.motion_bucket_id,
        defaults.noise_aug_strength,
    )
    assert torch.equal(seen["encoder_hidden_states"], cond.embedding)
    assert torch.equal(seen["added_time_ids"], cond.time_ids)
    assert torch.allclose(cond.time_ids, torch.tensor([[5.0, 100.0, 0.02]]))
    assert torch.equal(seen["sample"][:, :, 4:], cond.image_latents)
    assert torch.equal(seen["controlnet_cond"], sample.control[None])


# ------------------------------------------------------------------------------ training


def test_training_lowers_the_loss_on_a_fixed_batch(full_run, data_dir: Path) -> None:
    out, result, before = full_run
    after = evaluation_loss(data_dir, load_svd_controlnet(out / "controlnet", False))
    assert after < 0.8 * before, (before, after)
    assert result.start_step == 0 and result.step == 30 and len(result.losses) == 30
    log = loss_history(out)
    assert [line["step"] for line in log] == [5, 10, 15, 20, 25, 30]
    assert set(log[0]) == {"step", "loss", "lr", "seconds"}
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["steps"] == 30 and saved["size"] == list(SIZE)


def test_checkpoint_holds_a_loadable_controlnet(full_run) -> None:
    out, result, _ = full_run
    assert result.checkpoints == [out / "checkpoint-15", out / "checkpoint-30"]
    checkpoint = out / "checkpoint-15"
    assert json.loads((checkpoint / "training_state.json").read_text())["step"] == 15
    controlnet = load_svd_controlnet(checkpoint / "controlnet", False)
    final = load_svd_controlnet(out / "controlnet", False)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(controlnet.config) == public(final.config)
    last = load_file(out / "checkpoint-30" / "controlnet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(last[k], v) for k, v in final.state_dict().items())


def test_resume_from_step_15_is_bit_exact(full_run, data_dir: Path, tmp_path: Path) -> None:
    """A run that went on past its checkpoint (as if killed at step 20) resumes from it: the
    same weights and losses as the uninterrupted run, each step logged once."""
    full_out, full, _ = full_run
    out = tmp_path / "resumed"
    first = train_levitor(config(data_dir, out, steps=20), TINY)
    assert first.losses == full.losses[:20]
    assert [line["step"] for line in loss_history(out)] == [5, 10, 15, 20]
    with pytest.raises(InputError, match="already holds checkpoints"):
        train_levitor(config(data_dir, out), TINY)
    resumed = train_levitor(config(data_dir, out, resume=str(out / "checkpoint-15")), TINY)
    assert resumed.start_step == 15 and resumed.losses == full.losses[15:]

    name = "diffusion_pytorch_model.safetensors"
    expected = load_file(full_out / "controlnet" / name)
    actual = load_file(out / "controlnet" / name)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)

    def steps_and_losses(folder: Path) -> list[tuple]:
        return [(line["step"], line["loss"], line["lr"]) for line in loss_history(folder)]

    assert steps_and_losses(out) == steps_and_losses(full_out)


def test_cli_with_gradient_checkpointing_matches_the_api(data_dir: Path, tmp_path: Path) -> None:
    def cli_args(out: Path, data: Path = data_dir, height: str = "64") -> list[str]:
        return [
            "levitor", "--data", str(data), "--out", str(out), "--weights", "tiny",
            "--steps", "2", "--height", height, "--width", "64", "--frames", "4",
            "--lr", "3e-3", "--gradient-checkpointing", "--quiet",
        ]  # fmt: skip

    result = CliRunner().invoke(train_app, cli_args(tmp_path / "cli"))
    assert result.exit_code == 0, result.output
    # The CLI keeps the default sigma distribution; the API run does not checkpoint gradients.
    api = config(data_dir, tmp_path / "api", steps=2, p_mean=0.7, p_std=1.6, log_every=10)
    train_levitor(api, TINY)
    name = "diffusion_pytorch_model.safetensors"
    cli = load_file(tmp_path / "cli" / "controlnet" / name)
    ref = load_file(tmp_path / "api" / "controlnet" / name)
    assert all(torch.allclose(cli[k], ref[k], atol=1e-6) for k in ref)

    bad = CliRunner().invoke(train_app, cli_args(tmp_path / "bad", height="60"))
    assert isinstance(bad.exception, InputError) and "--height" in str(bad.exception)
    missing = CliRunner().invoke(train_app, cli_args(tmp_path / "m", data=tmp_path / "absent"))
    assert isinstance(missing.exception, InputError) and "not found" in str(missing.exception)


def test_ablation_variant_reaches_the_samples_and_the_controlnet(data_dir, tmp_path) -> None:
    """An ablation ControlNet is trained on its variant's maps and records the variant, so
    inference feeds it the same signal; starting from another variant's model is refused."""
    dataset = LevitorDataset(data_dir, FRAMES, SIZE, variant="no_depth")
    sample = dataset.load(0, 1, points_seed=5)
    assert not sample.control[:, 2].any() and sample.control[:, 0].any()
    unet = tiny_svd_unet(seed=0)
    controlnet = initial_controlnet(unet, None, False, seed=0, variant="no_depth")
    assert controlnet.config.control_variant == "no_depth"
    controlnet.save_pretrained(tmp_path / "no_depth")
    assert load_svd_controlnet(tmp_path / "no_depth", False).config.control_variant == "no_depth"
    with pytest.raises(InputError, match="trained on the 'no_depth' control signal"):
        initial_controlnet(unet, tmp_path / "no_depth", False, seed=0, variant="full")


def test_learning_rate_warms_up_then_stays_or_decays_by_cosine() -> None:
    from anima.training import warmup_lr

    assert [warmup_lr(1e-3, 10, s) for s in (1, 5, 10, 500)] == [1e-4, 5e-4, 1e-3, 1e-3]
    decayed = [warmup_lr(1e-3, 10, s, 110, 1e-4) for s in range(1, 111)]
    assert decayed[9] == pytest.approx(1e-3) and decayed[-1] == pytest.approx(1e-4)
    assert decayed[59] == pytest.approx(5.5e-4)  # half way: the mean of the two
    assert all(a >= b for a, b in zip(decayed[9:], decayed[10:], strict=False))
