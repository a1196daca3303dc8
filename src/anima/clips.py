"""Training-clip folders: the layout every trainer reads, and the crops that fit a clip to a
training size.

A dataset directory holds one folder a clip (the toy world writes this layout; LeviTor's,
X-Dyna's and the toy SVD base's trainers read it)::

    DATA/<clip>/frames/0000.png ...    RGB frames
    DATA/<clip>/instance/0000.png ...  instance ids, 0 = background
    DATA/<clip>/depth/0000.png ...     distance maps (optional)

A clip is fitted to a training size as LeviTor §4.1 describes its data ("center-crop the video
to an aspect ratio of 288x512, then resize"): the largest centred crop of the target's aspect,
then a resize, bilinear for colours and nearest for ids and distances (never blended).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

FRAMES_DIR, INSTANCE_DIR, DEPTH_DIR = "frames", "instance", "depth"


def crop_box(source: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the largest centred crop of ``source`` with the aspect
    ratio of ``target`` (both ``(H, W)``)."""
    (h0, w0), (h, w) = source, target
    if w0 * h > h0 * w:  # too wide: crop the width
        cw = max(1, min(w0, round(h0 * w / h)))
        return 0, (w0 - cw) // 2, h0, cw
    ch = max(1, min(h0, round(w0 * h / w)))
    return (h0 - ch) // 2, 0, ch, w0


def crop_resize_rgb(frames: Tensor, size: tuple[int, int]) -> Tensor:
    """(F, 3, H0, W0) -> centre crop to the aspect of ``size`` -> bilinear (antialiased) resize."""
    top, left, ch, cw = crop_box(tuple(frames.shape[-2:]), size)
    frames = frames[..., top : top + ch, left : left + cw]
    if tuple(frames.shape[-2:]) != tuple(size):
        frames = F.interpolate(frames, size=size, mode="bilinear", antialias=True)
    return frames.clamp(0.0, 1.0)


def crop_resize_nearest(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(F, H0, W0) ids or distances -> centre crop -> nearest-neighbour resize."""
    top, left, ch, cw = crop_box(tuple(maps.shape[-2:]), size)
    return resize_nearest(maps[..., top : top + ch, left : left + cw], size)


def resize_nearest(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``(F, H, W)`` instance or distance maps resized to ``size`` by nearest neighbour (ids and
    depths must never be blended)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    resized = torch.nn.functional.interpolate(maps[:, None].double(), size=size, mode="nearest")
    return resized[:, 0].to(maps.dtype)
