"""Videos side by side, each under a label: the frames `anima compare` writes
(README, "Evaluation", "anima compare").

Each panel is resized to a common height (aspect kept, width rounded to even), and a band above
it carries its label, drawn with OpenCV (`cv2.putText`, scaled down until it fits the panel).
Frames are made one at a time (`grid_frames`), so memory holds the panels and one frame.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

FONT = cv2.FONT_HERSHEY_SIMPLEX
#: The label band's height as a share of the panels' height (at least `MIN_BAND` pixels).
BAND_SHARE = 0.14
MIN_BAND = 14


def band_height(height: int) -> int:
    """Pixels of the label band above panels ``height`` tall (even)."""
    band = max(MIN_BAND, int(round(height * BAND_SHARE)))
    return band + band % 2


def panel_width(size: tuple[int, int], height: int) -> int:
    """The width of a (H, W) panel resized to ``height``, aspect kept, rounded to even."""
    width = size[1] * height / size[0]
    return max(2, int(round(width / 2.0)) * 2)


def label_band(text: str, width: int, height: int) -> torch.Tensor:
    """(3, height, width) float in [0, 1]: ``text`` in white, centred, on black (OpenCV)."""
    band = np.zeros((height, width, 3), np.uint8)
    scale, thickness = height / 30.0, max(1, height // 16)
    (text_w, text_h), base = cv2.getTextSize(text, FONT, scale, thickness)
    if text_w > width - 4:  # shrink to the panel's width
        scale *= (width - 4) / text_w
        (text_w, text_h), base = cv2.getTextSize(text, FONT, scale, thickness)
    origin = (max(0, (width - text_w) // 2), (height + text_h) // 2 - base // 2)
    cv2.putText(band, text, origin, FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return torch.from_numpy(band).permute(2, 0, 1).float() / 255.0


def _resized(frames: torch.Tensor, height: int) -> torch.Tensor:
    size = (int(frames.shape[-2]), int(frames.shape[-1]))
    target = (height, panel_width(size, height))
    if size == target:
        return frames.float()
    return F.interpolate(frames.float(), size=target, mode="bilinear", antialias=True).clamp(0, 1)


def grid_frames(
    panels: Sequence[tuple[str, torch.Tensor]], height: int | None = None
) -> Iterator[torch.Tensor]:
    """The frames of ``panels`` ((label, (F, 3, H, W) in [0, 1]), left to right) side by side,
    each (3, band + height, sum of widths); ``height`` defaults to the first panel's. A panel
    with fewer frames than the longest holds its last frame."""
    if not panels:
        raise ValueError("a grid needs at least one panel")
    height = height or int(panels[0][1].shape[-2])
    band = band_height(height)
    resized = [(label, _resized(frames, height)) for label, frames in panels]
    bands = [label_band(label, int(frames.shape[-1]), band) for label, frames in resized]
    count = max(int(frames.shape[0]) for _label, frames in resized)
    for index in range(count):
        columns = [
            torch.cat([bands[i], frames[min(index, frames.shape[0] - 1)]], dim=1)
            for i, (_label, frames) in enumerate(resized)
        ]
        yield torch.cat(columns, dim=2)


def grid_width(panels: Sequence[tuple[str, torch.Tensor]], height: int | None = None) -> int:
    """The width of `grid_frames`' frames (the sum of the resized panels' widths)."""
    height = height or int(panels[0][1].shape[-2])
    return sum(panel_width((int(f.shape[-2]), int(f.shape[-1])), height) for _l, f in panels)
