"""ControlNet residuals for diffusers' stock SVD UNet, by composition.

`diffusers.UNetSpatioTemporalConditionModel.forward` takes no ControlNet residuals. Rather than
copy its forward, we attach hooks to the stock model for the duration of one call:

- each up block receives its skip connections as the keyword ``res_hidden_states_tuple`` (the
  last ``len(block.resnets)`` entries of the down path's outputs, in order). A forward pre-hook
  on up block ``i`` adds the matching slice of the ControlNet's down residuals to exactly those
  skips. The main down path is untouched, as in diffusers' ``UNet2DConditionModel`` with
  ``down_block_additional_residuals``;
- a forward hook on the mid block adds the mid residual to its output, which then flows into
  the up path (``mid_block_additional_residual``).

The hooks are removed when the ``with`` block exits, also on error, so the UNet is never left
modified. Residuals are in the order the down path produces its skips: ``conv_in`` output first,
then each down block's resnet (and downsampler) outputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import UNetSpatioTemporalConditionModel
from torch import Tensor


def skip_slices(unet: UNetSpatioTemporalConditionModel) -> list[slice]:
    """For each up block (in forward order), the slice of down residuals it consumes."""
    end = 1 + sum(len(block.resnets) + len(block.downsamplers or ()) for block in unet.down_blocks)
    slices = []
    for block in unet.up_blocks:
        start = end - len(block.resnets)
        slices.append(slice(start, end))
        end = start
    if end != 0:
        raise ValueError(f"UNet skip count mismatch: {end} skips left unconsumed")
    return slices


def num_skips(unet: UNetSpatioTemporalConditionModel) -> int:
    """How many down residuals the UNet accepts (12 for SVD)."""
    return skip_slices(unet)[0].stop


@contextmanager
def unet_residuals(
    unet: UNetSpatioTemporalConditionModel,
    down_residuals: Sequence[Tensor] | None,
    mid_residual: Tensor | None,
) -> Iterator[None]:
    """Within the block, every forward of ``unet`` adds the given ControlNet residuals."""
    handles = []
    try:
        if down_residuals is not None:
            slices = skip_slices(unet)
            if len(down_residuals) != slices[0].stop:
                raise ValueError(
                    f"expected {slices[0].stop} down residuals, got {len(down_residuals)}"
                )
            for block, part in zip(unet.up_blocks, slices, strict=True):
                handles.append(
                    block.register_forward_pre_hook(
                        _add_to_skips(tuple(down_residuals[part])), with_kwargs=True
                    )
                )
        if mid_residual is not None:
            handles.append(unet.mid_block.register_forward_hook(_add_to_output(mid_residual)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _add_to_skips(residuals: tuple[Tensor, ...]):
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]):
        skips = kwargs["res_hidden_states_tuple"]
        for skip, residual in zip(skips, residuals, strict=True):
            if skip.shape != residual.shape:
                raise ValueError(f"residual {tuple(residual.shape)} != skip {tuple(skip.shape)}")
        pairs = zip(skips, residuals, strict=True)
        kwargs["res_hidden_states_tuple"] = tuple(skip + residual for skip, residual in pairs)
        return args, kwargs

    return hook


def _add_to_output(residual: Tensor):
    def hook(module: torch.nn.Module, args: tuple, output: Tensor) -> Tensor:
        return output + residual

    return hook
