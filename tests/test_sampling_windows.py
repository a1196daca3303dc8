"""Sliding temporal windows (X-Dyna's long-video sampling)."""

from __future__ import annotations

import pytest
import torch

from anima.sampling.windows import sliding_windows, windowed_prediction


def test_forty_frames_are_covered_by_full_windows() -> None:
    windows = sliding_windows(40, window=16, overlap=4)
    assert [w.start for w in windows] == [0, 12, 24]
    assert all(len(w) == 16 for w in windows)
    covered = sorted({f for w in windows for f in w})
    assert covered == list(range(40))


@pytest.mark.parametrize("frames", [1, 5, 16, 17, 28, 29, 64, 100])
def test_windows_cover_every_frame_and_overlap_at_least_as_asked(frames: int) -> None:
    windows = sliding_windows(frames, window=16, overlap=4)
    assert sorted({f for w in windows for f in w}) == list(range(frames))
    assert all(len(w) == min(16, frames) for w in windows)
    for first, second in zip(windows, windows[1:], strict=False):
        assert first.stop - second.start >= 4


def test_short_video_is_one_window_and_prediction_is_unchanged() -> None:
    latents = torch.randn(2, 4, 16, 8, 8)

    def predict(frames: range) -> torch.Tensor:
        chunk = latents[:, :, frames.start : frames.stop]
        return chunk.cumsum(dim=2) * 0.5  # depends on the frames seen together

    windows = sliding_windows(16, 16, 4)
    assert windows == [range(16)]
    assert torch.equal(windowed_prediction(predict, windows, 16, frame_dim=2), predict(range(16)))


def test_overlapping_predictions_are_averaged() -> None:
    windows = sliding_windows(28, window=16, overlap=4)  # [0, 16) and [12, 28)

    def predict(frames: range) -> torch.Tensor:
        return torch.full((1, len(frames)), float(frames.start))

    averaged = windowed_prediction(predict, windows, 28, frame_dim=1)[0]
    assert torch.all(averaged[:12] == 0)
    assert torch.all(averaged[12:16] == 6)  # (0 + 12) / 2
    assert torch.all(averaged[16:] == 12)


@pytest.mark.parametrize(("window", "overlap"), [(0, 0), (16, 16), (16, -1)])
def test_bad_window_settings_are_errors(window: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        sliding_windows(20, window, overlap)
