"""Sliding temporal windows for videos longer than a video model's context.

X-Dyna (§4.1, and its release) generates long videos with sliding windows of 16
frames overlapping by 4: at every denoising step the model predicts the noise of each window
separately and the predictions of a frame covered by several windows are averaged. The same
windows serve any model whose motion layers see a fixed number of frames.

Windows start every ``window - overlap`` frames; the last one is moved back so that it ends on
the last frame, so every window has full length and every frame is covered (a video no longer
than one window is a single window). A window never wraps around the end of the video.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def sliding_windows(num_frames: int, window: int = 16, overlap: int = 4) -> list[range]:
    """Frame ranges of the windows covering ``num_frames`` frames (see the module docstring).

    Raises:
        ValueError: ``window < 1``, ``overlap`` outside ``[0, window)`` or ``num_frames < 1``.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got {overlap} (window {window})")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_frames <= window:
        return [range(num_frames)]
    stride = window - overlap
    starts = list(range(0, num_frames - window, stride)) + [num_frames - window]
    return [range(start, start + window) for start in starts]


def windowed_prediction(
    predict: Callable[[range], Tensor],
    windows: list[range],
    num_frames: int,
    frame_dim: int,
) -> Tensor:
    """Each window's prediction, averaged per frame over the windows that cover it.

    Args:
        predict: ``predict(frames)`` -> the prediction for those frames, with
            ``len(frames)`` entries along ``frame_dim``.
        windows: from `sliding_windows`.
        num_frames: length of the whole video.
        frame_dim: the frame axis of the predictions.

    Returns:
        The averaged prediction over all ``num_frames`` frames. With a single window covering
        the video it is that window's prediction itself, bit for bit.
    """
    if len(windows) == 1 and len(windows[0]) == num_frames:
        return predict(windows[0])
    total: Tensor | None = None
    count = torch.zeros(num_frames)
    for frames in windows:
        prediction = predict(frames)
        if total is None:
            shape = list(prediction.shape)
            shape[frame_dim] = num_frames
            total = prediction.new_zeros(shape)
        index = torch.as_tensor(list(frames), device=prediction.device)
        total.index_add_(frame_dim, index, prediction)
        count[list(frames)] += 1
    if total is None or bool((count == 0).any()):
        raise ValueError("the windows do not cover every frame")
    shape = [1] * total.dim()
    shape[frame_dim] = num_frames
    return total / count.to(total.device, total.dtype).reshape(shape)
