"""AnyI2V's pipeline on tiny random models: the one-frame inversion, equivalence with
AnimateDiff when injection is off, the first-frame injection, any size and any length."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    AnimateDiffPipeline,
    DDIMInverseScheduler,
    UNet2DConditionModel,
    UNetMotionModel,
)
from torch.nn import functional as F

from anima.attention import FeatureStore, capture, skip_motion_modules
from anima.errors import InputError
from anima.methods.anyi2v.injection import FirstFrameInjection, InjectionOptions
from anima.methods.anyi2v.inversion import QUERY_LAYERS, RESIDUAL_LAYERS, invert
from anima.methods.anyi2v.loading import (
    ANYI2V_SCHEDULER_CONFIG,
    COMPONENTS,
    anyi2v_scheduler,
    load_components,
    tiny_anyi2v_components,
    tiny_motion_adapter_for_unet,
    tiny_unet2d,
)
from anima.methods.anyi2v.pipeline import AnyI2VPipeline
from anima.models.tiny_sd import motion_unet
from anima.sampling.windows import sliding_windows
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

#: A short inversion for tests (the release's 201 takes 201 UNet calls).
SHORT = InjectionOptions(inversion_timestep=11)


@pytest.fixture(scope="module")
def pipe() -> AnyI2VPipeline:
    pipe = AnyI2VPipeline(**tiny_anyi2v_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def unets() -> tuple[UNet2DConditionModel, torch.nn.Module]:
    """The tiny image UNet and the motion UNet made from it."""
    unet2d = tiny_unet2d(0).eval()
    return unet2d, motion_unet(unet2d, tiny_motion_adapter_for_unet(1)).eval()


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_one_frame_without_motion_modules_is_the_image_unet(unets) -> None:
    unet2d, unet = unets
    latent, text = randn(1, 4, 1, 6, 10), randn(1, 77, 32, seed=1)
    t = torch.tensor(201)
    before = dict(unet.named_modules())
    with skip_motion_modules(unet):
        skipped = unet(latent, t, encoder_hidden_states=text).sample[:, :, 0]
    image = unet2d(latent[:, :, 0], t, encoder_hidden_states=text).sample
    torch.testing.assert_close(skipped, image, atol=1e-5, rtol=0)
    after = dict(unet.named_modules())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    plain = unet(latent, t, encoder_hidden_states=text).sample[:, :, 0]
    assert (plain - image).abs().max() > 1e-3  # the motion modules do act on one frame


def test_inversion_records_the_image_unets_features_at_its_timestep(unets) -> None:
    unet2d, unet = unets
    latent, text = randn(1, 4, 6, 10), randn(1, 77, 32, seed=1)
    features = invert(unet, ANYI2V_SCHEDULER_CONFIG, latent, text, timestep=11)
    assert features.store.steps() == [11]
    assert set(features.store.layers()) == set(QUERY_LAYERS) | set(RESIDUAL_LAYERS)
    # the same inverse DDIM on the image UNet, by hand, recording at the 11th call
    inverse = DDIMInverseScheduler.from_config(ANYI2V_SCHEDULER_CONFIG)
    inverse.set_timesteps(999)
    assert [int(t) for t in inverse.timesteps[:11]] == list(range(1, 12))
    store, sample = FeatureStore(), latent
    for t in inverse.timesteps[:10]:
        sample = inverse.step(unet2d(sample, t, text).sample, t, sample).prev_sample
    with capture(unet2d, store, QUERY_LAYERS, ("q",), residuals=RESIDUAL_LAYERS):
        unet2d(sample, inverse.timesteps[10], text)
    for layer in QUERY_LAYERS:
        torch.testing.assert_close(
            features.query(layer), store.at(0, layer, "q"), atol=1e-5, rtol=0
        )
    for layer in RESIDUAL_LAYERS:
        expected = store.at(0, layer, "residual")
        torch.testing.assert_close(features.residual(layer), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="inverse DDIM"):
        invert(unet, ANYI2V_SCHEDULER_CONFIG, latent, text, timestep=2000)


def test_without_injection_it_is_animatediff() -> None:
    components = tiny_anyi2v_components()
    ours = AnyI2VPipeline(**components)
    reference = AnimateDiffPipeline(
        motion_adapter=None, **(components | {"scheduler": anyi2v_scheduler()})
    )
    for pipeline in (ours, reference):
        pipeline.set_progress_bar_config(disable=True)
    steps: dict[str, list[torch.Tensor]] = {"ours": [], "reference": []}

    def keep(name: str):
        def callback(_pipe, _i, _t, tensors):
            steps[name].append(tensors["latents"].clone())
            return tensors

        return callback

    image = torch.rand(3, 48, 80)  # ignored with injection off
    frames = ours(
        image,
        "a horse",
        num_frames=4,
        num_inference_steps=3,
        injection=InjectionOptions(enabled=False),
        generator=torch.Generator().manual_seed(7),
        callback_on_step_end=keep("ours"),
    )
    expected = reference(
        "a horse",
        num_frames=4,
        height=48,
        width=80,
        num_inference_steps=3,
        guidance_scale=8.0,
        generator=torch.Generator().manual_seed(7),
        output_type="pt",
        decode_chunk_size=8,
        callback_on_step_end=keep("reference"),
    ).frames[0]
    assert len(steps["ours"]) == len(steps["reference"]) == 3
    for mine, theirs in zip(steps["ours"], steps["reference"], strict=True):
        assert torch.equal(mine, theirs)  # the same noise drawn first, the same computation
    assert frames.shape == expected.shape == (4, 3, 48, 80)
    assert torch.equal(frames, expected)


def _patch_normalised(x: torch.Tensor, patch: int = 4) -> tuple[torch.Tensor, ...]:
    """Per-patch mean and population std (C, patches) of (C, H, W), partial edge patches
    included, and x normalised by them (C, H, W)."""
    means, stds, normalised = [], [], torch.empty_like(x)
    for top in range(0, x.shape[-2], patch):
        for left in range(0, x.shape[-1], patch):
            cell = x[:, top : top + patch, left : left + patch]
            mean = cell.mean((1, 2), keepdim=True)
            std = cell.std((1, 2), correction=0, keepdim=True)
            normalised[:, top : top + patch, left : left + patch] = (cell - mean) / std
            means.append(mean.flatten())
            stds.append(std.flatten())
    return torch.stack(means, 1), torch.stack(stds, 1), normalised


def _attention(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``attn``'s output for (tokens, inner) projections, computed directly."""
    heads = attn.heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, x.shape[0], heads, -1).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(query), split(key), split(value))
    return attn.to_out[0](out.transpose(1, 2).reshape(1, query.shape[0], -1))[0]


def test_injection_edits_the_conditional_half_as_anyi2v(pipe) -> None:
    frames, size = 3, (16, 24)  # up_blocks.1 at 4x6 (a partial AdaIN patch), .2 at 8x12
    unet = pipe.unet
    text = torch.cat([pipe.encode_prompt(""), pipe.encode_prompt("a horse")])
    features = pipe.invert(randn(1, 4, *size, seed=2), text[1:], SHORT)
    pipe.scheduler.set_timesteps(25)
    t = pipe.scheduler.timesteps[0]
    latents = randn(1, 4, frames, *size, seed=3)
    model_input = torch.cat([latents] * 2)
    injection = FirstFrameInjection(unet, features, cfg=True)
    before, after = FeatureStore(), FeatureStore()
    with torch.no_grad():
        with capture(unet, before, QUERY_LAYERS, ("q",), residuals=RESIDUAL_LAYERS):
            with injection.window(range(frames)):
                kinds = ("q", "k", "v", "out")
                with capture(unet, after, QUERY_LAYERS, kinds, residuals=RESIDUAL_LAYERS):
                    injected = pipe.window_noise(range(frames), model_input, t, text)
        plain = pipe.window_noise(range(frames), model_input, t, text)
    cond0 = frames  # the batch is [uncond frames; cond frames]
    others = [row for row in range(2 * frames) if row != cond0]
    modules = dict(unet.named_modules())
    for layer in QUERY_LAYERS:
        q, k, v, out = (after.at(0, layer, kind) for kind in ("q", "k", "v", "out"))
        # frame 0's query is the inverted one; every other query is the layer's own
        assert torch.equal(q[cond0], features.query(layer)[0])
        assert torch.equal(q[others], before.at(0, layer, "q")[others])
        attn = modules[layer]
        for row in range(2 * frames):
            source = row if row < frames else cond0  # cond frames 1.. use frame 0's K/V
            direct = _attention(attn, q[row], k[source], v[source])
            torch.testing.assert_close(out[row], direct, atol=1e-5, rtol=1e-5)
    for layer in RESIDUAL_LAYERS:
        current, new = before.at(0, layer, "residual"), after.at(0, layer, "residual")
        assert torch.equal(new[others], current[others])
        # each 4x4 patch of frame 0 keeps its current mean and std per channel...
        mean, std, pattern = _patch_normalised(new[cond0])
        now_mean, now_std, _ = _patch_normalised(current[cond0])
        torch.testing.assert_close(mean, now_mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(std, now_std, atol=1e-5, rtol=1e-4)
        # ...and takes the inverted feature's pattern
        inverted_pattern = _patch_normalised(features.residual(layer)[0])[2]
        torch.testing.assert_close(pattern, inverted_pattern, atol=1e-3, rtol=1e-3)
        assert (new[cond0] - current[cond0]).abs().max() > 1e-3
    # the unconditional half is the plain model's; the conditional half is not
    assert torch.equal(injected[:1], plain[:1])
    assert (injected[1:] - plain[1:]).abs().max() > 1e-4


def test_any_size_and_length(pipe) -> None:
    image = torch.rand(3, 48, 80, generator=torch.Generator().manual_seed(0))
    run = {"num_frames": 4, "num_inference_steps": 2, "prompt": "a horse"}
    frames = pipe(image, injection=SHORT, generator=torch.Generator().manual_seed(1), **run)
    assert frames.shape == (4, 3, 48, 80) and frames.dtype == torch.float32
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1
    off = InjectionOptions(enabled=False)
    plain = pipe(image, injection=off, generator=torch.Generator().manual_seed(1), **run)
    assert (frames[0] - plain[0]).abs().max() > 1e-3
    # without guidance the one branch is the conditional one, and gets the features
    unguided = {**run, "guidance_scale": 1.0, "generator": torch.Generator().manual_seed(1)}
    with_features = pipe(image, injection=SHORT, **unguided)
    unguided["generator"] = torch.Generator().manual_seed(1)
    assert (with_features[0] - pipe(image, injection=off, **unguided)[0]).abs().max() > 1e-3

    # beyond the motion modules' 32 positions: sliding windows, frame 0's K/V in all of them
    context = pipe.unet.config.motion_max_seq_length
    length = context + 8
    with pytest.raises(ValueError, match="positions"):
        pipe(image[:, :32, :32], num_frames=length, window=length, injection=off)
    long = pipe(
        image[:, :32, :32],
        num_frames=length,
        num_inference_steps=1,
        injection=SHORT,
        generator=torch.Generator().manual_seed(1),
    )
    assert long.shape == (length, 3, 32, 32) and bool(torch.isfinite(long).all())


def test_later_windows_attend_to_frame_0_of_the_first(pipe) -> None:
    length, size, window = 40, (4, 4), 16
    windows = sliding_windows(length, window, 4)
    assert len(windows) == 3 and windows[0].start == 0
    text = torch.cat([pipe.encode_prompt(""), pipe.encode_prompt("a horse")])
    features = pipe.invert(randn(1, 4, *size, seed=2), text[1:], SHORT)
    pipe.scheduler.set_timesteps(25)
    t = pipe.scheduler.timesteps[0]
    latents = randn(1, 4, length, *size, seed=3)
    injection = FirstFrameInjection(pipe.unet, features, cfg=True)
    layer = QUERY_LAYERS[-1]
    store = FeatureStore()  # every window's call, stacked in call order
    with torch.no_grad():
        with capture(pipe.unet, store, layer, ("q", "k", "v", "out")):
            injected = pipe.step_noise(windows, latents, t, text, injection)
        plain = pipe.step_noise(windows, latents, t, text)
    q, k, v, out = (
        store.at(0, layer, kind).reshape(
            len(windows), 2 * window, *store.at(0, layer, kind).shape[1:]
        )
        for kind in ("q", "k", "v", "out")
    )
    # what the later windows read: frame 0 of the first window's conditional half
    assert injection.first_kv is not None
    k0, v0 = k[0, window], v[0, window]
    assert torch.equal(injection.first_kv.at(0, layer, "k")[0], k0)
    assert torch.equal(injection.first_kv.at(0, layer, "v")[0], v0)
    attn = dict(pipe.unet.named_modules())[layer]
    for row in range(2 * window):  # the last window: uncond frames their own, cond frame 0's
        key, value = (k[-1, row], v[-1, row]) if row < window else (k0, v0)
        direct = _attention(attn, q[-1, row], key, value)
        torch.testing.assert_close(out[-1, row], direct, atol=1e-5, rtol=1e-5)
    assert torch.equal(injected[:1], plain[:1])  # the unconditional half
    alone = range(windows[-2].stop, windows[-1].stop)  # frames only the last window holds
    changed = (injected[1:, :, alone.start :] - plain[1:, :, alone.start :]).abs()
    assert changed.amax(dim=(0, 1, 3, 4)).min() > 1e-5


def test_components_tiny_and_from_a_weights_directory(tmp_path) -> None:
    components = load_components(Weights(builtin="tiny"), torch.float32)
    assert isinstance(components["unet"], UNetMotionModel)
    assert not components["unet"].training
    config = components["scheduler"].config
    assert (config.beta_schedule, config.beta_start, config.beta_end) == ("linear", 0.00085, 0.012)
    assert (config.steps_offset, config.clip_sample, config.set_alpha_to_one) == (1, False, True)
    layers = set(dict(components["unet"].named_modules()))
    assert set(QUERY_LAYERS) | set(RESIDUAL_LAYERS) <= layers  # SD1.5's levels, tiny
    assert [c.subdir for c in COMPONENTS] == ["sd15", "motion-adapter", "anyi2v", "modelscope-t2v"]
    assert COMPONENTS[2].optional  # the personalised checkpoint, read when present
    with pytest.raises(InputError, match="model_index.json"):
        load_components(Weights(root=tmp_path), torch.float32)
