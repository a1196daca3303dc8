"""Tests for anima.io.VideoWriter: videos written frame by frame, memory flat in the frames."""

from __future__ import annotations

import signal
import subprocess
import tracemalloc
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from anima import io
from anima.interrupts import Interrupted

# What `write_video` ran before frames were streamed: one ffmpeg pass over the whole clip.
OLD_GIF_FILTER = (
    "split[a][b];[a]palettegen=stats_mode=full[p];"
    "[b][p]paletteuse=dither=bayer:bayer_scale=4:diff_mode=rectangle"
)
OLD_MP4_OUTPUT = [
    *["-an", "-c:v", "libx264", "-preset", "medium", "-crf", str(io.MP4_CRF)],
    *["-vf", io._MP4_FILTER, "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4"],
]


def smooth_frames(count: int, height: int, width: int) -> torch.Tensor:
    """(F, 3, H, W) frames of drifting colour gradients with a little noise."""
    ys = torch.linspace(0, 1, height).view(1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, width)
    shifts = 0.05 * torch.arange(count).view(count, 1, 1)
    red = 0.2 + 0.6 * (xs + shifts).clamp(0, 1)
    green = (0.2 + 0.6 * ys).expand(count, height, width)
    blue = 0.3 + 0.4 * (xs + ys) / 2 + 0.03 * torch.rand(count, height, width)
    return torch.stack([red.expand(count, height, width), green, blue], dim=1)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def old_encode(path: Path, frames: torch.Tensor, fps: float, output: list[str]) -> None:
    """Encode a clip as `write_video` did before it streamed: all frames on stdin at once."""
    clip = np.stack([io._frame_hwc_uint8(frame) for frame in frames])
    height, width = clip.shape[1:3]
    if "libx264" in output:
        clip = np.pad(clip, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        height, width = clip.shape[1:3]
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error"]
    args = [*io._raw_input_args(width, height, fps), *output, str(path)]
    subprocess.run([*cmd, *args], input=clip.tobytes(), check=True, capture_output=True)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen]:
    """Every process started during the test (to check none is left running)."""
    processes: list[subprocess.Popen] = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            processes.append(self)

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    return processes


def encoders(started: list[subprocess.Popen]) -> list[subprocess.Popen]:
    """The MP4 encoders among `started` (`imageio_ffmpeg` also runs ``ffmpeg -version``)."""
    return [process for process in started if "libx264" in process.args]


# --------------------------------------------------------------------------- same files


@pytest.mark.parametrize(("height", "width"), [(24, 32), (21, 31)])
def test_mp4_streamed_equals_the_clip_encoded_at_once(
    tmp_path: Path, height: int, width: int
) -> None:
    frames = smooth_frames(5, height, width)
    with io.VideoWriter(tmp_path / "streamed.mp4", fps=12) as writer:
        for frame in frames:
            writer.write(frame)
        assert writer.frames_written == 5
    io.write_video(tmp_path / "whole.mp4", frames, fps=12)
    old_encode(tmp_path / "old.mp4", frames, 12, OLD_MP4_OUTPUT)

    streamed, fps = io.read_video(tmp_path / "streamed.mp4")
    assert fps == pytest.approx(12)
    assert streamed.shape == (5, 3, height + height % 2, width + width % 2)
    assert torch.equal(streamed, io.read_video(tmp_path / "whole.mp4")[0])
    assert torch.equal(streamed, io.read_video(tmp_path / "old.mp4")[0])
    assert leftovers(tmp_path) == ["old.mp4", "streamed.mp4", "whole.mp4"]


@pytest.mark.parametrize("fps", [8, 12.5, 240])
def test_gif_streamed_is_byte_for_byte_the_one_pass_gif(tmp_path: Path, fps: float) -> None:
    frames = smooth_frames(6, 21, 30)
    frames[4:] = frames[3]  # repeated frames are kept
    with pytest.warns(UserWarning, match="at most 50 fps") if fps > 50 else nullcontext():
        with io.VideoWriter(tmp_path / "streamed.gif", fps=fps) as writer:
            for frame in frames:
                writer.write(frame)
    io.write_video(tmp_path / "whole.gif", frames, fps=min(fps, io.GIF_MAX_FPS))
    old_encode(tmp_path / "old.gif", frames, min(fps, io.GIF_MAX_FPS), ["-vf", OLD_GIF_FILTER])

    streamed = (tmp_path / "streamed.gif").read_bytes()
    assert streamed == (tmp_path / "old.gif").read_bytes()
    assert streamed == (tmp_path / "whole.gif").read_bytes()
    assert io.read_video(tmp_path / "streamed.gif")[0].shape == (6, 3, 21, 30)
    assert leftovers(tmp_path) == ["old.gif", "streamed.gif", "whole.gif"]


def test_folder_streamed_equals_the_clip_and_takes_uint8_frames(tmp_path: Path) -> None:
    frames = smooth_frames(3, 9, 11)
    with io.VideoWriter(tmp_path / "streamed", fps=8) as writer:
        writer.write(frames[0])
        writer.write(frames[1].numpy())
        writer.write(io.to_uint8(frames[2]).transpose(1, 2, 0))  # (H, W, 3) uint8
    io.write_video(tmp_path / "whole", frames, fps=8)

    for name in ("0000.png", "0001.png", "0002.png"):
        assert (tmp_path / "streamed" / name).read_bytes() == (
            tmp_path / "whole" / name
        ).read_bytes()
    read, _ = io.read_video(tmp_path / "streamed")
    assert (read - frames).abs().max() <= 0.5 / 255 + 1e-6
    assert leftovers(tmp_path / "streamed") == [
        io.MANIFEST_NAME,
        "0000.png",
        "0001.png",
        "0002.png",
    ]


# --------------------------------------------------------------------------- streaming


def test_write_video_takes_a_generator_one_frame_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    produced = 0
    made_when_written: list[int] = []

    def frames() -> Iterator[torch.Tensor]:
        nonlocal produced
        for frame in smooth_frames(6, 16, 16):
            produced += 1
            yield frame

    write = io.VideoWriter.write

    def recording_write(self: io.VideoWriter, frame: torch.Tensor) -> None:
        write(self, frame)
        made_when_written.append(produced)

    monkeypatch.setattr(io.VideoWriter, "write", recording_write)
    io.write_video(tmp_path / "clip.mp4", frames(), fps=8)

    assert made_when_written == [1, 2, 3, 4, 5, 6]  # never a frame made ahead of the encoder
    assert io.read_video(tmp_path / "clip.mp4")[0].shape == (6, 3, 16, 16)


def _bytes_read(process: subprocess.Popen) -> int:
    for line in Path(f"/proc/{process.pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def test_mp4_frames_reach_ffmpeg_before_the_writer_ends(
    tmp_path: Path, started: list[subprocess.Popen]
) -> None:
    frames = smooth_frames(6, 128, 192)
    frame_bytes = 128 * 192 * 3  # larger than a pipe's buffer (64 KiB)
    with io.VideoWriter(tmp_path / "clip.mp4", fps=8) as writer:
        for frame in frames:
            writer.write(frame)
        (ffmpeg,) = encoders(started)
        assert ffmpeg.poll() is None
        try:
            read = _bytes_read(ffmpeg)
        except OSError:
            pytest.skip("/proc/<pid>/io is not readable here")
        # all but what the pipe and the writer's buffer may still hold
        assert read >= 6 * frame_bytes - 64 * 1024 - 8 * 1024
    assert ffmpeg.poll() == 0


def test_memory_does_not_grow_with_the_frames(tmp_path: Path) -> None:
    count, size = 40, 512
    frame_bytes = size * size * 3
    frames = smooth_frames(2, size, size)  # torch memory: not counted by tracemalloc

    tracemalloc.start()
    try:
        with io.VideoWriter(tmp_path / "clip.mp4", fps=8) as writer:
            for index in range(count):
                writer.write(frames[index % 2])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert writer.frames_written == count
    assert peak < 8 * frame_bytes, f"peak {peak / frame_bytes:.1f} frames' worth"


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames"])
@pytest.mark.parametrize("error", [RuntimeError("boom"), Interrupted(signal.SIGINT)])
def test_an_error_mid_stream_leaves_nothing(
    tmp_path: Path, started: list[subprocess.Popen], name: str, error: BaseException
) -> None:
    out = tmp_path / "new" / name
    with pytest.raises(type(error)), io.VideoWriter(out, fps=8) as writer:
        for frame in smooth_frames(3, 8, 10):
            writer.write(frame)
        raise error
    assert leftovers(tmp_path) == []  # no output, no temporary, no folder made for them
    assert all(process.poll() is not None for process in started)
    if name == "clip.mp4":  # ffmpeg was running when the error came, and was killed
        assert [process.returncode for process in encoders(started)] == [-9]


def test_an_interruption_keeps_the_old_video_and_the_callers_staging(tmp_path: Path) -> None:
    old = tmp_path / "old.mp4"
    old.write_bytes(b"the user's video")
    with pytest.raises(Interrupted), io.staged_outputs() as staging:
        with io.VideoWriter(old, fps=8, staging=staging) as writer:
            writer.write(smooth_frames(1, 8, 8)[0])
        assert old.read_bytes() == b"the user's video"  # the caller commits, later
        raise Interrupted(signal.SIGTERM)
    assert leftovers(tmp_path) == ["old.mp4"] and old.read_bytes() == b"the user's video"


def test_with_the_callers_staging_the_video_appears_at_its_commit(tmp_path: Path) -> None:
    out = tmp_path / "clip.gif"
    with io.staged_outputs() as staging:
        with io.VideoWriter(out, fps=8, staging=staging) as writer:
            for frame in smooth_frames(2, 8, 8):
                writer.write(frame)
        assert not out.exists()
    assert leftovers(tmp_path) == ["clip.gif"]


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames"])
def test_a_frame_of_another_size_raises_and_leaves_nothing(
    tmp_path: Path, started: list[subprocess.Popen], name: str
) -> None:
    with pytest.raises(ValueError, match="10x8 pixels, the first was 12x8"):
        with io.VideoWriter(tmp_path / name, fps=8) as writer:
            writer.write(smooth_frames(1, 8, 12)[0])
            writer.write(smooth_frames(1, 8, 10)[0])
    assert leftovers(tmp_path) == []
    assert all(process.poll() is not None for process in started)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames"])
def test_no_frames_raises_and_leaves_nothing(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="no frames"), io.VideoWriter(tmp_path / name, fps=8):
        pass
    with pytest.raises(ValueError, match="no frames"):
        io.write_video(tmp_path / name, iter([]), fps=8)
    assert leftovers(tmp_path) == []


def test_bad_frames_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(F>0, 3, H, W\)"):
        io.write_video(tmp_path / "clip.mp4", torch.zeros(3, 8, 8), fps=8)
    with (
        pytest.raises(ValueError, match=r"\(3, H, W\)"),
        io.VideoWriter(tmp_path / "x.mp4", 8) as w,
    ):
        w.write(torch.zeros(8, 8, 3))
    with (
        pytest.raises(ValueError, match=r"\(H, W, 3\)"),
        io.VideoWriter(tmp_path / "x.mp4", 8) as w,
    ):
        w.write(np.zeros((3, 8, 8), np.uint8))
    assert leftovers(tmp_path) == []


def test_ffmpeg_dying_mid_stream_raises_its_status(
    tmp_path: Path, started: list[subprocess.Popen]
) -> None:
    frames = smooth_frames(2, 64, 64)  # a frame is larger than the writer's buffer
    with pytest.raises(RuntimeError, match=r"ffmpeg failed \(-9\)"):
        with io.VideoWriter(tmp_path / "clip.mp4", fps=8) as writer:
            writer.write(frames[0])
            (ffmpeg,) = encoders(started)
            ffmpeg.kill()
            ffmpeg.wait()
            writer.write(frames[1])
    assert leftovers(tmp_path) == []


def test_ffmpeg_failing_gives_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[subprocess.Popen]
) -> None:
    monkeypatch.setattr(io, "_MP4_FILTER", "nosuchfilter")
    with pytest.raises(RuntimeError, match=r"ffmpeg failed \(\d+\): .*nosuchfilter"):
        with io.VideoWriter(tmp_path / "clip.mp4", fps=8) as writer:
            for frame in smooth_frames(20, 64, 64):
                writer.write(frame)
    assert leftovers(tmp_path) == []
    assert all(process.poll() is not None for process in started)
