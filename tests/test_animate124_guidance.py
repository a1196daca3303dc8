"""Animate124's score-distillation guidances and their priors' loading (issue 21, parts 3 and 7).

Each guidance on tiny models: gradients reach a small differentiable image module; the SDS
gradient at the latent is w(t) (eps_hat - eps) for a plugged-in predictor; w(t) and the t
range; Zero-1-to-3's pose vector and angle weight; classifier-free guidance; the video prior's
temporal coupling; loading from a weights directory written from the tiny models.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from anima.errors import InputError
from anima.methods.animate124.guidance import (
    ControlNetTileSDS,
    StableDiffusionSDS,
    StableDiffusionSDSOptions,
    TileCondition,
    TileOptions,
    UNetEpsilon,
    VideoSDS,
    VideoSDSOptions,
    Zero123Condition,
    Zero123Epsilon,
    Zero123Options,
    Zero123Reference,
    Zero123SDS,
    alphas_cumprod_from_config,
    draw_timesteps,
    encode_reference,
    encode_text,
    guided_epsilon,
    sds_weight,
    view_angle,
    zero123_pose,
)
from anima.methods.animate124.loading import load_components
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64  # every prior's input side here (latents 8x8)


@pytest.fixture(scope="module")
def tiny() -> dict:
    return load_components(Weights(builtin="tiny"), torch.float32)


@pytest.fixture(scope="module")
def sd_text(tiny) -> tuple[Tensor, Tensor]:
    sd = tiny["sd15"]
    return (
        encode_text(sd["tokenizer"], sd["text_encoder"], "a photo of <cat>"),
        encode_text(sd["tokenizer"], sd["text_encoder"], ""),
    )


class TinyField(torch.nn.Module):
    """A differentiable image source: a feature grid read through a 1x1 'MLP' and a sigmoid."""

    def __init__(self, count: int, size: int = 16, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.grid = torch.nn.Parameter(torch.randn(count, 8, size, size, generator=generator))
        self.mlp = torch.nn.Conv2d(8, 3, 1)

    def forward(self) -> Tensor:
        return torch.sigmoid(self.mlp(self.grid))


def assert_reaches(field: torch.nn.Module) -> None:
    for name, parameter in field.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def reference_of(tiny: dict) -> Zero123Reference:
    generator = torch.Generator().manual_seed(5)
    return encode_reference(tiny["zero123"], torch.rand(3, 32, 32, generator=generator), size=SIZE)


# --- gradients reach the module behind the images ---------------------------------------------


def test_sd15_gradient_reaches_the_field(tiny, sd_text) -> None:
    field = TinyField(2)
    guidance = StableDiffusionSDS.from_components(
        tiny["sd15"], StableDiffusionSDSOptions(size=SIZE)
    )
    losses = guidance(field(), *sd_text, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"sds_sd15"}
    losses["sds_sd15"].backward()
    assert_reaches(field)


def test_zero123_gradient_reaches_the_field(tiny) -> None:
    field = TinyField(2)
    guidance = Zero123SDS.from_components(tiny["zero123"], Zero123Options(size=SIZE))
    losses = guidance(
        field(),
        torch.tensor([90.0, 60.0]),
        torch.tensor([120.0, -45.0]),
        torch.tensor([1.8, 2.0]),
        reference_of(tiny),
        generator=torch.Generator().manual_seed(0),
    )
    assert set(losses) == {"sds_zero123"}
    assert torch.isfinite(losses["sds_zero123"])
    losses["sds_zero123"].backward()
    assert_reaches(field)


def test_video_gradient_reaches_the_field(tiny) -> None:
    modelscope = tiny["modelscope"]
    text = encode_text(modelscope["tokenizer"], modelscope["text_encoder"], "a cat waves")
    negative = encode_text(modelscope["tokenizer"], modelscope["text_encoder"], "")
    field = TinyField(16)
    guidance = VideoSDS.from_components(modelscope, VideoSDSOptions(size=SIZE))
    losses = guidance(field()[None], text, negative, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"sds_video"}
    losses["sds_video"].backward()
    assert_reaches(field)
    per_frame = field.grid.grad.abs().flatten(1).sum(dim=1)
    assert (per_frame > 0).all()  # every one of the 16 frames is scored


def test_tile_gradient_reaches_the_picked_frames_only(tiny, sd_text) -> None:
    field = TinyField(16)
    guidance = ControlNetTileSDS.from_components(
        tiny["sd15"], tiny["controlnet_tile"], TileOptions(size=SIZE)
    )
    control = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    indices = guidance.pick(16, torch.Generator().manual_seed(3))
    assert len(indices) == 2
    losses = guidance(field(), control, *sd_text, indices=indices)
    assert set(losses) == {"sds_tile"}
    losses["sds_tile"].backward()
    assert_reaches(field)
    scored = field.grid.grad.abs().flatten(1).sum(dim=1) > 0
    assert scored.nonzero().flatten().tolist() == indices.tolist()


def test_tile_prediction_depends_on_the_control_image(tiny, sd_text) -> None:
    guidance = ControlNetTileSDS.from_components(tiny["sd15"], tiny["controlnet_tile"])
    noisy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    first = guidance.predictor(noisy, t, TileCondition(sd_text[0], torch.zeros(1, 3, 64, 64)))
    second = guidance.predictor(noisy, t, TileCondition(sd_text[0], torch.ones(1, 3, 64, 64)))
    assert not torch.allclose(first, second)


# --- the SDS gradient itself --------------------------------------------------------------------


class FixedEpsilon:
    """A prior predicting a known tensor per branch, recording its calls."""

    def __init__(self, conditional: Tensor, unconditional: Tensor) -> None:
        self.conditional, self.unconditional = conditional, unconditional
        self.calls: list[tuple[Tensor, Tensor, object]] = []

    def __call__(self, noisy: Tensor, timesteps: Tensor, condition: object) -> Tensor:
        self.calls.append((noisy, timesteps, condition))
        return self.unconditional if is_null(condition) else self.conditional


def is_null(condition: object) -> bool:
    """The unconditional branch: Zero-1-to-3's flag, else all-zero text embeddings."""
    if isinstance(condition, Zero123Condition):
        return condition.null
    text = condition.text if isinstance(condition, TileCondition) else condition
    return bool((text == 0).all())


def identity_encoder(images: Tensor) -> Tensor:
    return images


SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def known_draw(shape: tuple[int, ...], seed: int = 0) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    conditional = torch.randn(shape, generator=generator)
    unconditional = torch.randn(shape, generator=generator)
    return latents, noise, conditional, unconditional


def expected_gradient(
    alphas: Tensor, t: Tensor, scale: float, noise: Tensor, cond: Tensor, uncond: Tensor
) -> Tensor:
    w = (1 - alphas[t]).float().reshape(-1, *([1] * (noise.dim() - 1)))
    return w * (uncond + scale * (cond - uncond) - noise)


@pytest.mark.parametrize("scale", [100.0, 7.5])
def test_sd_gradient_is_w_times_eps_difference(scale: float) -> None:
    latents, noise, cond, uncond = known_draw((3, 4, 8, 8))
    alphas = alphas_cumprod_from_config(SCHEDULE)
    predictor = FixedEpsilon(cond, uncond)
    options = StableDiffusionSDSOptions(guidance_scale=scale, weight=2.0)
    guidance = StableDiffusionSDS(predictor, identity_encoder, alphas, options)
    latents.requires_grad_(True)
    t = torch.tensor([250, 400, 599])
    text = torch.ones(1, 77, 32)
    loss = guidance.from_latents(latents, text, torch.zeros(1, 77, 32), timesteps=t, noise=noise)
    loss["sds_sd15"].backward()
    want = expected_gradient(alphas, t, scale, noise, cond, uncond) * 2.0 / 3
    torch.testing.assert_close(latents.grad, want)
    noisy, seen_t, _ = predictor.calls[0]
    a = alphas[t].float().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, a.sqrt() * latents.detach() + (1 - a).sqrt() * noise)
    assert seen_t.tolist() == t.tolist()


def test_grad_clip_bounds_the_gradient_values() -> None:
    latents, noise, cond, uncond = known_draw((1, 4, 4, 8, 8))
    alphas = alphas_cumprod_from_config(SCHEDULE)
    options = VideoSDSOptions(guidance_scale=100.0, grad_clip=1.0)
    guidance = VideoSDS(FixedEpsilon(cond, uncond), identity_encoder, alphas, options)
    latents.requires_grad_(True)
    t = torch.tensor([900])
    text, negative = torch.ones(1, 77, 32), torch.zeros(1, 77, 32)
    guidance.from_latents(latents, text, negative, timesteps=t, noise=noise)["sds_video"].backward()
    unclipped = expected_gradient(alphas, t, 100.0, noise, cond, uncond)
    assert unclipped.abs().max() > 1.0
    torch.testing.assert_close(latents.grad, unclipped.clamp(-1, 1))


def test_zero123_gradient_is_weighted_by_the_view_angle() -> None:
    latents, noise, cond, uncond = known_draw((3, 4, 8, 8))
    alphas = alphas_cumprod_from_config(SCHEDULE)
    predictor = FixedEpsilon(cond, uncond)
    guidance = Zero123SDS(predictor, identity_encoder, alphas, Zero123Options())
    reference = Zero123Reference(torch.randn(1, 32), torch.randn(1, 4, 8, 8))
    latents.requires_grad_(True)
    t = torch.tensor([200, 300, 600])
    azimuth = torch.tensor([90.0, 180.0, 0.0])
    guidance.from_latents(latents, 90.0, azimuth, 1.8, reference, timesteps=t, noise=noise)[
        "sds_zero123"
    ].backward()
    weights = torch.tensor([20.0, 40.0, 0.0]).reshape(-1, 1, 1, 1)
    want = expected_gradient(alphas, t, 5.0, noise, cond, uncond) * weights / 3
    torch.testing.assert_close(latents.grad, want)
    conditions = [call[2] for call in predictor.calls]
    assert [c.null for c in conditions] == [False, True]
    torch.testing.assert_close(conditions[0].pose, zero123_pose(90.0, azimuth, 1.8))


def test_tile_gradient_is_the_distance_to_the_predicted_x0() -> None:
    latents, noise, cond, uncond = known_draw((2, 4, 8, 8))
    alphas = alphas_cumprod_from_config(SCHEDULE)
    t = torch.tensor([300, 700])
    eps_hat = uncond + 7.5 * (cond - uncond)
    a = alphas[t].float().reshape(-1, 1, 1, 1)
    for target in ("x0", "eps"):
        guidance = ControlNetTileSDS(
            FixedEpsilon(cond, uncond), identity_encoder, alphas, TileOptions(target=target)
        )
        z = latents.clone().requires_grad_(True)
        image = torch.rand(2, 3, 64, 64)
        text, negative = torch.ones(1, 77, 32), torch.zeros(1, 77, 32)
        guidance.from_latents(z, image, text, negative, timesteps=t, noise=noise)[
            "sds_tile"
        ].backward()
        if target == "x0":
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
            x0 = (noisy - (1 - a).sqrt() * eps_hat) / a.sqrt()
            want = (latents - x0) / 2
            torch.testing.assert_close(want, ((1 - a) / a).sqrt() * (eps_hat - noise) / 2)
        else:
            want = expected_gradient(alphas, t, 7.5, noise, cond, uncond) / 2
        torch.testing.assert_close(z.grad, want, rtol=1e-4, atol=1e-5)


# --- w(t), the t range, classifier-free guidance ------------------------------------------------


@pytest.mark.parametrize("schedule", ["scaled_linear", "linear"])
def test_w_is_one_minus_the_schedulers_alpha_bar(schedule: str) -> None:
    from diffusers import DDIMScheduler

    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": schedule}
    scheduler = DDIMScheduler(**config)
    alphas = alphas_cumprod_from_config(config)
    torch.testing.assert_close(alphas.float(), scheduler.alphas_cumprod)
    t = torch.tensor([0, 20, 200, 600, 980, 999])
    torch.testing.assert_close(sds_weight(alphas, t), 1 - scheduler.alphas_cumprod[t])


@pytest.mark.parametrize("t_range", [(200, 600), (20, 980), (200, 800)])
def test_timesteps_are_uniform_in_the_range(t_range: tuple[int, int]) -> None:
    draws = draw_timesteps(t_range, 50_000, torch.Generator().manual_seed(0))
    assert draws.min().item() == t_range[0] and draws.max().item() == t_range[1]
    span = t_range[1] - t_range[0] + 1
    counts = torch.bincount(draws - t_range[0], minlength=span).float()
    assert counts.std() / counts.mean() < 0.25  # about 1/sqrt(50000/span)


def test_the_guidance_draws_its_timesteps_from_its_range() -> None:
    latents, _, cond, uncond = known_draw((4, 4, 8, 8))
    predictor = FixedEpsilon(cond, uncond)
    alphas = alphas_cumprod_from_config(SCHEDULE)
    guidance = StableDiffusionSDS(predictor, identity_encoder, alphas)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        guidance.from_latents(latents, torch.ones(1, 77, 32), None, generator=generator)
    seen = torch.cat([call[1] for call in predictor.calls])
    assert seen.min() >= 200 and seen.max() <= 600 and seen.unique().numel() > 300


def test_cfg_scale_one_is_the_conditional_prediction(tiny, sd_text) -> None:
    predictor = UNetEpsilon(tiny["sd15"]["unet"])
    calls = []

    def counting(noisy: Tensor, t: Tensor, condition: Tensor) -> Tensor:
        calls.append(condition)
        return predictor(noisy, t, condition)

    noisy = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([300, 500])
    text, negative = (x.expand(2, -1, -1) for x in sd_text)
    with torch.no_grad():
        conditional = predictor(noisy, t, text)
        unconditional = predictor(noisy, t, negative)
        one = guided_epsilon(counting, noisy, t, text, negative, 1.0)
        assert len(calls) == 1
        torch.testing.assert_close(one, conditional)
        seven = guided_epsilon(counting, noisy, t, text, negative, 7.5)
    torch.testing.assert_close(seven, unconditional + 7.5 * (conditional - unconditional))
    assert not torch.allclose(seven, conditional)


# --- Zero-1-to-3's pose and weight ---------------------------------------------------------------


def test_zero123_pose_of_known_cameras() -> None:
    same = zero123_pose(90.0, 0.0, 1.8)
    torch.testing.assert_close(same, torch.tensor([0.0, 0.0, 1.0, 0.0]))
    left = zero123_pose(90.0, 90.0, 1.8)  # sin(-90 deg) = -1, cos(90 deg) = 0
    torch.testing.assert_close(left, torch.tensor([0.0, -1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    right = zero123_pose(90.0, -90.0, 1.8)
    torch.testing.assert_close(right, torch.tensor([0.0, 1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(zero123_pose(90.0, 270.0, 1.8), right, atol=1e-6, rtol=0)
    above = zero123_pose(60.0, 0.0, 2.0)
    torch.testing.assert_close(above, torch.tensor([-math.pi / 6, 0.0, 1.0, 0.2]))
    behind = zero123_pose(120.0, 180.0, 1.5, reference_polar=90.0, reference_azimuth=0.0)
    torch.testing.assert_close(
        behind, torch.tensor([math.pi / 6, 0.0, -1.0, -0.3]), atol=1e-6, rtol=0
    )
    batch = zero123_pose(torch.tensor([90.0, 90.0]), torch.tensor([0.0, 90.0]), 1.8)
    assert batch.shape == (2, 4)


def test_zero123_weight_is_40_times_angle_over_180() -> None:
    guidance = Zero123SDS(lambda *a: a[0], identity_encoder, torch.ones(1000))
    reference = Zero123Reference(torch.zeros(1, 32), torch.zeros(1, 4, 8, 8))
    polar = torch.tensor([90.0, 90.0, 90.0, 0.0, 45.0, 180.0])
    azimuth = torch.tensor([0.0, 90.0, 180.0, 0.0, 0.0, 0.0])
    weights = guidance.weights(polar, azimuth, reference)
    torch.testing.assert_close(
        weights, torch.tensor([0.0, 20.0, 40.0, 20.0, 10.0, 20.0]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(view_angle(45.0, 90.0), torch.tensor(90.0))
    flat = Zero123SDS(
        lambda *a: a[0], identity_encoder, torch.ones(1000), Zero123Options(angle_weighting=False)
    )
    assert flat.weights(polar, azimuth, reference).tolist() == [40.0] * 6


def test_zero123_pose_and_reference_reach_the_unet(tiny) -> None:
    zero = tiny["zero123"]
    predictor = Zero123Epsilon(zero["unet"], zero["cc_projection"])
    reference = reference_of(tiny)
    noisy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([400])

    def predict(pose: Tensor, null: bool = False) -> Tensor:
        condition = Zero123Condition(reference.embedding, pose[None], reference.latents, null)
        with torch.no_grad():
            return predictor(noisy, t, condition)

    front, side = predict(zero123_pose(90.0, 0.0, 1.8)), predict(zero123_pose(90.0, 90.0, 1.8))
    assert not torch.allclose(front, side)
    unet = zero["unet"]
    with torch.no_grad():
        token = zero["cc_projection"](torch.zeros(1, 1, 36))
        zeros = unet(
            torch.cat([noisy, torch.zeros_like(noisy)], dim=1),
            t,
            encoder_hidden_states=torch.zeros_like(token),
        ).sample
    torch.testing.assert_close(predict(zero123_pose(90.0, 0.0, 1.8), null=True), zeros)


# --- the video prior reads frames together ------------------------------------------------------


def test_video_frames_change_each_others_gradient(tiny) -> None:
    modelscope = tiny["modelscope"]
    text = encode_text(modelscope["tokenizer"], modelscope["text_encoder"], "a cat waves")
    guidance = VideoSDS.from_components(modelscope, VideoSDSOptions(size=SIZE, grad_clip=None))
    shapes = []
    original = guidance.predictor

    def recording(noisy: Tensor, t: Tensor, condition: Tensor) -> Tensor:
        shapes.append(tuple(noisy.shape))
        return original(noisy, t, condition)

    guidance.predictor = recording
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(1, 16, 3, 16, 16, generator=generator)
    noise = torch.randn(1, 4, 16, 8, 8, generator=generator)
    t = torch.tensor([500])

    def frame0_gradient(video: Tensor) -> Tensor:
        video = video.clone().requires_grad_(True)
        guidance(video, text, None, timesteps=t, noise=noise)["sds_video"].backward()
        return video.grad[0, 0]

    before = frame0_gradient(base)
    changed = base.clone()
    changed[0, 9] = torch.rand(3, 16, 16, generator=generator)
    after = frame0_gradient(changed)
    assert shapes[0] == (1, 4, 16, 8, 8)
    assert not torch.allclose(before, after)


# --- loading -------------------------------------------------------------------------------------


def write_weights(root: Path, tiny: dict) -> None:
    """The tiny priors saved as a weights directory (diffusers layouts, safetensors)."""
    sd = root / "sd15"
    for name in ("unet", "vae", "text_encoder"):
        tiny["sd15"][name].save_pretrained(sd / name)
    tiny["sd15"]["tokenizer"].save_pretrained(sd / "tokenizer")
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    zero = root / "zero123-xl"
    for name in ("unet", "vae", "image_encoder", "cc_projection"):
        tiny["zero123"][name].save_pretrained(zero / name)
    tiny["controlnet_tile"].save_pretrained(root / "controlnet-tile")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, tiny) -> Path:
    root = tmp_path_factory.mktemp("weights")
    write_weights(root, tiny)
    return root


def test_loading_from_a_directory_gives_the_same_predictions(tiny, weights_dir) -> None:
    loaded = load_components(
        Weights(root=weights_dir), torch.float32, priors=["zero123", "controlnet_tile"]
    )
    assert set(loaded) == {"sd15", "zero123", "controlnet_tile"}
    reference = reference_of(tiny)
    torch.testing.assert_close(reference_of(loaded).embedding, reference.embedding)
    torch.testing.assert_close(reference_of(loaded).latents, reference.latents)
    noisy = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([250, 550])
    condition = Zero123Condition(
        reference.embedding.expand(2, -1),
        zero123_pose(torch.tensor([90.0, 70.0]), torch.tensor([30.0, -60.0]), 1.8),
        reference.latents.expand(2, -1, -1, -1),
    )
    with torch.no_grad():
        want = Zero123Epsilon(tiny["zero123"]["unet"], tiny["zero123"]["cc_projection"])
        got = Zero123Epsilon(loaded["zero123"]["unet"], loaded["zero123"]["cc_projection"])
        torch.testing.assert_close(got(noisy, t, condition), want(noisy, t, condition))
    text = encode_text(loaded["sd15"]["tokenizer"], loaded["sd15"]["text_encoder"], "a <cat>")
    ref_text = encode_text(tiny["sd15"]["tokenizer"], tiny["sd15"]["text_encoder"], "a <cat>")
    torch.testing.assert_close(text, ref_text)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    control = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    losses = [
        ControlNetTileSDS.from_components(
            parts["sd15"], parts["controlnet_tile"], TileOptions(size=SIZE)
        )(images, control, text, None, timesteps=t, noise=noise)["sds_tile"]
        for parts in (tiny, loaded)
    ]
    torch.testing.assert_close(losses[0], losses[1])


def test_absent_folders_name_what_is_missing(tmp_path, weights_dir) -> None:
    with pytest.raises(InputError, match="zero123-xl"):
        load_components(Weights(root=tmp_path), torch.float32, priors=["zero123"])
    with pytest.raises(InputError, match="sd15"):
        load_components(Weights(root=tmp_path), torch.float32, priors=["controlnet_tile"])
    (tmp_path / "sd15").symlink_to(weights_dir / "sd15")
    with pytest.raises(InputError, match="controlnet-tile"):
        load_components(Weights(root=tmp_path), torch.float32, priors=["controlnet_tile"])
    with pytest.raises(InputError, match="modelscope-t2v"):
        load_components(Weights(root=weights_dir), torch.float32, priors=["modelscope"])
    with pytest.raises(InputError, match="--weights"):
        load_components(Weights(), torch.float32, priors=["sd15"])


def test_cc_projection_needs_safetensors_unless_pickle_is_allowed(tmp_path, tiny) -> None:
    from anima.methods.animate124.loading import load_cc_projection

    folder = tmp_path / "zero123-xl"
    projection = tiny["zero123"]["cc_projection"]
    projection.save_pretrained(folder / "cc_projection", safe_serialization=False)
    with pytest.raises(InputError, match="allow-pickle"):
        load_cc_projection(folder, allow_pickle=False, dtype=torch.float32)
    loaded = load_cc_projection(folder, allow_pickle=True, dtype=torch.float32)
    torch.testing.assert_close(loaded.projection.weight, projection.projection.weight)
    (folder / "cc_projection" / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(InputError, match="cc_projection"):
        load_cc_projection(folder, allow_pickle=True, dtype=torch.float32)
