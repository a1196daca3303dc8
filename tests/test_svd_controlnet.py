"""The SVD ControlNet and the residual hooks on the stock UNet (tiny random models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights

from anima.models.svd import SVD_XT_UNET_CONFIG
from anima.models.svd_controlnet import SVDControlNetModel
from anima.models.tiny import tiny_controlnet, tiny_svd_unet
from anima.models.unet_residuals import num_skips, unet_residuals

DATA = Path(__file__).parent / "data"


def unet_inputs(frames: int = 3, size: tuple[int, int] = (4, 6), seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    h, w = size
    return {
        "sample": torch.randn(1, frames, 8, h, w, generator=generator),
        "timestep": torch.tensor(0.7),
        "encoder_hidden_states": torch.randn(1, 1, 32, generator=generator),
        "added_time_ids": torch.tensor([[5.0, 100.0, 0.02]]),
    }


def control_for(inputs: dict, seed: int = 1) -> torch.Tensor:
    batch, frames, _, h, w = inputs["sample"].shape
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, 8 * h, 8 * w, generator=generator) * 255


@pytest.fixture(scope="module")
def unet():
    return tiny_svd_unet(seed=0).eval()


def test_from_unet_copies_the_encoder_and_zero_inits_outputs(unet) -> None:
    controlnet = SVDControlNetModel.from_unet(unet)
    for part in ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block"):
        theirs = getattr(unet, part).state_dict()
        for key, value in getattr(controlnet, part).state_dict().items():
            assert torch.equal(value, theirs[key]), f"{part}.{key}"
    zero = [controlnet.controlnet_cond_embedding.conv_out, controlnet.controlnet_mid_block]
    for conv in zero + list(controlnet.controlnet_down_blocks):
        assert not conv.weight.any() and not conv.bias.any()
    assert controlnet.num_residuals == num_skips(unet) == 6


def test_zero_controlnet_leaves_the_unet_unchanged(unet) -> None:
    inputs = unet_inputs()
    controlnet = SVDControlNetModel.from_unet(unet)
    with torch.no_grad():
        base = unet(**inputs).sample
        down, mid = controlnet(**inputs, controlnet_cond=control_for(inputs))
        with unet_residuals(unet, down, mid):
            controlled = unet(**inputs).sample
    assert torch.equal(controlled, base)


def test_residuals_change_the_output_in_proportion_to_the_scale(unet) -> None:
    inputs = unet_inputs()
    controlnet = tiny_controlnet(unet, random_output=True)
    control = control_for(inputs)
    with torch.no_grad():
        base = unet(**inputs).sample
        changes = []
        for scale in (0.5, 1.0, 2.0):
            down, mid = controlnet(**inputs, controlnet_cond=control, conditioning_scale=scale)
            with unet_residuals(unet, down, mid):
                changes.append((unet(**inputs).sample - base).abs().mean().item())
        assert torch.equal(unet(**inputs).sample, base), "hooks must be removed after the block"
    assert 0 < changes[0] < changes[1] < changes[2]


def test_the_control_image_matters(unet) -> None:
    inputs = unet_inputs()
    controlnet = tiny_controlnet(unet, random_output=True)
    with torch.no_grad():
        a = controlnet(**inputs, controlnet_cond=control_for(inputs, seed=1))
        b = controlnet(**inputs, controlnet_cond=control_for(inputs, seed=2))
    assert not torch.allclose(a[1], b[1])


def test_residual_count_and_shape_are_checked(unet) -> None:
    inputs = unet_inputs()
    controlnet = tiny_controlnet(unet, random_output=True)  # residuals that change the output
    with torch.no_grad():
        base = unet(**inputs).sample
        down, mid = controlnet(**inputs, controlnet_cond=control_for(inputs))
        with pytest.raises(ValueError, match="expected 6 down residuals"):
            with unet_residuals(unet, down[:-1], mid):
                pass
        swapped = (down[3],) + down[1:3] + (down[0],) + down[4:]
        with pytest.raises(ValueError, match="residual"):
            with unet_residuals(unet, swapped, mid):
                unet(**inputs)
        # a failed call leaves no hook behind: the UNet gives its output without residuals
        assert torch.equal(unet(**inputs).sample, base)
        assert not any(block._forward_pre_hooks for block in unet.up_blocks)


def test_odd_latent_sizes_work(unet) -> None:
    """288x512 gives odd latent widths (36 -> 18 -> 9 -> 5 at full size); skips still match."""
    inputs = unet_inputs(frames=2, size=(5, 7))
    controlnet = tiny_controlnet(unet, random_output=True)
    with torch.no_grad():
        down, mid = controlnet(**inputs, controlnet_cond=control_for(inputs))
        with unet_residuals(unet, down, mid):
            assert unet(**inputs).sample.shape == (1, 2, 4, 5, 7)


def test_save_and_load_round_trip(unet, tmp_path: Path) -> None:
    controlnet = tiny_controlnet(unet, random_output=True)
    controlnet.save_pretrained(tmp_path / "controlnet")
    assert (tmp_path / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = SVDControlNetModel.from_pretrained(tmp_path / "controlnet")

    def public(config) -> dict:
        return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))

    assert public(loaded.config) == public(controlnet.config)
    for key, value in controlnet.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    inputs = unet_inputs()
    control = control_for(inputs)
    with torch.no_grad():
        for a, b in zip(
            controlnet(**inputs, controlnet_cond=control)[0],
            loaded(**inputs, controlnet_cond=control)[0],
            strict=True,
        ):  # same parameters; loaded tensors' memory layout may reorder float sums
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def read_key_file(path: Path) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split()
            keys[key] = tuple(int(s) for s in shape.split(","))
    return keys


@pytest.mark.parametrize(
    "key_file", ["levitor_controlnet_keys.txt", "svd_temporal_controlnet_depth_keys.txt"]
)
def test_official_key_layout_loads_without_missing_or_unexpected_keys(key_file: str) -> None:
    """The released checkpoints' state-dict keys and shapes (tests/data, facts read from the
    authors' public code) are exactly our class's at the SVD(-xt) config."""
    official = read_key_file(DATA / key_file)
    assert len(official) == 671
    with init_empty_weights():
        ours = SVDControlNetModel(**SVD_XT_UNET_CONFIG)
    state = ours.state_dict()
    assert set(state) - set(official) == set(), "keys we have that the release lacks"
    assert set(official) - set(state) == set(), "keys the release has that we lack"
    for key, shape in official.items():
        assert tuple(state[key].shape) == shape, key
    # strict loading of a state dict with exactly those keys succeeds
    tensors = {key: torch.zeros(shape) for key, shape in official.items() if "time_mixer" in key}
    missing, unexpected = ours.load_state_dict(tensors, strict=False, assign=True)
    assert not unexpected and len(missing) == len(official) - len(tensors)


def test_cumulative_skip_residuals_repeat_counts() -> None:
    """The community temporal ControlNet's UNet added skip residual j once per later block."""
    with init_empty_weights():
        plain = SVDControlNetModel(**SVD_XT_UNET_CONFIG)
        cumulative = SVDControlNetModel(**SVD_XT_UNET_CONFIG, cumulative_skip_residuals=True)
    assert plain.residual_repeats.tolist() == [1.0] * 12
    assert cumulative.residual_repeats.tolist() == [4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1]


def test_cumulative_flag_scales_residuals(unet) -> None:
    inputs = unet_inputs()
    control = control_for(inputs)
    plain = tiny_controlnet(unet, random_output=True)
    cumulative = SVDControlNetModel.from_config(plain.config, cumulative_skip_residuals=True)
    cumulative.load_state_dict(plain.state_dict())
    with torch.no_grad():
        a, _ = plain(**inputs, controlnet_cond=control)
        b, _ = cumulative(**inputs, controlnet_cond=control)
    for residual, repeated, count in zip(a, b, [2, 2, 2, 2, 1, 1], strict=True):
        torch.testing.assert_close(repeated, residual * count)
