"""X-Dyna's release normalisation (`anima.models.frame_norms`) and the converter's SD1.5
comparison, on tiny models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import acting_adapter
from safetensors.torch import load_file, save_file
from test_xdyna_convert import Release
from torch import nn
from torch.nn import functional as F

from anima.cli import main
from anima.methods.xdyna import XDynaMethod
from anima.methods.xdyna.adapter import DynamicsAdapter
from anima.methods.xdyna.convert import RELEASE_NORMS, SPATIAL_FILE, same_tensor
from anima.methods.xdyna.loading import load_xdyna_components, tiny_xdyna_components
from anima.methods.xdyna.pipeline import XDynaPipeline
from anima.models.frame_norms import (
    DIFFUSERS_NORMS,
    FrameNorms,
    PerFrameGroupNorm,
    PooledGroupNorm,
    frame_norms,
    motion_norm_slots,
    resnet_norm_slots,
)
from anima.models.tiny_sd import tiny_motion_unet
from anima.weights import Weights

SIZE = 32


def _norm(cls: type[nn.GroupNorm], groups: int, channels: int, **extra) -> nn.GroupNorm:
    norm = cls(groups, channels, eps=1e-6, **extra)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(channels, generator=generator))
        norm.bias.copy_(torch.randn(channels, generator=generator))
    return norm


def _video(b: int, c: int, f: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(B, C, F, H, W) whose frames have different means and scales (so that per-frame and
    pooled statistics differ)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, f, h, w, generator=g)
    scale = 1 + torch.arange(f).reshape(1, 1, f, 1, 1)
    return x * scale + torch.randn(1, 1, f, 1, 1, generator=g)


def test_per_frame_group_norm_is_group_norm_of_each_frame() -> None:
    norm = _norm(PerFrameGroupNorm, 8, 32)
    x = _video(2, 32, 5, 4, 6)
    frames = x.permute(0, 2, 1, 3, 4).reshape(10, 32, 4, 6)
    direct = F.group_norm(frames, 8, norm.weight, norm.bias, 1e-6)
    direct = direct.reshape(2, 5, 32, 4, 6).permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        got = norm(x)
        pooled = F.group_norm(x, 8, norm.weight, norm.bias, 1e-6)  # nn.GroupNorm on the video
    torch.testing.assert_close(got, direct, rtol=0, atol=1e-6)
    assert (got - pooled).abs().max() > 0.1
    assert torch.equal(norm(frames), F.group_norm(frames, 8, norm.weight, norm.bias, 1e-6))


def test_pooled_group_norm_is_group_norm_over_each_videos_frames() -> None:
    """Statistics over (C/G, F, H, W) per video: the same as normalising the frames of each
    video stacked into one tall image."""
    b, c, f, h, w = 3, 32, 4, 5, 6
    counter = SimpleNamespace(frames=f)
    norm = _norm(PooledGroupNorm, 8, c, watcher=counter)
    x = _video(b, c, f, h, w, seed=2)
    batch = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # the UNet's (B * F) layout
    tall = x.reshape(b, c, f * h, w)
    direct = F.group_norm(tall, 8, norm.weight, norm.bias, 1e-6).reshape(b, c, f, h, w)
    direct = direct.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    with torch.no_grad():
        got = norm(batch)
    torch.testing.assert_close(got, direct, rtol=0, atol=1e-6)
    per_frame = F.group_norm(batch, 8, norm.weight, norm.bias, 1e-6)
    assert (got - per_frame).abs().max() > 0.1
    counter.frames = 1  # one frame a pass: GroupNorm itself
    assert torch.equal(norm(batch), per_frame)
    counter.frames = 5
    with pytest.raises(ValueError, match="videos \\* 5"):
        norm(batch)


def test_frame_norms_swap_modules_sharing_parameters_and_put_them_back() -> None:
    unet = tiny_motion_unet(seed=0)
    keys = list(unet.state_dict())
    modules = dict(unet.named_modules())
    motion, resnet = motion_norm_slots(unet), resnet_norm_slots(unet)
    assert len(motion) == 6 and len(resnet) == 17  # 8 resnets x 2 + conv_norm_out
    weights = [getattr(m, n).weight for m, n in motion + resnet]
    with frame_norms(unet, RELEASE_NORMS):
        assert all(type(getattr(m, n)) is PerFrameGroupNorm for m, n in motion)
        assert all(type(getattr(m, n)) is PooledGroupNorm for m, n in resnet)
        assert all(
            getattr(m, n).weight is w for (m, n), w in zip(motion + resnet, weights, strict=True)
        )
        assert list(unet.state_dict()) == keys
        with frame_norms(unet, DIFFUSERS_NORMS):  # nested the other way, then back
            assert all(type(getattr(m, n)) is nn.GroupNorm for m, n in motion + resnet)
        assert all(type(getattr(m, n)) is PooledGroupNorm for m, n in resnet)
    assert dict(unet.named_modules()) == modules
    with frame_norms(unet, DIFFUSERS_NORMS):  # the stock norms: nothing to swap
        assert dict(unet.named_modules()) == modules


@pytest.fixture(scope="module")
def random_unet() -> nn.Module:
    """A tiny motion UNet with every parameter random (the motion modules act)."""
    unet = tiny_motion_unet(seed=0)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return unet


def _unet(
    unet: nn.Module, sample: torch.Tensor, norms: FrameNorms = DIFFUSERS_NORMS
) -> torch.Tensor:
    """The UNet's noise prediction for ``sample`` (B, 4, F, h, w) with ``norms``."""
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(9))
    hidden = text.expand(sample.shape[0] * sample.shape[2], -1, -1)
    with torch.no_grad(), frame_norms(unet, norms):
        return unet(sample, 500, encoder_hidden_states=hidden, return_dict=False)[0]


@pytest.mark.parametrize(
    "norms",
    [RELEASE_NORMS, FrameNorms(motion="per_frame"), FrameNorms(resnet="pooled")],
    ids=["release", "motion-only", "resnet-only"],
)
def test_release_norms_change_a_unet_by_a_clear_margin(random_unet, norms) -> None:
    sample = _video(2, 4, 5, 8, 8, seed=4)
    stock = _unet(random_unet, sample)
    released = _unet(random_unet, sample, norms)
    relative = ((released - stock).abs().max() / stock.abs().max()).item()
    assert relative > 0.01, relative
    assert torch.equal(_unet(random_unet, sample), stock)  # back to stock after the block


def test_release_norms_agree_with_one_frame_a_pass(random_unet) -> None:
    """With one frame a pass the pooled statistics are the frame's own: both norms give the
    same UNet (two videos of one frame each)."""
    sample = _video(2, 4, 1, 8, 8, seed=5)
    stock = _unet(random_unet, sample)
    released = _unet(random_unet, sample, RELEASE_NORMS)
    torch.testing.assert_close(released, stock, rtol=0, atol=1e-5)


def test_adapter_records_norms_and_checks_them(tmp_path) -> None:
    unet = tiny_motion_unet(seed=0)
    assert DynamicsAdapter.from_unet(unet).norms == DIFFUSERS_NORMS
    adapter = DynamicsAdapter.from_unet(unet, RELEASE_NORMS)
    adapter.save_pretrained(tmp_path / "adapter")
    assert DynamicsAdapter.from_pretrained(tmp_path / "adapter").norms == RELEASE_NORMS
    with pytest.raises(ValueError, match="resnet norm must be one of per_frame, pooled"):
        DynamicsAdapter(["a"], [8], [8], [8], resnet_norm="frames")


@pytest.fixture(scope="module")
def pipes() -> tuple[XDynaPipeline, XDynaPipeline]:
    """The same tiny components with an acting adapter, recording diffusers' norms and the
    release's."""
    components = tiny_xdyna_components(seed=0)
    stock = acting_adapter(components["unet"], query_noise=0.1)
    release = DynamicsAdapter.from_unet(components["unet"], RELEASE_NORMS)
    release.load_state_dict(stock.state_dict())
    out = (XDynaPipeline(**components | {"adapter": a}) for a in (stock, release))
    pipes = tuple(out)
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes  # type: ignore[return-value]


def _conditions(frames: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, SIZE, SIZE, generator=g)
    pose = (torch.rand(frames, 3, SIZE, SIZE, generator=g) > 0.9).float()
    return image, pose


def _predict(pipe: XDynaPipeline, reference: torch.Tensor, frames: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(8)
    latents = torch.randn(1, 4, frames, 4, 4, generator=g)
    text = torch.randn(1, 77, 32, generator=g)
    pose = torch.rand(frames, 3, SIZE, SIZE, generator=g)
    with torch.no_grad(), pipe.adapter_context():
        return pipe.predict_noise(latents, reference, torch.tensor(500), text, pose, None)


def test_pooled_resnets_include_the_reference_frame(pipes) -> None:
    """Without the adapter's attention (W'_O = 0) the reference reaches the generated frames
    only through the pooled resnet statistics, as in the release (frame 0 of the pass)."""
    zero = [DynamicsAdapter.from_unet(p.unet, p.adapter.norms) for p in pipes]
    stock, release = (
        XDynaPipeline(**p.components | {"adapter": a}) for p, a in zip(pipes, zero, strict=True)
    )
    g = torch.Generator().manual_seed(2)
    one, two = torch.randn(2, 1, 4, 4, 4, generator=g)
    assert torch.equal(_predict(stock, one), _predict(stock, two))
    assert (_predict(release, one) - _predict(release, two)).abs().max() > 1e-3


def test_pipeline_runs_the_recorded_norms_and_the_reference_in_every_window(pipes) -> None:
    stock, release = pipes
    unet = release.unet
    norms_seen: list[tuple[type, type, int]] = []

    def spy(module, args, kwargs) -> None:
        motion, resnet = motion_norm_slots(module)[0], resnet_norm_slots(module)[0]
        sample = args[0] if args else kwargs["sample"]
        norms_seen.append((type(getattr(*motion)), type(getattr(*resnet)), sample.shape[2]))

    image, pose = _conditions(7, seed=3)
    options = {"num_inference_steps": 1, "window": 4, "overlap": 1}
    handle = unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        video = release(image, pose, generator=torch.Generator().manual_seed(0), **options)
    finally:
        handle.remove()
    # windows [0, 4), [3, 7), each with the reference in front, though cache_reference is on
    assert norms_seen == [(PerFrameGroupNorm, PooledGroupNorm, 5)] * 2
    assert all(type(getattr(m, n)) is nn.GroupNorm for m, n in resnet_norm_slots(unet))
    in_pass = release(
        image, pose, generator=torch.Generator().manual_seed(0), cache_reference=False, **options
    )
    assert torch.equal(video, in_pass)
    other = stock(image, pose, generator=torch.Generator().manual_seed(0), **options)
    assert (video - other).abs().max() > 1e-4


# --------------------------------------------------------------------------- the converter


def test_same_tensor_compares_at_the_coarser_precision() -> None:
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    assert same_tensor(x, x.half()) and same_tensor(x.half(), x) and same_tensor(x, x.clone())
    assert same_tensor(x.bfloat16(), x.half())
    assert same_tensor(torch.tensor([1e-9, 0.0]), torch.tensor([1e-9, 0.0]).half())  # underflow
    assert not same_tensor(x, x + 1e-3) and not same_tensor(x, x[:32])
    assert not same_tensor(x, (x + 2e-3).half()) and not same_tensor(x, x.double() + 1e-5)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Release:
    return Release(tmp_path_factory.mktemp("xdyna-norms-release"))


CHANGED = (
    "down_blocks.0.resnets.0.conv1.weight",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    "conv_out.bias",
)


def test_converter_writes_the_changed_sd_tensors_and_the_release_norms(
    release, tmp_path, capsys
) -> None:
    root = tmp_path / "weights"
    root.mkdir()
    (root / "sd15").symlink_to(release.root / "weights" / "sd15")
    state = dict(release.unet_state)
    g = torch.Generator().manual_seed(11)
    for key in CHANGED:
        state[key] = state[key] + 0.1 * torch.randn(state[key].shape, generator=g)
    unet = release.save("unet-changed.ckpt", state)
    pose = release.save("pose-changed.ckpt", release.pose_state)
    assert release.convert(root, unet=unet, pose=pose) == 0
    spatial = len(release.unet.state_dict())
    printed = capsys.readouterr().out
    line = f"SD1.5 UNet: 3 of {spatial} tensors of the UNet checkpoint differ from --sd15's"
    assert line in printed and SPATIAL_FILE in printed
    written = load_file(root / SPATIAL_FILE)
    assert sorted(written) == sorted(CHANGED)
    assert all(torch.equal(written[key], state[key]) for key in CHANGED)
    assert DynamicsAdapter.from_pretrained(root / "xdyna/adapter").norms == RELEASE_NORMS
    note = XDynaMethod.describe_weights(Weights.resolve(str(root)))  # `anima weights check`
    assert note == "norms: motion modules per frame, resnets pooled"

    components = load_xdyna_components(Weights.resolve(str(root)), torch.float32)
    loaded = components["unet"].state_dict()
    original = release.unet.state_dict()
    for key in original:
        expected = state[key] if key in CHANGED else original[key]
        assert torch.equal(loaded[key], expected), key
    pipe = XDynaPipeline(**components)
    assert pipe.adapter.norms == RELEASE_NORMS and not pipe.reference_cacheable
    with pipe.adapter_context():
        assert all(type(getattr(m, n)) is PooledGroupNorm for m, n in resnet_norm_slots(pipe.unet))
        assert all(
            type(getattr(m, n)) is PerFrameGroupNorm for m, n in motion_norm_slots(pipe.unet)
        )
    reference = torch.randn(1, 4, 4, 4, generator=g)
    release_run = _predict(pipe, reference)
    stock_adapter = DynamicsAdapter.from_unet(pipe.unet)
    stock_adapter.load_state_dict(pipe.adapter.state_dict())
    stock_run = _predict(XDynaPipeline(**components | {"adapter": stock_adapter}), reference)
    assert (release_run - stock_run).abs().max() > 1e-3

    # the SD1.5 tensors as the user has them (here rounded to float16): nothing differs, and
    # the file the first conversion wrote goes
    same = {k: v.half() if k in original else v for k, v in release.unet_state.items()}
    unet = release.save("unet-same.ckpt", same)
    assert release.convert(root, unet=unet) == 0
    printed = capsys.readouterr().out
    assert f"SD1.5 UNet: all {spatial} tensors of the UNet checkpoint equal --sd15's" in printed
    assert f"removed {root / SPATIAL_FILE}" in printed
    assert not (root / SPATIAL_FILE).exists()
    reloaded = load_xdyna_components(Weights.resolve(str(root)), torch.float32)["unet"]
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in original.items())


def test_converter_names_an_sd_key_the_users_weights_lack(release, tmp_path, capsys) -> None:
    """The UNet checkpoint has an SD1.5 key that --sd15's UNet config has but its weights
    file lacks: one error line, nothing written."""
    source = release.root / "weights" / "sd15" / "unet"
    sd15 = tmp_path / "sd15"
    (sd15 / "unet").mkdir(parents=True)
    (sd15 / "unet" / "config.json").symlink_to(source / "config.json")
    tensors = load_file(source / "diffusion_pytorch_model.safetensors")
    del tensors["conv_out.bias"]
    save_file(tensors, str(sd15 / "unet" / "diffusion_pytorch_model.safetensors"))
    unet = release.save("unet-full.ckpt", release.unet_state)
    out = tmp_path / "out"
    argv = ["weights", "convert", "xdyna", "--sd15", str(sd15), "--out", str(out)]
    assert main([*argv, "--unet", str(unet), "--allow-pickle"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: SD1.5 UNet: weights lack conv_out.bias") and "\n" not in err
    assert not out.exists()
