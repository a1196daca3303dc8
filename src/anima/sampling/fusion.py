"""Bidirectional fusion of two denoising passes over the same frames (I2V3D §3.3).

I2V3D fills the frames between two keyframes with a video model run twice at every step: a
forward pass conditioned on the first keyframe and a time-reversed pass (frames, controls and
masks in reverse order) conditioned on the second. Their predictions are blended per frame before
guidance, each pass trusted most near the keyframe it is conditioned on:

    pred_f = (1 - w_f) * forward_f + w_f * reversed_(N-1-f),   w_f = f / (N - 1)

so frame 0 is the forward pass's alone and frame N-1 the reversed pass's alone. Frames are on
dimension 1 of the predictions, (B, N, C, H, W), as in diffusers' video pipelines.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fusion_weights(num_frames: int, device: torch.device | None = None) -> Tensor:
    """(N,) weights of the reversed pass, w_f = f / (N - 1) (0 for a single frame)."""
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    if num_frames == 1:
        return torch.zeros(1, device=device)
    return torch.arange(num_frames, device=device, dtype=torch.float64) / (num_frames - 1)


def reverse_frames(x: Tensor, dim: int = 1) -> Tensor:
    """The frames of ``x`` in reverse order (dimension ``dim``)."""
    return x.flip(dim)


def fuse_bidirectional(forward: Tensor, reversed_: Tensor) -> Tensor:
    """The fused prediction (module docstring) of a forward pass and a time-reversed pass, both
    (B, N, ...) with frames on dimension 1, ``reversed_`` in its own (reversed) frame order.
    Frame 0 is exactly ``forward``'s, frame N-1 exactly the reversed pass's."""
    if forward.shape != reversed_.shape:
        shapes = f"{tuple(forward.shape)} != {tuple(reversed_.shape)}"
        raise ValueError(f"the two passes differ in shape: {shapes}")
    frames = forward.shape[1]
    weights = fusion_weights(frames, forward.device).to(forward.dtype)
    weights = weights.reshape(1, frames, *([1] * (forward.dim() - 2)))
    back = reverse_frames(reversed_)
    fused = torch.lerp(forward, back, weights)
    # lerp's endpoints are exact in exact arithmetic; make them exact in floating point too
    fused[:, 0] = forward[:, 0]
    fused[:, -1] = back[:, -1] if frames > 1 else forward[:, -1]
    return fused
