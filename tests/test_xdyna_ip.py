"""X-Dyna's IP-Adapter-Plus image tokens on tiny random models (pipeline, hooks, checkpoints)."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import acting_adapter

from anima.attention import FeatureStore, capture
from anima.errors import InputError
from anima.methods.xdyna.loading import load_ip_adapter, tiny_xdyna_components
from anima.methods.xdyna.pipeline import XDynaPipeline
from anima.methods.xdyna.reference_frame import skip_reference_in_motion_modules
from anima.models.ip_adapter import (
    IMAGE_PROJ,
    IP_ADAPTER,
    check_ip_adapter,
    ip_processors,
    read_ip_adapter,
    save_ip_adapter,
)
from anima.models.tiny import tiny_clip_image_encoder
from anima.models.tiny_sd import tiny_ip_adapter_state, tiny_motion_unet
from anima.weights import Weights

SIZE = 32


def _pipe(ip_adapter: bool) -> XDynaPipeline:
    pipe = XDynaPipeline(**tiny_xdyna_components(seed=0, ip_adapter=ip_adapter))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def plain() -> XDynaPipeline:
    return _pipe(ip_adapter=False)


@pytest.fixture(scope="module")
def ip_pipe() -> XDynaPipeline:
    return _pipe(ip_adapter=True)


def _conditions(frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, SIZE, SIZE, generator=g)
    pose = (torch.rand(frames, 3, SIZE, SIZE, generator=g) > 0.9).float()
    return image, pose


def _run(pipe, image, pose, **kwargs) -> torch.Tensor:
    kwargs.setdefault("num_inference_steps", 2)
    return pipe(image, pose, None, generator=torch.Generator().manual_seed(0), **kwargs)


def test_image_tokens_change_the_video_and_scale_zero_is_the_plain_pipeline(plain, ip_pipe) -> None:
    image, pose = _conditions(5)
    video = _run(plain, image, pose)
    with_tokens = _run(ip_pipe, image, pose)
    assert (with_tokens - video).abs().max() > 1e-2
    other_image = _run(ip_pipe, image.flip(-1), pose)  # the tokens follow the image
    assert (other_image - with_tokens).abs().max() > 1e-3
    assert torch.equal(_run(ip_pipe, image, pose, ip_adapter_scale=0.0), video)
    # the call's scale does not outlive the call
    assert all(p.scale == [1.0] for p in ip_processors(ip_pipe.unet))


def _spy_unet(pipe, calls: list[tuple[int, torch.Tensor | None]]):
    def spy(module, args, kwargs) -> None:
        added = kwargs.get("added_cond_kwargs")
        embeds = None if added is None else added["image_embeds"][0]
        calls.append((kwargs["encoder_hidden_states"].shape[0], embeds))

    return pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)


def test_cfg_runs_both_branches_with_image_tokens_even_with_equal_prompts(ip_pipe) -> None:
    """The unconditional branch gets a zero image's tokens (the release's), so the branches
    differ even when the prompts do not; without tokens (scale 0) one branch runs."""
    image, pose = _conditions(5, seed=1)
    calls: list[tuple[int, torch.Tensor | None]] = []
    handle = _spy_unet(ip_pipe, calls)
    try:
        _run(ip_pipe, image, pose, guidance_scale=7.5)  # both prompts empty
        guided_calls = list(calls)
        calls.clear()
        _run(ip_pipe, image, pose, guidance_scale=7.5, ip_adapter_scale=0.0)
    finally:
        handle.remove()
    # (reference, window) x 2 steps, two branches each, the image features in every pass
    assert [batch for batch, _ in guided_calls] == [2, 10, 2, 10]
    features = ip_pipe.encode_image(image)
    for _, embeds in guided_calls:
        assert torch.equal(embeds, features)
    zero = ip_pipe.image_encoder(
        torch.zeros(1, 3, 224, 224), output_hidden_states=True
    ).hidden_states[-2]
    torch.testing.assert_close(features[0, 0], zero[0])
    assert [batch for batch, _ in calls] == [1, 5, 1, 5]
    assert torch.equal(calls[0][1], features[1:])


@pytest.fixture(scope="module")
def adapted_ip_pipe(ip_pipe) -> XDynaPipeline:
    """`ip_pipe` with a Dynamics-Adapter that acts (W'_O != 0)."""
    adapter = acting_adapter(ip_pipe.unet)
    pipe = XDynaPipeline(**{**ip_pipe.components, "adapter": adapter})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_cached_reference_sampling_equals_the_in_pass_sampling_with_image_tokens(
    adapted_ip_pipe,
) -> None:
    """The reference pass alone gets its branch's image tokens as frame 0 does in the pass."""
    image, pose = _conditions(10, seed=2)
    options = {"window": 4, "overlap": 1, "prompt": "a person dancing"}
    cached = _run(adapted_ip_pipe, image, pose, **options)
    in_pass = _run(adapted_ip_pipe, image, pose, cache_reference=False, **options)
    torch.testing.assert_close(cached, in_pass, rtol=0, atol=1e-5)


def _motion_inputs(unet, frames: int = 3) -> dict:
    g = torch.Generator().manual_seed(3)
    return {
        "sample": torch.randn(1, 4, frames, 8, 8, generator=g),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(frames, 77, 32, generator=g),
        "added_cond_kwargs": {"image_embeds": [torch.randn(1, 1, 50, 32, generator=g)]},
    }


def test_hooks_leave_ip_processors_working_and_restore_them(ip_pipe) -> None:
    """The adapter (attn1) and a capture of every layer (attn2's IP processors included: it
    reads the text's K/V) run over the IP-Adapter; once removed, the UNet's processors are the
    very same objects and its state dict holds the IP weights again."""
    unet = ip_pipe.unet
    before, keys = dict(unet.attn_processors), list(unet.state_dict())
    inputs = _motion_inputs(unet)
    with torch.no_grad():
        plain = unet(**inputs).sample
        store = FeatureStore()
        with capture(unet, store, "*", kinds="kv"):
            assert torch.equal(unet(**inputs).sample, plain)
        cross = store.at(0, "down_blocks.0.attentions.0.transformer_blocks.0.attn2", "k")
        assert cross.shape[1] == 77  # the text tokens' keys
        with ip_pipe.adapter.attach(unet), skip_reference_in_motion_modules(unet):
            unet(**inputs)
    after = dict(unet.attn_processors)
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)
    assert list(unet.state_dict()) == keys and any("to_k_ip" in key for key in keys)
    with torch.no_grad():
        assert torch.equal(unet(**inputs).sample, plain)


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def unet():
    return tiny_motion_unet(seed=0)


def test_checkpoint_round_trips_through_safetensors_and_checks(unet, tmp_path) -> None:
    state = tiny_ip_adapter_state(unet, image_features=32, seed=1)
    save_ip_adapter(state, tmp_path / "ip.safetensors")
    read = read_ip_adapter(tmp_path / "ip.safetensors", allow_pickle=False)
    for part in (IMAGE_PROJ, IP_ADAPTER):
        assert read[part].keys() == state[part].keys()
        assert all(torch.equal(read[part][k], v) for k, v in state[part].items())
    check_ip_adapter(read, unet, "here", image_features=32)
    torch.save(state, tmp_path / "ip.bin")
    with pytest.raises(InputError, match="pass --allow-pickle"):
        read_ip_adapter(tmp_path / "ip.bin", allow_pickle=False)
    assert read_ip_adapter(tmp_path / "ip.bin", allow_pickle=True).keys() == state.keys()


def _without(state, part: str, key: str):
    return {**state, part: {k: v for k, v in state[part].items() if k != key}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: _without(s, IP_ADAPTER, "7.to_v_ip.weight"), "missing key ip_adapter.7.to_v"),
        (
            lambda s: {**s, IP_ADAPTER: {**s[IP_ADAPTER], "9.to_k_ip.weight": torch.zeros(32, 32)}},
            "unknown key ip_adapter.9.to_k_ip.weight",
        ),
        (
            lambda s: {**s, IMAGE_PROJ: {"proj.weight": torch.zeros(4, 4)}},
            "image_proj.latents not found (not an IP-Adapter-Plus checkpoint)",
        ),
        (
            lambda s: _without(s, IMAGE_PROJ, "layers.3.1.3.weight"),
            "missing key image_proj.layers.3.1.3.weight",
        ),
    ],
)
def test_bad_checkpoints_are_one_line_input_errors(unet, change, message) -> None:
    state = change(tiny_ip_adapter_state(unet, image_features=32, seed=1))
    with pytest.raises(InputError, match=re.escape(message)) as info:
        check_ip_adapter(state, unet, "in DIR/ip-adapter")
    assert "\n" not in str(info.value)


def test_resampler_width_must_match_the_image_encoder(unet) -> None:
    state = tiny_ip_adapter_state(unet, image_features=48, seed=1)
    with pytest.raises(InputError, match="reads 48-channel image features, the image encoder"):
        check_ip_adapter(state, unet, "here", image_features=32)


def test_weights_directory_ip_adapter_loads_or_names_what_is_missing(tmp_path) -> None:
    weights = Weights(root=tmp_path)
    unet = tiny_motion_unet(seed=0)
    assert load_ip_adapter(weights, unet, torch.float32) == {
        "image_encoder": None,
        "feature_extractor": None,
    }
    folder = tmp_path / "ip-adapter"
    folder.mkdir()
    with pytest.raises(InputError, match="IP-Adapter image encoder"):
        load_ip_adapter(weights, unet, torch.float32)
    tiny_clip_image_encoder(seed=0).save_pretrained(folder / "image_encoder")
    with pytest.raises(InputError, match="ip-adapter-plus_sd15.safetensors not found"):
        load_ip_adapter(weights, unet, torch.float32)
    state = tiny_ip_adapter_state(unet, image_features=32, seed=1)
    torch.save(state, folder / "ip-adapter-plus_sd15.bin")
    with pytest.raises(InputError, match="only ip-adapter-plus_sd15.bin"):
        load_ip_adapter(weights, unet, torch.float32)
    save_ip_adapter(state, folder / "ip-adapter-plus_sd15.safetensors")
    parts = load_ip_adapter(weights, unet, torch.float32)
    assert parts["image_encoder"] is not None and parts["feature_extractor"] is not None
    processors = ip_processors(unet)
    assert len(processors) == 4
    assert torch.equal(processors[0].to_k_ip[0].weight, state[IP_ADAPTER]["1.to_k_ip.weight"])
