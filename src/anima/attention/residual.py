"""Residual-branch features of res blocks, and AnyI2V's patch-wise AdaIN.

A diffusers ``ResnetBlock2D`` returns ``(shortcut(x) + conv2(...)) / output_scale_factor``; its
residual branch is the ``conv2`` output, before the shortcut is added. AnyI2V injects it (not
the block's output) into frame 0 of ``up_blocks.1``/``up_blocks.2``, after a patch-wise AdaIN
that keeps the current features' local statistics (AnyI2V, appendix A.1 and its release);
I2V3D §3.2.2 injects the residual branch's ("convolutional features from the residual block")
of the up blocks inside the foreground. The hooks read and replace it with a forward hook on the
block's ``conv2`` (`UNet2DConditionModel`, `UNetMotionModel`, and both the spatial
``ResnetBlock2D`` and the ``TemporalResnetBlock`` of SVD's ``SpatioTemporalResBlock``). A
temporal block's ``conv2`` output is (videos, C, F, H, W); the hooks see it frame-major,
(videos * F, C, H, W), like every spatial layer's, so that frames, masks, branches and windows
address it the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

#: ``fn(features (rows, C, H, W), frames per video or None) -> replacement or None``.
ResidualFn = Callable[[Tensor, int | None], Tensor | None]


def frame_major(features: Tensor) -> tuple[Tensor, int | None]:
    """A ``conv2`` output as (rows, C, H, W) and its frames per video (5-D input only)."""
    if features.ndim == 5:
        videos, channels, frames, height, width = features.shape
        flat = features.transpose(1, 2).reshape(videos * frames, channels, height, width)
        return flat, frames
    return features, None


def from_frame_major(features: Tensor, like: Tensor) -> Tensor:
    """The inverse of `frame_major` for an output shaped like ``like``."""
    if like.ndim == 5:
        videos, channels, frames, height, width = like.shape
        features = features.reshape(videos, frames, channels, height, width).transpose(1, 2)
        return features.contiguous()
    return features


def residual_hook(fn: ResidualFn) -> Callable[..., Tensor | None]:
    """A forward hook for a res block's ``conv2`` that hands ``fn`` its output, frame-major,
    and returns ``fn``'s replacement (None keeps the output)."""

    def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
        flat, frames = frame_major(output)
        new = fn(flat, frames)
        return None if new is None else from_frame_major(new, output)

    return hook


def _patch_index(height: int, width: int, patch: int, device: torch.device) -> Tensor:
    """The patch of each pixel (row-major), patches ``patch`` x ``patch`` from the top left."""
    rows = torch.arange(height, device=device) // patch
    cols = torch.arange(width, device=device) // patch
    per_row = -(-width // patch)
    return (rows[:, None] * per_row + cols[None, :]).reshape(-1)


def _patch_stats(x: Tensor, index: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Per-patch, per-channel mean and (population) std of (rows, C, H*W) ``x``."""
    patches = count.shape[0]
    mean = x.new_zeros(*x.shape[:2], patches).index_add_(2, index, x) / count
    centred = x - mean.index_select(2, index)
    var = x.new_zeros(*x.shape[:2], patches).index_add_(2, index, centred.square()) / count
    return mean, var.sqrt()


def patch_adain(source: Tensor, current: Tensor, patch: int = 4, eps: float = 1e-6) -> Tensor:
    """AnyI2V's patch-wise AdaIN, an `anima.attention.inject` ``transform``: each ``patch`` x
    ``patch`` patch (default 4x4, from the top left; partial patches at the right and bottom
    edges are their own) of each channel of ``source`` is normalised by its own mean and std
    and given ``current``'s mean and std over the same patch (population std; ``source``'s
    is clamped to ``eps``, so a constant patch becomes ``current``'s mean). Both (rows, C, H,
    W); computed in float32, returned in ``source``'s dtype. ``functools.partial(patch_adain,
    patch=8)`` for other sizes."""
    if source.ndim != 4 or source.shape != current.shape:
        raise ValueError(
            f"patch_adain takes two (rows, C, H, W) features of one shape, got "
            f"{tuple(source.shape)} and {tuple(current.shape)}"
        )
    if patch < 1:
        raise ValueError(f"patch must be >= 1, got {patch}")
    rows, channels, height, width = source.shape
    index = _patch_index(height, width, patch, source.device)
    count = torch.bincount(index).to(torch.float32)
    src = source.reshape(rows, channels, -1).to(torch.float32)
    cur = current.reshape(rows, channels, -1).to(torch.float32)
    src_mean, src_std = _patch_stats(src, index, count)
    cur_mean, cur_std = _patch_stats(cur, index, count)
    scale = cur_std / src_std.clamp_min(eps)
    out = (src - src_mean.index_select(2, index)) * scale.index_select(2, index)
    out = out + cur_mean.index_select(2, index)
    return out.reshape(source.shape).to(source.dtype)
