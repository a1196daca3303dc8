"""The attention hook layer (anima.attention) on tiny random diffusers UNets.

Properties, not examples: hooks leave no trace once removed; capturing changes nothing;
replaying a run's own features reproduces it; extended attention over a one-frame window (or
frames that only see themselves) is plain attention; a zero-initialised reference adapter is
the frozen UNet (X-Dyna §3.2); nested managers compose and unwind.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from diffusers import UNet2DConditionModel, UNetMotionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from unets import (
    SIZE,
    assert_restored,
    inputs,
    motion_inputs,
    run,
    svd_inputs,
    tiny_motion_unet,
    tiny_unet,
)

from anima.attention import (
    CROSS,
    SPATIAL_SELF,
    TEMPORAL,
    FeatureStore,
    HookedAttnProcessor,
    ReferenceAttentionWeights,
    ReferenceWeights,
    StepCounter,
    attention_layers,
    capture,
    extended_attention,
    inject,
    reference_kv,
    resnet_layers,
)
from anima.attention.frames import token_grid, windows
from anima.models.tiny import tiny_svd_unet

FRAMES = 2


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    return tiny_unet().requires_grad_(False)


@pytest.fixture(scope="module")
def motion_unet() -> UNetMotionModel:
    return tiny_motion_unet()


@pytest.fixture(scope="module")
def svd_unet():
    return tiny_svd_unet(seed=0).eval().requires_grad_(False)


def processors(model) -> dict:
    return dict(model.attn_processors)


def captured(model, kwargs: dict, **options) -> FeatureStore:
    store = FeatureStore()
    with capture(model, store, **options):
        run(model, kwargs)
    return store


# layer selection


def test_patterns_select_exactly_the_expected_layers(unet, motion_unet, svd_unet):
    spatial = [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
        "mid_block.attentions.0.transformer_blocks.0.attn1",
    ]
    assert list(attention_layers(unet, "down_blocks.*.attn1")) == spatial[:1]
    assert list(attention_layers(unet, SPATIAL_SELF)) == spatial
    assert list(attention_layers(unet, CROSS)) == [name[:-1] + "2" for name in spatial]
    assert list(attention_layers(unet, "up_blocks.1.*")) == [
        f"up_blocks.1.attentions.{i}.transformer_blocks.0.attn{j}" for i in (0, 1) for j in (1, 2)
    ]
    assert list(attention_layers(unet, "*", exclude=["*attn2", "mid_block.*"])) == spatial[:3]

    # AnimateDiff: "*" crosses dots, so down-block attn1 includes the motion modules' ...
    down = list(attention_layers(motion_unet, "down_blocks.*.attn1"))
    assert down == [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
        "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1",
        "down_blocks.1.motion_modules.0.transformer_blocks.0.attn1",
    ]
    # ... until excluded; SPATIAL_SELF never has them; TEMPORAL is exactly them.
    assert list(attention_layers(motion_unet, "down_blocks.*.attn1", TEMPORAL)) == down[:1]
    assert list(attention_layers(motion_unet, SPATIAL_SELF)) == spatial
    temporal = attention_layers(motion_unet, TEMPORAL)
    assert len(temporal) == 14 and all(".motion_modules." in name for name in temporal)

    svd_spatial = list(attention_layers(svd_unet, SPATIAL_SELF))
    assert len(svd_spatial) == 6 and not any("temporal" in name for name in svd_spatial)
    assert all("temporal_transformer_blocks" in n for n in attention_layers(svd_unet, TEMPORAL))

    assert list(resnet_layers(unet, "up_blocks.*")) == [
        "up_blocks.0.resnets.0",
        "up_blocks.0.resnets.1",
        "up_blocks.1.resnets.0",
        "up_blocks.1.resnets.1",
    ]
    assert len(resnet_layers(svd_unet)) == 12  # SpatioTemporalResBlocks, not their children


def test_frame_windows_and_token_grids():
    assert windows("all", 3) == [[0, 1, 2]] * 3
    assert windows(1, 3) == [[0], [1], [2]]
    assert windows(3, 5) == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [2, 3, 4]]
    assert windows([0, -1], 4) == [[0, 3]] * 4
    assert windows(lambda i, n: [max(i - 1, 0), i], 3) == [[0, 0], [0, 1], [1, 2]]
    with pytest.raises(IndexError):
        windows([5], 3)
    assert token_grid(16 * 12, SIZE) == (16, 12)
    assert token_grid(8 * 6, SIZE) == (8, 6)
    assert token_grid(23 * 40, (45, 80)) == (23, 40)  # odd sizes round up per level
    assert token_grid(23 * 40, None, (576, 1024)) == (23, 40)  # from a mask's aspect


# install / remove


def hook_factories(unet):
    store = captured(unet, inputs(seed=1), layers="*", kinds="qkv", resnets="*")
    weights = ReferenceWeights.from_model(unet)
    for w in weights.layers.values():
        torch.nn.init.normal_(w.to_out.weight, std=0.1)
    reference = captured(unet, inputs(batch=1, seed=2), layers=SPATIAL_SELF, kinds="kv")
    return {
        "capture": lambda: capture(unet, FeatureStore(), "*", kinds="qkv", resnets="*"),
        "inject": lambda: inject(unet, store, SPATIAL_SELF, kinds="qk", resnets="up_blocks.*"),
        "extended": lambda: extended_attention(unet, num_frames=FRAMES),
        "reference_kv": lambda: reference_kv(unet, num_frames=FRAMES),
        "adapter": lambda: reference_kv(unet, weights=weights, num_frames=FRAMES),
        "recorded": lambda: reference_kv(unet, recorded=reference, num_frames=FRAMES),
    }


@pytest.mark.parametrize(
    "name", ["capture", "inject", "extended", "reference_kv", "adapter", "recorded"]
)
def test_removed_hooks_leave_no_trace(unet, name):
    kwargs = inputs()
    before, plain = processors(unet), run(unet, kwargs)
    make = hook_factories(unet)[name]
    with make():
        hooked = run(unet, kwargs)
        assert any(isinstance(p, HookedAttnProcessor) for p in processors(unet).values())
    assert_restored(unet, before)
    assert torch.equal(run(unet, kwargs), plain)
    if name != "capture":
        assert not torch.equal(hooked, plain)

    # an error inside the block, or inside the model call, also restores everything
    with pytest.raises(RuntimeError, match="boom"), make():
        raise RuntimeError("boom")
    assert_restored(unet, before)
    with pytest.raises(KeyError), inject(unet, FeatureStore(), SPATIAL_SELF):
        run(unet, kwargs)  # nothing captured: the hook raises mid-forward
    assert_restored(unet, before)
    assert torch.equal(run(unet, kwargs), plain)


def test_selection_errors_install_nothing(unet):
    before = processors(unet)
    with pytest.raises(ValueError, match="no"), capture(unet, FeatureStore(), "nothing.*"):
        pass
    with pytest.raises(ValueError, match="temporal or cross"):
        extended_attention(unet, "*", num_frames=FRAMES).install()
    assert_restored(unet, before)

    class Custom(AttnProcessor2_0):
        pass

    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    custom = Custom()
    attention_layers(unet, layer)[layer].set_processor(custom)
    try:
        with pytest.raises(TypeError, match="Custom"):
            extended_attention(unet, layer, num_frames=FRAMES).install()
        store = FeatureStore()
        with capture(unet, store, layer, kinds="q"):  # reading works on any processor
            run(unet, inputs())
        assert store.layers() == [layer]
        assert processors(unet)[layer + ".processor"] is custom
    finally:
        attention_layers(unet, layer)[layer].set_processor(before[layer + ".processor"])


# capture


def test_capture_changes_nothing_and_records_per_step(unet, motion_unet):
    counter = StepCounter()
    store = FeatureStore()
    plain = [run(unet, inputs(timestep=t)) for t in (10, 500)]
    with capture(unet, store, "*", kinds=("q", "k", "v", "out"), resnets="*", counter=counter):
        for step, t in enumerate((10, 500)):
            counter.step = step
            assert torch.equal(run(unet, inputs(timestep=t)), plain[step])
    assert store.steps() == [0, 1]
    assert set(store.kinds()) == {"q", "k", "v", "out", "resnet"}
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert store.at(0, layer, "q").shape == (2 * FRAMES, 16 * 12, 32)
    assert store.at(1, "up_blocks.0.resnets.0", "resnet").shape == (2 * FRAMES, 64, 8, 6)
    assert store.at(0, layer.replace("attn1", "attn2"), "k").shape == (2 * FRAMES, 5, 32)
    assert not torch.equal(store.at(0, layer, "q"), store.at(1, layer, "q"))
    with pytest.raises(KeyError, match="step 2"):
        store.at(2, layer, "q")

    # the step-end callback of diffusers pipelines ticks the same counter
    assert counter(None, 1, None, {"latents": 0}) == {"latents": 0} and counter.step == 2

    # AnimateDiff: temporal attention too (batch = pixels, tokens = frames); capture is inert
    kwargs = motion_inputs()
    plain = run(motion_unet, kwargs)
    store = FeatureStore()
    with capture(motion_unet, store, "*", kinds=("q", "out"), resnets="*", steps=[0]):
        assert torch.equal(run(motion_unet, kwargs), plain)
    motion = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1"
    assert store.at(0, motion, "q").shape == (16 * 12, 3, 32)
    assert store.at(0, layer, "q").shape == (3, 16 * 12, 32)


# inject


def test_inject_own_features_reproduces_the_run(unet):
    counter = StepCounter()
    store = FeatureStore()
    timesteps = (900, 500, 10)
    options = {"layers": SPATIAL_SELF, "resnets": "up_blocks.*", "counter": counter}
    with capture(unet, store, kinds=("q", "k", "v", "out"), **options) as hooks:
        plain = []
        for step, t in enumerate(timesteps):
            hooks.step = step  # ticks the shared counter
            plain.append(run(unet, inputs(timestep=t)))
    assert counter.step == 2 and store.steps() == [0, 1, 2]
    with inject(unet, store, kinds=("q", "k", "v", "out"), **options):
        for step, t in enumerate(timesteps):
            counter.step = step
            assert torch.equal(run(unet, inputs(timestep=t)), plain[step])


def test_inject_other_features_masks_and_steps(unet):
    counter = StepCounter()
    source = FeatureStore()
    options = {"layers": SPATIAL_SELF, "resnets": "up_blocks.*", "counter": counter}
    with capture(unet, source, kinds=("q", "k"), **options):
        for step in range(3):
            counter.step = step
            run(unet, inputs(seed=7, timestep=10 * step))
    target = [run(unet, inputs(timestep=10 * step)) for step in range(3)]

    with inject(unet, source, kinds=("q", "k"), **options):
        counter.step = 0
        assert not torch.equal(run(unet, inputs(timestep=0)), target[0])
    with inject(unet, source, kinds=("q", "k"), mask=torch.zeros(SIZE), **options):
        counter.step = 0
        assert torch.equal(run(unet, inputs(timestep=0)), target[0])
    with inject(unet, source, kinds=("q", "k"), steps=range(1, 2), **options):
        for step in range(3):
            counter.step = step
            out = run(unet, inputs(timestep=10 * step))
            assert torch.equal(out, target[step]) == (step != 1)
    # a fixed source step (features captured once, AnyI2V) on every step of the range
    with inject(unet, source, kinds=("q",), source_step=2, steps=[0, 1], **options):
        counter.step = 1
        assert not torch.equal(run(unet, inputs(timestep=10)), target[1])


def test_inject_mask_blends_per_frame(unet):
    """A capture installed after an injection sees the injected query: the source inside the
    mask, the run's own outside, per frame."""
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    source = captured(unet, inputs(seed=7), layers=layer, kinds="q")
    own = captured(unet, inputs(), layers=layer, kinds="q")
    mask = torch.zeros(FRAMES, *SIZE)
    mask[0, :8] = 1.0  # frame 0: top half
    mask[1, :, :6] = 1.0  # frame 1: left half
    seen = FeatureStore()
    with (
        inject(unet, source, layer, kinds="q", mask=mask, num_frames=FRAMES),
        capture(unet, seen, layer, kinds="q"),
    ):
        run(unet, inputs())
    q, src, mine = (store.at(0, layer, "q").reshape(-1, *SIZE, 32) for store in (seen, source, own))
    for row in range(2 * FRAMES):
        inside = mask[row % FRAMES].bool()
        assert torch.equal(q[row][inside], src[row][inside])
        assert torch.equal(q[row][~inside], mine[row][~inside])


def test_inject_batch_mapping_cfg_and_frames(unet):
    """[uncond; cond] halves and a single-image source going to frame 0 of every video."""
    single = captured(unet, inputs(batch=1, seed=7), layers=SPATIAL_SELF, kinds="qk")
    kwargs = inputs()  # 2 videos of 2 frames: read as [uncond video; cond video]
    plain = run(unet, kwargs)

    def changed(store: FeatureStore = single, **options) -> list[bool]:
        with inject(unet, store, SPATIAL_SELF, kinds="qk", num_frames=FRAMES, **options):
            out = run(unet, kwargs)
        return [not torch.equal(out[i], plain[i]) for i in range(2 * FRAMES)]

    assert changed(frames=[0]) == [True, False, True, False]
    assert changed(frames=[-1], cfg="cond") == [False, False, False, True]
    assert changed(frames=[0], cfg="uncond") == [True, False, False, False]
    with pytest.raises(ValueError, match="source batch"):
        changed()  # one image for two frames per video is ambiguous: say which frame

    # a source captured without CFG (one half), used for both halves
    half = captured(unet, inputs(batch=FRAMES, seed=7), layers=SPATIAL_SELF, kinds="qk")
    assert changed(half, cfg="both") == [True] * 4
    assert changed(half, cfg="cond") == [False, False, True, True]
    assert changed(half, cfg="cond", frames=[1]) == [False, False, False, True]
    # FeatureStore.map: keep the cond half of a CFG capture
    full = captured(unet, inputs(seed=7), layers=SPATIAL_SELF, kinds="qk")
    cond = full.map(lambda t: t.chunk(2)[1])
    layer = "mid_block.attentions.0.transformer_blocks.0.attn1"
    assert torch.equal(cond.at(0, layer, "k"), full.at(0, layer, "k")[FRAMES:])
    assert len(cond) == len(full)


# extended attention


def test_extended_attention_windows(unet):
    kwargs = inputs()
    plain = run(unet, kwargs)
    with extended_attention(unet, window=1, num_frames=FRAMES):
        torch.testing.assert_close(run(unet, kwargs), plain, rtol=0, atol=1e-5)
    with extended_attention(unet, window=lambda i, n: [i], num_frames=FRAMES):
        torch.testing.assert_close(run(unet, kwargs), plain, rtol=0, atol=1e-5)
    with extended_attention(unet, window="all", num_frames=FRAMES):
        every = run(unet, kwargs)
    assert (every - plain).abs().max() > 1e-3
    # a one-frame video over all its frames is plain attention
    with extended_attention(unet, window="all", num_frames=1):
        torch.testing.assert_close(run(unet, kwargs), plain, rtol=0, atol=1e-5)
    # frames that are all the same image: attending to copies of its keys changes nothing
    same = dict(kwargs, sample=kwargs["sample"][:1].repeat(4, 1, 1, 1))
    same["encoder_hidden_states"] = kwargs["encoder_hidden_states"][:1].repeat(4, 1, 1)
    same_plain = run(unet, same)
    with extended_attention(unet, window="all", num_frames=4):
        torch.testing.assert_close(run(unet, same), same_plain, rtol=0, atol=1e-5)
    # frame 0's K/V for every frame: frame 0 itself is plain, the others change
    with extended_attention(unet, window=[0], num_frames=FRAMES):
        first = run(unet, kwargs)
    torch.testing.assert_close(first[0::2], plain[0::2], rtol=0, atol=1e-5)
    assert (first[1::2] - plain[1::2]).abs().max() > 1e-3


def test_extended_attention_masks(unet):
    kwargs = inputs()
    plain = run(unet, kwargs)
    with extended_attention(unet, window="all", num_frames=FRAMES):
        every = run(unet, kwargs)
    # nothing shared: each frame sees only itself
    with extended_attention(unet, num_frames=FRAMES, shared=torch.zeros(FRAMES, *SIZE)):
        torch.testing.assert_close(run(unet, kwargs), plain, rtol=0, atol=1e-5)
    # everything shared: the masked (per-frame gather) path equals the unmasked one
    with extended_attention(unet, num_frames=FRAMES, shared=torch.ones(SIZE)):
        torch.testing.assert_close(run(unet, kwargs), every, rtol=0, atol=1e-5)
    with extended_attention(unet, num_frames=FRAMES, shared=torch.ones(SIZE) > 0.5):
        torch.testing.assert_close(run(unet, kwargs), every, rtol=0, atol=1e-5)

    def own_frame_only(frame: int, frames: list[int], grid: tuple[int, int]) -> torch.Tensor:
        return torch.tensor(frames).eq(frame).repeat_interleave(grid[0] * grid[1])[None]

    with extended_attention(unet, num_frames=FRAMES, mask_fn=own_frame_only):
        torch.testing.assert_close(run(unet, kwargs), plain, rtol=0, atol=1e-5)
    # part of the background shared: between the two
    shared = torch.zeros(SIZE)
    shared[:, :6] = 1
    with extended_attention(unet, num_frames=FRAMES, shared=shared):
        partial = run(unet, kwargs)
    assert (partial - plain).abs().max() > 1e-4 and (partial - every).abs().max() > 1e-4


# reference K/V (X-Dyna Dynamics-Adapter)


def test_reference_adapter_starts_as_the_frozen_unet(unet):
    kwargs = inputs()
    plain = run(unet, kwargs)
    weights = ReferenceWeights.from_model(unet)
    layer = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    attn = attention_layers(unet, layer)[layer]
    assert torch.equal(weights[layer].to_q.weight, attn.to_q.weight)
    assert weights[layer].to_q.weight is not attn.to_q.weight
    assert not weights[layer].to_out.weight.any() and not weights[layer].to_out.bias.any()
    assert set(weights) == set(attention_layers(unet, SPATIAL_SELF)) and len(weights) == 4
    assert "layers.up_blocks-1-attentions-0-transformer_blocks-0-attn1.to_q.weight" in (
        weights.state_dict()
    )

    # reference = the frame itself (one-frame videos): zero W'_O is exactly plain attention
    with reference_kv(unet, weights=weights, num_frames=1, apply_to_reference=True):
        assert torch.equal(run(unet, kwargs), plain)
    with reference_kv(unet, weights=weights, num_frames=FRAMES):
        assert torch.equal(run(unet, kwargs), plain)
    with torch.no_grad():
        for w in weights.layers.values():
            w.to_out.weight.normal_(std=0.1)
    with reference_kv(unet, weights=weights, num_frames=1, apply_to_reference=True):
        assert (run(unet, kwargs) - plain).abs().max() > 1e-3
    # frame 0 is the reference: the frozen UNet on it; the other frames change
    with reference_kv(unet, weights=weights, num_frames=FRAMES):
        out = run(unet, kwargs)
    assert torch.equal(out[0::2], plain[0::2])
    assert (out[1::2] - plain[1::2]).abs().max() > 1e-3


def test_reference_adapter_trains(unet):
    weights = ReferenceWeights.from_model(unet, "up_blocks.*attn1")
    kwargs = inputs()

    def loss() -> torch.Tensor:
        with reference_kv(unet, weights=weights, num_frames=FRAMES):
            return unet(**kwargs).sample.square().mean()

    loss().backward()
    for w in weights.layers.values():  # zero W'_O: only W'_O moves at first
        assert w.to_out.weight.grad.abs().sum() > 0
        assert w.to_q.weight.grad is not None
    weights.zero_grad()
    with torch.no_grad():
        for w in weights.layers.values():
            w.to_out.weight.normal_(std=0.1)
    loss().backward()
    for w in weights.layers.values():
        assert w.to_q.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in unet.parameters())
    # layers without weights cannot be selected; weights for missing layers are an error
    with pytest.raises(KeyError, match="no reference weights"):
        reference_kv(unet, SPATIAL_SELF, weights=weights, num_frames=FRAMES).install()
    foreign = {"up_blocks.9.attn1": ReferenceAttentionWeights(32, 32, 32)}
    with pytest.raises(KeyError, match="no attention layers"):
        reference_kv(unet, weights=foreign, num_frames=FRAMES).install()


def test_reference_kv_without_weights(unet):
    kwargs = inputs()
    plain = run(unet, kwargs)
    with reference_kv(unet, num_frames=1):  # each frame its own reference
        torch.testing.assert_close(run(unet, kwargs), plain, rtol=0, atol=1e-5)
    with reference_kv(unet, num_frames=FRAMES, reference=-1):
        last = run(unet, kwargs)
    torch.testing.assert_close(last[1::2], plain[1::2], rtol=0, atol=1e-5)
    assert (last[0::2] - plain[0::2]).abs().max() > 1e-3
    with reference_kv(unet, num_frames=FRAMES):
        first = run(unet, kwargs)
    with reference_kv(unet, num_frames=FRAMES, keep_self=True):  # own K/V and frame 0's
        both = run(unet, kwargs)
    torch.testing.assert_close(both[0::2], plain[0::2], rtol=0, atol=1e-5)
    assert (both[1::2] - plain[1::2]).abs().max() > 1e-3
    assert (both[1::2] - first[1::2]).abs().max() > 1e-3


def _recorded(unet, kwargs: dict, layers, adapter=None) -> FeatureStore:
    """K/V of a pass over ``kwargs`` (the references alone), with ``adapter`` hooks on it."""
    store = FeatureStore()
    with contextlib.ExitStack() as stack:
        if adapter is not None:
            stack.enter_context(adapter())
        stack.enter_context(capture(unet, store, layers, kinds=("k", "v")))
        run(unet, kwargs)
    return store


def _rows(kwargs: dict, rows: list[int]) -> dict:
    return {k: v[rows] if k != "timestep" else v for k, v in kwargs.items()}


@pytest.mark.parametrize("mode", ["adapter", "adapter_on_reference", "replace", "keep_self"])
def test_recorded_reference_equals_the_in_pass_reference(unet, mode):
    """Two videos of 3 frames, frame 0 the reference: recording its K/V in a pass of its own
    and running frames 1-2 alone gives them what the in-pass layout gives (X-Dyna §3.2)."""
    kwargs = inputs(batch=6, seed=3)
    references, frames = [0, 3], [1, 2, 4, 5]
    weights = None
    if mode.startswith("adapter"):
        weights = ReferenceWeights.from_model(unet)
        with torch.no_grad():
            for w in weights.layers.values():
                w.to_out.weight.normal_(std=0.2)
                w.to_q.weight.add_(torch.randn_like(w.to_q.weight), alpha=0.1)
    options = {"weights": weights, "keep_self": mode == "keep_self"}
    on_reference = mode == "adapter_on_reference"
    with reference_kv(unet, num_frames=3, apply_to_reference=on_reference, **options):
        in_pass = run(unet, kwargs)
    layers = list(weights) if weights is not None else SPATIAL_SELF

    def itself():  # the in-pass reference's own treatment: each one-frame video its reference
        return reference_kv(unet, weights=weights, num_frames=1, apply_to_reference=True)

    store = _recorded(unet, _rows(kwargs, references), layers, itself if on_reference else None)
    assert store.kinds() == ["k", "v"] and store.at(0, store.layers()[0], "k").shape[0] == 2
    with reference_kv(unet, recorded=store, num_frames=2, **options):
        alone = run(unet, _rows(kwargs, frames))
    torch.testing.assert_close(alone, in_pass[frames], rtol=0, atol=1e-5)
    assert (in_pass[frames] - run(unet, _rows(kwargs, frames))).abs().max() > 1e-3

    # one recorded reference serves every video of the pass
    shared = _recorded(unet, _rows(kwargs, [0]), layers, itself if on_reference else None)
    with reference_kv(unet, recorded=shared, num_frames=2, **options):
        torch.testing.assert_close(run(unet, _rows(kwargs, [1, 2])), alone[:2], rtol=0, atol=1e-5)
        assert (run(unet, _rows(kwargs, frames))[2:] - alone[2:]).abs().max() > 1e-3
    # a recorded reference is no frame of the pass; its rows must match the pass's videos
    with pytest.raises(ValueError, match="no frame of the pass"):
        reference_kv(unet, recorded=store, apply_to_reference=True, weights=weights)
    with reference_kv(unet, recorded=store, num_frames=1, **options):
        with pytest.raises(ValueError, match="2 recorded references for a pass of 4"):
            run(unet, _rows(kwargs, frames))


# composition


def test_managers_compose_and_unwind(unet):
    kwargs = inputs()
    before = processors(unet)
    plain = run(unet, kwargs)
    source = captured(unet, inputs(seed=7), layers="up_blocks.*attn1", kinds="q")
    outer = FeatureStore()
    with capture(unet, outer, SPATIAL_SELF, kinds="k", resnets="*"):
        middle_state = processors(unet)
        with extended_attention(unet, num_frames=FRAMES):
            inner_state = processors(unet)
            with inject(unet, source, "up_blocks.*attn1", kinds="q"):
                all_three = run(unet, kwargs)
            assert processors(unet) == inner_state
            extended_only = run(unet, kwargs)
        assert all(processors(unet)[k] is v for k, v in middle_state.items())
        assert torch.equal(run(unet, kwargs), plain)
    assert_restored(unet, before)
    assert not torch.equal(all_three, extended_only)
    assert not torch.equal(extended_only, plain)
    with extended_attention(unet, num_frames=FRAMES):
        torch.testing.assert_close(run(unet, kwargs), extended_only, rtol=0, atol=0)

    # out-of-order removal: each manager takes only its own hooks off
    first = capture(unet, FeatureStore(), SPATIAL_SELF, kinds="q").install()
    second = extended_attention(unet, num_frames=FRAMES).install()
    first.remove()
    torch.testing.assert_close(run(unet, kwargs), extended_only, rtol=0, atol=0)
    second.remove()
    assert_restored(unet, before)
    # two managers that both replace the keys of one layer do not stack silently
    with extended_attention(unet, num_frames=FRAMES), pytest.raises(ValueError, match="already"):
        reference_kv(unet, num_frames=FRAMES).install()
    assert_restored(unet, before)


# the video UNets


def test_motion_unet_frames_from_its_input(motion_unet):
    kwargs = motion_inputs(frames=3)
    before, plain = processors(motion_unet), run(motion_unet, kwargs)
    with extended_attention(motion_unet, window=1):  # num_frames read from (B, C, F, H, W)
        torch.testing.assert_close(run(motion_unet, kwargs), plain, rtol=0, atol=1e-5)
    with extended_attention(motion_unet, "*attn1", exclude=TEMPORAL):
        assert (run(motion_unet, kwargs) - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="temporal"):
        extended_attention(motion_unet, "*attn1").install()
    weights = ReferenceWeights.from_model(motion_unet)
    with reference_kv(motion_unet, weights=weights):
        assert torch.equal(run(motion_unet, kwargs), plain)
    # motion modules can be captured and re-injected (no frames/mask on temporal layers)
    store = captured(motion_unet, kwargs, layers=TEMPORAL, kinds="qk")
    with inject(motion_unet, store, TEMPORAL, kinds="qk"):
        assert torch.equal(run(motion_unet, kwargs), plain)
    with pytest.raises(ValueError, match="temporal"):
        inject(motion_unet, store, "*", frames=[0]).install()
    assert_restored(motion_unet, before)


def test_svd_unet(svd_unet):
    kwargs = svd_inputs(frames=3)
    before, plain = processors(svd_unet), run(svd_unet, kwargs)
    options = {"layers": SPATIAL_SELF, "resnets": "up_blocks.*", "kinds": "qk"}
    store = captured(svd_unet, kwargs, **options)
    assert torch.equal(run(svd_unet, kwargs), plain)
    assert store.at(0, "up_blocks.1.resnets.0", "resnet").shape[0] == 3  # (B * F, C, H, W)
    with inject(svd_unet, store, **options):
        assert torch.equal(run(svd_unet, kwargs), plain)
    other = captured(svd_unet, svd_inputs(frames=3, seed=5), **options)
    with inject(svd_unet, other, frames=[0], **options):
        assert not torch.equal(run(svd_unet, kwargs), plain)
    with extended_attention(svd_unet, window=1):  # num_frames read from (B, F, C, H, W)
        torch.testing.assert_close(run(svd_unet, kwargs), plain, rtol=0, atol=1e-5)
    with extended_attention(svd_unet, window="all"):
        assert (run(svd_unet, kwargs) - plain).abs().max() > 1e-4
    assert_restored(svd_unet, before)
    assert torch.equal(run(svd_unet, kwargs), plain)
