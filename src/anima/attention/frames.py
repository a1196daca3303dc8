"""The frame layout of a UNet's spatial layers, and spatial masks at any layer's resolution.

In the spatial layers (resnets, spatial attention) of `UNet2DConditionModel`, AnimateDiff's
`UNetMotionModel` and SVD's `UNetSpatioTemporalConditionModel` the batch is ``(B * F)``: the
``F`` frames of each video are contiguous (video 0's frames, then video 1's, ...). Under
batched classifier-free guidance the batch is ``[uncond videos; cond videos]``, so grouping it by
``F`` keeps every video, and every CFG half, apart. The hooks that need ``F`` take it as
``num_frames``; left ``None`` it is read from the model's input each call (``(B, C, F, H, W)``
for `UNetMotionModel`, ``(B, F, C, H, W)`` for SVD). `UNet2DConditionModel` takes images, so
there the caller says how many consecutive batch entries form one video (e.g. the keyframes
generated jointly in I2V3D §3.2.3).

Attention layers see ``(batch, tokens, channels)``; a spatial mask is mapped to their token
grid, which is found from the model input's latent size (each UNet level halves it, rounding
up) or, failing that, from the mask's aspect ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeAlias

import torch
from diffusers import UNetSpatioTemporalConditionModel
from torch import Tensor, nn
from torch.nn import functional as F

#: Which frames each frame attends to: ``"all"`` the whole video; an ``int`` n a sliding
#: window of n frames around the frame (shifted to stay inside the video, so always n long);
#: a sequence of frame indices (negative from the end) the same for every frame, e.g. ``[0]``
#: the first frame; or ``fn(frame, num_frames) -> indices``.
Window: TypeAlias = Literal["all"] | int | Sequence[int] | Callable[[int, int], Sequence[int]]


class InputWatcher:
    """Reads the number of frames and the latent size from each call of a UNet (a forward
    pre-hook on the model; `remove` takes it off)."""

    def __init__(self, model: nn.Module) -> None:
        self.frames: int | None = None
        self.size: tuple[int, int] | None = None
        self._frames_dim = 1 if isinstance(model, UNetSpatioTemporalConditionModel) else 2
        self._handle = model.register_forward_pre_hook(self._read, with_kwargs=True)

    def _read(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else kwargs.get("sample")
        self.frames = self.size = None
        if isinstance(sample, Tensor) and sample.ndim in (4, 5):
            self.size = (int(sample.shape[-2]), int(sample.shape[-1]))
            if sample.ndim == 5:
                self.frames = int(sample.shape[self._frames_dim])

    def remove(self) -> None:
        self._handle.remove()


def frame_count(num_frames: int | None, watcher: InputWatcher | None) -> int:
    """``num_frames`` if given, else the frame count of the model's current input."""
    if num_frames is not None:
        return num_frames
    if watcher is not None and watcher.frames is not None:
        return watcher.frames
    raise ValueError(
        "num_frames is needed: the model's input is not a video (B, C, F, H, W) / (B, F, C, H, W)"
    )


def groups(batch: int, num_frames: int) -> int:
    """How many videos (CFG halves included) a spatial layer's batch holds."""
    if num_frames < 1 or batch % num_frames:
        raise ValueError(f"batch {batch} is not a whole number of {num_frames}-frame videos")
    return batch // num_frames


def frame_index(index: int, num_frames: int) -> int:
    """A frame index, negative from the end, as 0..num_frames-1."""
    if not -num_frames <= index < num_frames:
        raise IndexError(f"frame {index} out of range for {num_frames} frames")
    return index % num_frames


def windows(window: Window, num_frames: int) -> list[list[int]]:
    """For each frame, the frames its queries attend to (see `Window`)."""
    n = num_frames
    if isinstance(window, str):
        if window != "all":
            raise ValueError(f"unknown window {window!r}")
        return [list(range(n)) for _ in range(n)]
    if isinstance(window, int):
        if window < 1:
            raise ValueError(f"window size must be >= 1, got {window}")
        size = min(window, n)
        starts = [min(max(i - (size - 1) // 2, 0), n - size) for i in range(n)]
        return [list(range(start, start + size)) for start in starts]
    if callable(window):
        out = [[frame_index(j, n) for j in window(i, n)] for i in range(n)]
    else:
        fixed = [frame_index(j, n) for j in window]
        out = [list(fixed) for _ in range(n)]
    if any(not frames for frames in out):
        raise ValueError("every frame's window needs at least one frame")
    return out


def token_grid(
    tokens: int, size: tuple[int, int] | None = None, aspect: tuple[int, int] | None = None
) -> tuple[int, int]:
    """The (h, w) grid of a layer with ``tokens`` tokens: the model input's latent ``size``
    halved (rounding up) until it fits, else the factorisation closest to ``aspect``."""
    if size is not None:
        h, w = size
        for _ in range(16):
            if h * w == tokens:
                return h, w
            if h * w < tokens:
                break
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        aspect = aspect or size
    if aspect is None:
        raise ValueError(f"cannot tell the spatial grid of {tokens} tokens without a size")
    ratio = math.log(aspect[0] / aspect[1])
    divisors = [d for d in range(1, tokens + 1) if tokens % d == 0]
    h = min(divisors, key=lambda d: abs(math.log(d / (tokens // d)) - ratio))
    return h, tokens // h


def as_frame_masks(mask: Tensor) -> Tensor:
    """A mask (H, W), (F, H, W) or (F, 1, H, W), bool or in [0, 1], as float (F, H, W)."""
    if mask.ndim == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"mask must be (F, 1, H, W), got {tuple(mask.shape)}")
        mask = mask[:, 0]
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ValueError(f"mask must be (H, W) or (F, H, W), got {tuple(mask.shape)}")
    return mask.float()


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """(F, H, W) masks averaged over each cell of an (h, w) grid (area interpolation keeps a
    constant mask exactly constant)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks[:, None], size=size, mode="area")[:, 0]


class MaskCache:
    """One spatial mask (per frame) resized once per grid size it is used at."""

    def __init__(self, mask: Tensor) -> None:
        self.masks = as_frame_masks(mask)
        self._resized: dict[tuple[int, int], Tensor] = {}

    @property
    def frames(self) -> int:
        return self.masks.shape[0]

    @property
    def aspect(self) -> tuple[int, int]:
        return int(self.masks.shape[-2]), int(self.masks.shape[-1])

    def at(self, size: tuple[int, int], like: Tensor) -> Tensor:
        """(F, h, w) masks on ``like``'s device and dtype."""
        if size not in self._resized:
            self._resized[size] = resize_masks(self.masks, size)
        return self._resized[size].to(device=like.device, dtype=like.dtype)

    def for_frames(self, frames: Tensor, num_frames: int | None) -> Tensor:
        """Which mask each of ``frames`` (frame indices) uses: its own, or the single one."""
        if self.frames == 1:
            return torch.zeros_like(frames)
        if num_frames is not None and self.frames != num_frames:
            raise ValueError(f"{self.frames} masks for {num_frames}-frame videos")
        return frames
