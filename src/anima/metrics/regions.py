"""Foreground and background parts of videos, and any metric scored on each part.

(README, "Evaluation"; docs/architecture.md, "Conventions")

X-Dyna (§4.2, Tabs. 1 and 2) reports its metrics on "the foreground parts of the videos after
segmentation" (FG-DTFVD; L1, LPIPS, FID, cd-FVD of the human) and on "the background parts"
(BG-DTFVD; FID, cd-FVD): each video is cut by its own segmentation masks, the other region
replaced by a constant fill, and the metric is computed on what is left. `masked` makes one
part; `per_region` scores a metric on both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import torch

Region = Literal["foreground", "background"]
REGIONS: tuple[Region, Region] = ("foreground", "background")
T = TypeVar("T")


def _frame_masks(masks: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``masks`` as a bool (F, 1, H, W) matching ``frames`` (F, C, H, W); accepts (H, W),
    (F, H, W) or (F, 1, H, W), bool or values in [0, 1] (above 0.5 is foreground)."""
    if frames.dim() != 4:
        raise ValueError(f"expected a video (F, C, H, W), got shape {tuple(frames.shape)}")
    m = masks if masks.dtype == torch.bool else masks > 0.5
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[1] != 1 or tuple(m.shape[-2:]) != tuple(frames.shape[-2:]):
        raise ValueError(
            f"masks of shape {tuple(masks.shape)} do not fit frames {tuple(frames.shape)}"
        )
    if m.shape[0] not in (1, frames.shape[0]):
        raise ValueError(f"{m.shape[0]} masks for {frames.shape[0]} frames")
    return m.to(frames.device).expand(frames.shape[0], 1, *frames.shape[-2:])


def masked(
    frames: torch.Tensor,
    masks: torch.Tensor,
    region: Region = "foreground",
    fill: float | Sequence[float] | torch.Tensor = 0.0,
) -> torch.Tensor:
    """One region of ``frames`` (F, C, H, W): the foreground (where ``masks`` is set) or the
    background (where it is not) kept, the rest set to ``fill`` (a value, one per channel, or a
    tensor broadcastable to the frames, e.g. a blurred copy)."""
    if region not in REGIONS:
        raise ValueError(f"region must be 'foreground' or 'background', got {region!r}")
    keep = _frame_masks(masks, frames)
    if region == "background":
        keep = ~keep
    fill_tensor = torch.as_tensor(fill, dtype=frames.dtype, device=frames.device)
    if fill_tensor.dim() == 1:
        fill_tensor = fill_tensor.view(1, -1, 1, 1)
    return torch.where(keep, frames, fill_tensor.expand_as(frames))


def per_region(
    metric: Callable[..., T],
    *videos: torch.Tensor,
    masks: torch.Tensor | Sequence[torch.Tensor],
    fill: float | Sequence[float] | torch.Tensor = 0.0,
) -> dict[str, T]:
    """``metric(*videos)`` on the foreground and on the background: ``{"foreground": ...,
    "background": ...}`` (X-Dyna's FG- and BG- metrics). ``masks`` is one mask set for every
    video or one per video (each video cut by its own segmentation). Extra arguments of the
    metric are bound beforehand (``functools.partial``)."""
    if not videos:
        raise ValueError("per_region needs at least one video")
    if isinstance(masks, torch.Tensor):
        mask_sets: list[torch.Tensor] = [masks] * len(videos)
    else:
        mask_sets = list(masks)
        if len(mask_sets) != len(videos):
            raise ValueError(f"{len(mask_sets)} mask sets for {len(videos)} videos")
    return {
        region: metric(
            *(masked(v, m, region, fill) for v, m in zip(videos, mask_sets, strict=True))
        )
        for region in REGIONS
    }
