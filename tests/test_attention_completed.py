"""The completed hook layer (anima.attention) on tiny random diffusers UNets and a bare
attention layer.

Residual branches (AnyI2V, I2V3D §3.2.2) are read and replaced exactly on the three UNet kinds;
patch-wise AdaIN (AnyI2V) gives each patch the current statistics; I2V3D's ``[source; uncond;
cond]`` pass writes the source branch's own features into the others; the foreground/background
extended attention (I2V3D §3.2.3) equals a dense-mask brute force; AnyI2V's frame-0 K/V
replacement in the conditional half is attention to frame 0's K/V; a forward stopped after a
block records exactly the blocks that ran; a windowed store addresses frames absolutely.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel, UNetMotionModel
from diffusers.models.attention_processor import Attention
from torch import nn
from unets import (
    assert_restored,
    inputs,
    motion_inputs,
    run,
    svd_inputs,
    tiny_motion_unet,
    tiny_unet,
)

from anima.attention import (
    CFG_BRANCHES,
    SOURCE_CFG_BRANCHES,
    SPATIAL_SELF,
    TEMPORAL_RESIDUALS,
    FeatureStore,
    ReferenceWeights,
    StepCounter,
    attention_layers,
    capture,
    capture_until,
    extended_attention,
    inject,
    patch_adain,
    reference_kv,
    residual_layers,
    run_until,
    stop_after,
)
from anima.models.seeding import seeded
from anima.models.tiny import tiny_svd_unet


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    return tiny_unet().requires_grad_(False)


def motion_unet() -> UNetMotionModel:
    return tiny_motion_unet()


def rows(kwargs: dict, index: list[int]) -> dict:
    return {k: v[index] if k != "timestep" else v for k, v in kwargs.items()}


# a. residual branches


@pytest.mark.parametrize("kind", ["unet2d", "motion", "svd"])
def test_residual_branch_identity_injection_is_exact(unet, kind):
    model, kwargs = {
        "unet2d": lambda: (unet, inputs(4)),
        "motion": lambda: (motion_unet(), motion_inputs()),
        "svd": lambda: (tiny_svd_unet(seed=0).eval().requires_grad_(False), svd_inputs()),
    }[kind]()
    before, plain = dict(model.attn_processors), run(model, kwargs)
    blocks = residual_layers(model)
    temporal = list(residual_layers(model, TEMPORAL_RESIDUALS))
    assert bool(temporal) == (kind == "svd")
    if kind == "svd":  # both res blocks of each SpatioTemporalResBlock
        assert "up_blocks.1.resnets.0.spatial_res_block" in blocks
        assert "up_blocks.1.resnets.0.temporal_res_block" in temporal
        assert len(blocks) == 24
    store = FeatureStore()
    with capture(model, store, residuals="*"):
        assert torch.equal(run(model, kwargs), plain)
    assert set(store.layers()) == set(blocks) and store.kinds() == ["residual"]
    frames = 4 if kind == "unet2d" else 3
    for name in temporal:  # (videos, C, F, H, W) kept frame-major
        assert store.at(0, name, "residual").shape[0] == frames

    seen: list[torch.Size] = []

    def identity(source: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        seen.append(current.shape)
        return source

    with inject(model, store, residuals="*", transform=identity):
        assert torch.equal(run(model, kwargs), plain)
    assert len(seen) == len(blocks)
    with inject(model, store, residuals="up_blocks.*", transform=lambda s, c: torch.zeros_like(s)):
        assert (run(model, kwargs) - plain).abs().max() > 1e-3
    assert_restored(model, before)

    if kind == "unet2d":  # the residual branch is the output less the shortcut
        name = "up_blocks.0.resnets.0"
        block = blocks[name]
        seen_io = {}

        def grab(module, args, output):
            seen_io["in"], seen_io["out"] = args[0], output

        handle = block.register_forward_hook(grab)
        try:
            run(model, kwargs)
        finally:
            handle.remove()
        with torch.no_grad():
            shortcut = block.conv_shortcut(seen_io["in"])
        residual = seen_io["out"] * block.output_scale_factor - shortcut
        torch.testing.assert_close(store.at(0, name, "residual"), residual, rtol=0, atol=1e-5)


def test_patch_adain_gives_each_patch_the_current_statistics():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(2, 3, 10, 9, generator=generator) * 3 + 1
    current = torch.randn(2, 3, 10, 9, generator=generator) * 0.5 - 2
    for patch in (4, 3):
        out = patch_adain(source, current, patch=patch)
        for top in range(0, 10, patch):
            for left in range(0, 9, patch):
                window = (..., slice(top, top + patch), slice(left, left + patch))
                got, want, src = out[window], current[window], source[window]
                dims = (-2, -1)
                torch.testing.assert_close(got.mean(dims), want.mean(dims), rtol=0, atol=1e-5)
                torch.testing.assert_close(
                    got.std(dims, correction=0), want.std(dims, correction=0), rtol=0, atol=1e-5
                )
                # the source's pattern is kept: an affine map of it within the patch
                if got[0, 0].numel() > 1:
                    pattern = (src - src.mean(dims, keepdim=True)) / src.std(
                        dims, keepdim=True, correction=0
                    )
                    expected = pattern * want.std(dims, keepdim=True, correction=0)
                    expected = expected + want.mean(dims, keepdim=True)
                    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(patch_adain(source, current), patch_adain(source, current, patch=4))
    constant = torch.ones(1, 1, 4, 4)
    torch.testing.assert_close(
        patch_adain(constant, current[:1, :1, :4, :4]),
        current[:1, :1, :4, :4].mean().expand(1, 1, 4, 4),
    )
    with pytest.raises(ValueError, match="rows, C, H, W"):
        patch_adain(source[0], current[0])


# b. branches: [uncond; cond] and [source; uncond; cond]


def test_source_branch_injection_equals_the_plain_pass(unet):
    """I2V3D's three-branch pass: when the source branch's inputs are the conditional ones,
    writing its features into the conditional branch changes nothing."""
    cond, uncond = inputs(2, seed=1), inputs(2, seed=2)
    kwargs = {
        key: torch.cat([cond[key], uncond[key], cond[key]]) if key != "timestep" else value
        for key, value in cond.items()
    }
    plain = run(unet, kwargs)
    options = {
        "layers": SPATIAL_SELF,
        "kinds": "qk",
        "residuals": "up_blocks.*",
        "resnets": "up_blocks.1.*",
        "branches": SOURCE_CFG_BRANCHES,
    }
    with inject(unet, "source", targets="cond", **options):
        assert torch.equal(run(unet, kwargs), plain)
    with inject(unet, "source", **options):  # into both targets: uncond gets cond's features
        both = run(unet, kwargs)
    assert torch.equal(both[:2], plain[:2]) and torch.equal(both[4:], plain[4:])
    assert (both[2:4] - plain[2:4]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="cannot also be a target"):
        inject(unet, "source", SPATIAL_SELF, branches=SOURCE_CFG_BRANCHES, targets="source")

    # extended attention on the target branches only: the source branch stays plain, and
    # with injection composed on the same layers, the cond branch still sees its own features
    with (
        inject(unet, "source", **options),
        extended_attention(unet, num_frames=2, branches=SOURCE_CFG_BRANCHES),
    ):
        joint = run(unet, kwargs)
    assert torch.equal(joint[:2], plain[:2])
    assert (joint[4:] - plain[4:]).abs().max() > 1e-3

    # a capture of one branch records only its rows
    store = FeatureStore()
    layer = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    with capture(unet, store, layer, kinds="q", branches=SOURCE_CFG_BRANCHES, targets="uncond"):
        run(unet, kwargs)
    full = FeatureStore()
    with capture(unet, full, layer, kinds="q"):
        run(unet, kwargs)
    assert torch.equal(store.at(0, layer, "q"), full.at(0, layer, "q")[2:4])


# c/d. extended attention rules on a bare attention layer, against brute force


class Holder(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        with seeded(3):
            self.attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads)


def dense_attention(attn: Attention, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Brute force: one video's frames (F, N, C) as F*N tokens under a dense (F*N, F*N) mask."""
    frames, tokens, _ = x.shape
    flat = x.reshape(1, frames * tokens, -1)
    heads = attn.heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(1, frames * tokens, heads, -1).transpose(1, 2)

    q, k, v = split(attn.to_q(flat)), split(attn.to_k(flat)), split(attn.to_v(flat))
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(1, frames * tokens, -1)
    return attn.to_out[0](out).reshape(frames, tokens, -1)


def as_image(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(rows, N, C) tokens as the (rows, C, h, w) input of a spatial layer."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


def as_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)


@torch.no_grad()
def test_foreground_extended_attention_matches_a_dense_mask():
    holder = Holder()
    grid, frames, videos = (4, 3), 3, 2
    tokens = grid[0] * grid[1]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(videos * frames, tokens, 32, generator=generator)
    foreground = torch.rand(frames, *grid, generator=generator) > 0.6
    plain = as_tokens(holder.attn(as_image(x, grid)))

    # I2V3D §3.2.3: background queries see their frame + other frames' background
    fg = foreground.reshape(frames * tokens)
    frame = torch.arange(frames).repeat_interleave(tokens)
    same = frame[:, None] == frame[None, :]
    visible = same | (~fg[:, None] & ~fg[None, :])
    with extended_attention(holder, "attn", num_frames=frames, foreground=foreground):
        hooked = as_tokens(holder.attn(as_image(x, grid)))
    for video in range(videos):
        part = slice(video * frames, (video + 1) * frames)
        dense = dense_attention(holder.attn, x[part], visible)
        torch.testing.assert_close(hooked[part], dense, rtol=0, atol=1e-5)
    inside = foreground.reshape(frames, tokens)[None].expand(videos, -1, -1).reshape(-1, tokens)
    torch.testing.assert_close(hooked[inside], plain[inside], rtol=0, atol=1e-5)
    assert (hooked[~inside] - plain[~inside]).abs().max() > 1e-3

    # one frame: plain attention, whatever the mask
    with extended_attention(holder, "attn", num_frames=1, foreground=foreground[:1]):
        torch.testing.assert_close(
            as_tokens(holder.attn(as_image(x, grid))), plain, atol=1e-5, rtol=0
        )
    # a single (H, W) mask for every frame, at another resolution (area-resized to the grid)
    single = foreground[0].repeat_interleave(2, 0).repeat_interleave(2, 1)
    with extended_attention(holder, "attn", num_frames=frames, foreground=single.float()):
        hooked = as_tokens(holder.attn(as_image(x, grid)))
    fg = foreground[0].reshape(tokens).repeat(frames)
    visible = same | (~fg[:, None] & ~fg[None, :])
    torch.testing.assert_close(hooked[:frames], dense_attention(holder.attn, x[:frames], visible))
    with pytest.raises(ValueError, match="one of them"):
        extended_attention(holder, "attn", foreground=foreground, shared=foreground)


@torch.no_grad()
def test_first_frame_kv_replacement_in_the_conditional_half(unet):
    """AnyI2V: frames 1..F-1 attend to frame 0's current K/V, conditional half only."""
    holder = Holder()
    grid, frames = (3, 4), 3
    tokens = grid[0] * grid[1]
    x = torch.randn(2 * frames, tokens, 32, generator=torch.Generator().manual_seed(1))
    plain = as_tokens(holder.attn(as_image(x, grid)))
    with reference_kv(holder, "attn", num_frames=frames, branches=CFG_BRANCHES, targets="cond"):
        hooked = as_tokens(holder.attn(as_image(x, grid)))
    assert torch.equal(hooked[:frames], plain[:frames])  # the unconditional half: untouched
    cond = x[frames:]
    torch.testing.assert_close(hooked[frames], plain[frames], rtol=0, atol=1e-5)  # frame 0
    frame = torch.arange(frames).repeat_interleave(tokens)
    visible = (frame[None, :] == 0).expand(frames * tokens, -1)  # every query: frame 0's keys
    dense = dense_attention(holder.attn, cond, visible)
    torch.testing.assert_close(hooked[frames + 1 :], dense[1:], rtol=0, atol=1e-5)
    assert (hooked[frames + 1 :] - plain[frames + 1 :]).abs().max() > 1e-3

    # in a UNet: the unconditional videos are exactly the plain ones
    kwargs = inputs(4, seed=5)
    before, plain = dict(unet.attn_processors), run(unet, kwargs)
    with reference_kv(unet, num_frames=2, branches=CFG_BRANCHES, targets="cond"):
        out = run(unet, kwargs)
    assert torch.equal(out[:2], plain[:2])
    torch.testing.assert_close(out[2], plain[2], rtol=0, atol=1e-5)
    assert (out[3] - plain[3]).abs().max() > 1e-3
    assert_restored(unet, before)


def test_reference_hooks_limited_to_a_branch(unet):
    """X-Dyna's adapter branch and a recorded reference, on the conditional half only."""
    kwargs = inputs(4, seed=6)  # [uncond; cond], two 2-frame videos
    plain = run(unet, kwargs)
    weights = ReferenceWeights.from_model(unet)
    with torch.no_grad():
        for w in weights.layers.values():
            w.to_out.weight.normal_(std=0.1)
    options = {"num_frames": 2, "branches": CFG_BRANCHES, "targets": "cond"}
    with reference_kv(unet, weights=weights, **options):
        out = run(unet, kwargs)
    assert torch.equal(out[:3], plain[:3])  # uncond, and the cond reference frame itself
    assert (out[3] - plain[3]).abs().max() > 1e-3
    recorded = FeatureStore()
    with capture(unet, recorded, SPATIAL_SELF, kinds="kv"):
        run(unet, inputs(1, seed=7))
    with reference_kv(unet, recorded=recorded, **options):
        out = run(unet, kwargs)
    assert torch.equal(out[:2], plain[:2])
    assert (out[2:] - plain[2:]).abs().max() > 1e-3


# e. early exit, capture without recomputation, windowed store


def test_early_exit_records_the_blocks_it_ran_and_no_later_ones(unet):
    kwargs = inputs(2, seed=3)
    before = dict(unet.attn_processors)
    options = {"layers": "*", "kinds": "qkv", "resnets": "*", "residuals": "*"}

    # capture records the projections the processor computes: each to_q runs once a call
    calls: dict[str, int] = {}
    layers = attention_layers(unet, "*")
    handles = [
        attn.to_q.register_forward_hook(
            lambda m, a, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)
        )
        for name, attn in layers.items()
    ]
    block_out = {}
    handles.append(
        unet.up_blocks[0].register_forward_hook(lambda m, a, o: block_out.setdefault("out", o))
    )
    full = FeatureStore()
    try:
        with capture(unet, full, **options):
            run(unet, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {name: 1 for name in layers}

    store = capture_until(unet, "up_blocks.0", (), kwargs, **options)
    ran = [name for name in full.layers() if not name.startswith("up_blocks.1")]
    assert store.layers() == ran and len(ran) < len(full.layers())
    for key, value in store.items():
        assert torch.equal(value, full.at(*key))
    assert_restored(unet, before)
    with torch.no_grad():
        assert torch.equal(run_until(unet, "up_blocks.0", (), kwargs), block_out["out"])
    with stop_after(unet, "mid_block") as stop:
        run(unet, kwargs)
        raise AssertionError("the forward should have stopped")
    assert stop.stopped and stop.output.shape[0] == 2
    with pytest.raises(ValueError, match="no block"), stop_after(unet, "up_blocks.9"):
        pass
    with pytest.raises(RuntimeError, match="boom"), stop_after(unet, "mid_block"):
        raise RuntimeError("boom")  # other errors pass through
    assert_restored(unet, before)

    # gradients flow to the input through the recorded features (AnyI2V's optimisation)
    latent = kwargs["sample"].clone().requires_grad_(True)
    grad_store = FeatureStore(detach=False)
    layer = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    for _ in range(2):  # per-iteration: the store is emptied each time
        capture_until(
            unet,
            "up_blocks.1",
            (),
            dict(kwargs, sample=latent),
            store=grad_store,
            layers=layer,
            kinds="q",
        )
        assert len(grad_store) == 1
        grad_store.at(0, layer, "q").square().mean().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0


def test_windowed_store_addresses_frames_across_windows(unet):
    kwargs = inputs(4, seed=4)  # one video of four frames
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    options = {"layers": SPATIAL_SELF, "kinds": "qk", "residuals": "up_blocks.*"}
    whole = FeatureStore()
    with capture(unet, whole, **options):
        run(unet, kwargs)
    windowed = FeatureStore()
    with capture(unet, windowed, **options):
        for window in ([0, 1, 2], [2, 3]):  # overlapping: the later pass wins frame 2
            with windowed.frames(window):
                run(unet, rows(kwargs, window))
    assert windowed.recorded_frames(0, layer, "q") == [0, 1, 2, 3]
    with windowed.frames([3, 1]):
        torch.testing.assert_close(
            windowed.at(0, layer, "q"), whole.at(0, layer, "q")[[3, 1]], rtol=0, atol=1e-5
        )
    assert windowed.at(0, layer, "q").shape == whole.at(0, layer, "q").shape  # all frames
    with windowed.frames([4]), pytest.raises(KeyError, match=r"frames \[4\]"):
        windowed.at(0, layer, "q")
    # a pass over another window reads exactly its frames: its own features, up to rounding
    window = [1, 3]
    plain = run(unet, rows(kwargs, window))
    with inject(unet, windowed, **options), windowed.frames(window):
        torch.testing.assert_close(run(unet, rows(kwargs, window)), plain, rtol=0, atol=1e-4)


def test_store_windows_of_temporal_layers_and_clearing():
    temporal = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1"  # tokens = frames
    spatial = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"  # batch = videos x frames
    video = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # (videos, F, C)
    store = FeatureStore()
    for window in ([0, 1, 2], [2, 3, 4]):
        with store.frames(window):
            store.add(0, temporal, "q", video[:, window])
            store.add(0, spatial, "q", video[:, window].reshape(-1, 3))
    with store.frames([4, 0]):
        assert torch.equal(store.at(0, temporal, "q"), video[:, [4, 0]])
        assert torch.equal(store.at(0, spatial, "q"), video[:, [4, 0]].reshape(-1, 3))
    assert torch.equal(store.at(0, temporal, "q"), video)
    with store.frames([0, 1]), pytest.raises(ValueError, match="no axis of 2 frames"):
        store.add(0, temporal, "k", video)

    # per-iteration: overwrite keeps the last call's, clear(step) drops one step
    store = FeatureStore(overwrite=True)
    store.add(0, spatial, "q", torch.zeros(2, 3))
    store.add(0, spatial, "q", torch.ones(2, 3))
    store.add(1, spatial, "q", torch.ones(2, 3))
    assert torch.equal(store.at(0, spatial, "q"), torch.ones(2, 3))
    store.clear(step=0)
    assert store.steps() == [1]
    stacked = FeatureStore()
    for _ in range(2):
        stacked.add(0, spatial, "q", torch.ones(2, 3))
    assert stacked.at(0, spatial, "q").shape == (4, 3)


def test_counter_and_branch_errors(unet):
    with pytest.raises(ValueError, match="targets"):
        extended_attention(unet, branches=CFG_BRANCHES, targets="source")
    with pytest.raises(ValueError, match="not both"):
        inject(unet, FeatureStore(), SPATIAL_SELF, cfg="cond", branches=CFG_BRANCHES)
    hooks = extended_attention(
        unet, num_frames=1, branches=CFG_BRANCHES, targets="cond", counter=StepCounter()
    )
    with hooks, pytest.raises(ValueError, match="does not split"):
        run(unet, inputs(3))
