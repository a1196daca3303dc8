"""Tiny UNets of the three kinds the hook layer edits, their inputs, and the check that hooks
leave a model as they found it (shared by the attention tests)."""

from __future__ import annotations

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

from anima.attention import HookedAttnProcessor
from anima.models.seeding import seeded

SIZE = (16, 12)  # latent (H, W), not square on purpose


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    with seeded(seed):
        return UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        ).eval()


def tiny_motion_unet() -> UNetMotionModel:
    """`tiny_unet` with AnimateDiff motion modules (8-frame context), frozen."""
    with seeded(1):
        adapter = MotionAdapter(
            block_out_channels=(32, 64),
            motion_layers_per_block=1,
            motion_norm_num_groups=32,
            motion_num_attention_heads=2,
            motion_max_seq_length=8,
        )
    return UNetMotionModel.from_unet2d(tiny_unet(), adapter).eval().requires_grad_(False)


def inputs(batch: int = 4, seed: int = 0, timestep: int = 10) -> dict:
    """UNet2DConditionModel inputs for ``batch`` images."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, *SIZE, generator=generator),
        "timestep": torch.tensor(timestep),
        "encoder_hidden_states": torch.randn(batch, 5, 32, generator=generator),
    }


def motion_inputs(frames: int = 3, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(1, 4, frames, *SIZE, generator=generator),
        "timestep": torch.tensor(10),
        # per frame, as AnimateDiffPipeline repeats it
        "encoder_hidden_states": torch.randn(1, 5, 32, generator=generator).repeat(frames, 1, 1),
    }


def svd_inputs(frames: int = 3, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(1, frames, 8, 8, 6, generator=generator),
        "timestep": torch.tensor(0.7),
        "encoder_hidden_states": torch.randn(1, 1, 32, generator=generator),
        "added_time_ids": torch.tensor([[5.0, 100.0, 0.02]]),
    }


@torch.no_grad()
def run(model, kwargs: dict) -> torch.Tensor:
    return model(**kwargs).sample


def assert_restored(model, before: dict) -> None:
    """The model's processors are the ones it had, and no hook is left on any module."""
    after = dict(model.attn_processors)
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)
    assert not any(isinstance(p, HookedAttnProcessor) for p in after.values())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
