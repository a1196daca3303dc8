"""Tests for anima.io: images, masks, depth, videos and atomic writes."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from anima import io
from anima.errors import InputError


def smooth_frames(count: int, height: int, width: int) -> torch.Tensor:
    """(F, 3, H, W) frames of slowly drifting colour gradients."""
    ys = torch.linspace(0, 1, height).view(height, 1)
    xs = torch.linspace(0, 1, width).view(1, width)
    frames = []
    for f in range(count):
        shift = 0.05 * f
        red = 0.2 + 0.6 * (xs + shift).clamp(0, 1).expand(height, width)
        green = 0.2 + 0.6 * ys.expand(height, width)
        blue = 0.3 + 0.4 * ((xs + ys) / 2).expand(height, width)
        frames.append(torch.stack([red, green, blue]))
    return torch.stack(frames)


def leftovers(directory: Path) -> list[str]:
    """Names in a directory (to catch stray temporaries)."""
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- images


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    pixels[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)

    image = io.read_image(path)

    assert image.shape == (3, 40, 20)
    assert image.dtype == torch.float32
    # After a clockwise turn the left half is on top.
    assert image[0, :15].mean() > 0.8 and image[2, :15].mean() < 0.2
    assert image[2, 25:].mean() > 0.8 and image[0, 25:].mean() < 0.2


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = 128
    rgba[0, 0, 3] = 255
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)

    image = io.read_image(path)

    assert image.shape == (3, 4, 5)
    assert torch.allclose(image[:, 1, 1], torch.full((3,), 128 / 255))
    assert torch.allclose(image[:, 0, 0], torch.ones(3))


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((6, 7), 51, np.uint8), 0.2),
        (np.full((6, 7), 13107, np.uint16), 0.2),
    ],
)
def test_grey_becomes_rgb(tmp_path: Path, array: np.ndarray, expected: float) -> None:
    path = tmp_path / "grey.png"
    io.write_png(path, array)

    image = io.read_image(path)

    assert image.shape == (3, 6, 7)
    assert torch.allclose(image, torch.full_like(image, expected), atol=1e-4)


def test_palette_image_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    Image.new("RGB", (8, 3), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(path)

    image = io.read_image(path)

    assert image.shape == (3, 3, 8)
    assert torch.allclose(image[:, 0, 0], torch.tensor([10, 200, 30]) / 255, atol=1e-6)


def test_resize(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    io.write_png(path, smooth_frames(1, 40, 60)[0])

    image = io.read_image(path, size=(10, 15))

    assert image.shape == (3, 10, 15)
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_write_png_round_trip(tmp_path: Path) -> None:
    original = smooth_frames(1, 9, 11)[0]
    path = tmp_path / "out.png"
    io.write_png(path, original)

    assert (io.read_image(path) - original).abs().max() <= 0.5 / 255 + 1e-6
    assert leftovers(tmp_path) == ["out.png"]


def test_to_uint8_rounds_and_clips() -> None:
    values = torch.tensor([-0.5, 0.0, 0.6 / 255, 0.499, 1.0, 2.0, float("nan")])
    assert io.to_uint8(values).tolist() == [0, 0, 1, 127, 255, 255, 0]


def test_missing_image_names_path_and_where(tmp_path: Path) -> None:
    path = tmp_path / "missing.png"
    with pytest.raises(InputError) as info:
        io.read_image(path, where="spec.image")
    message = str(info.value)
    assert str(path) in message and message.endswith(", spec.image")
    assert "\n" not in message


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(InputError, match="not an image file") as info:
        io.read_image(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- masks


def test_mask_round_trip_and_resize(tmp_path: Path) -> None:
    mask = np.zeros((8, 10), np.uint8)
    mask[2:6, 3:7] = 255
    path = tmp_path / "mask.png"
    io.write_png(path, mask)

    read = io.read_mask(path)
    assert read.dtype == torch.bool
    assert torch.equal(read, torch.from_numpy(mask > 0))

    big = io.read_mask(path, size=(16, 20))
    assert big.shape == (16, 20)
    assert torch.equal(big, torch.from_numpy(np.kron(mask > 0, np.ones((2, 2), bool))))


def test_mask_uses_alpha_and_any_channel(tmp_path: Path) -> None:
    rgba = np.full((4, 4, 4), 255, np.uint8)  # white everywhere...
    rgba[..., 3] = 0
    rgba[1, 2, 3] = 200  # ...but only one pixel is opaque
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba).save(path)
    assert io.read_mask(path).nonzero().tolist() == [[1, 2]]

    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[2, 0, 1] = 1  # a single green pixel
    path = tmp_path / "colour.png"
    Image.fromarray(rgb).save(path)
    assert io.read_mask(path).nonzero().tolist() == [[2, 0]]


def test_empty_mask_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    io.write_png(path, np.zeros((5, 5), np.uint8))
    with pytest.raises(InputError, match="empty") as info:
        io.read_mask(path, where="spec.mask")
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- depth


def test_depth_npy_round_trip_and_resize(tmp_path: Path) -> None:
    distance = np.linspace(0.5, 4.0, 6 * 8, dtype=np.float32).reshape(6, 8)
    path = tmp_path / "depth.npy"
    np.save(path, distance)

    read = io.read_depth(path)
    assert read.dtype == torch.float32
    assert torch.equal(read, torch.from_numpy(distance))

    resized = io.read_depth(path, size=(3, 4))
    assert resized.shape == (3, 4)
    assert 0.5 <= resized.min() and resized.max() <= 4.0


def test_depth_png_round_trip(tmp_path: Path) -> None:
    distance = torch.linspace(0.3, 40.0, 5 * 7).reshape(5, 7)
    path = tmp_path / "depth.png"
    io.write_depth_png(path, distance)

    read = io.read_depth(path)

    assert read.shape == (5, 7)
    assert (read - distance).abs().max() <= 1e-3
    assert leftovers(tmp_path) == ["depth.png"]


def test_depth_png_encoding(tmp_path: Path) -> None:
    path = tmp_path / "raw.png"
    io.write_png(path, np.array([[1000, 2500], [65535, 1]], np.uint16))
    read = io.read_depth(path)
    assert torch.allclose(read, torch.tensor([[1.0, 2.5], [65.535, 0.001]]))


def write_bad_npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("missing.npy", lambda p: p, "not found"),
        ("text.npy", lambda p: p.write_text("nope") and p, "not a valid .npy"),
        ("nan.npy", lambda p: write_bad_npy(p, np.array([[1.0, np.nan]])), "NaN"),
        ("neg.npy", lambda p: write_bad_npy(p, np.array([[1.0, -2.0]])), "> 0"),
        ("cube.npy", lambda p: write_bad_npy(p, np.ones((2, 2, 2))), "2-D"),
        ("eight.png", lambda p: io.write_png(p, np.full((3, 3), 9, np.uint8)) or p, "16-bit"),
        ("zero.png", lambda p: io.write_png(p, np.zeros((3, 3), np.uint16)) or p, "zero"),
        ("junk.png", lambda p: p.write_bytes(b"junk") and p, "not an image"),
    ],
)
def test_bad_depth_files(tmp_path: Path, name: str, make, reason: str) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(InputError, match=reason) as info:
        io.read_depth(path, where="spec.depth")
    assert str(path) in str(info.value)
    assert str(info.value).endswith(", spec.depth")


# --------------------------------------------------------------------------- video


@pytest.mark.parametrize(("height", "width"), [(32, 48), (31, 45)])
def test_mp4_round_trip(tmp_path: Path, height: int, width: int) -> None:
    frames = smooth_frames(5, height, width)
    path = tmp_path / "clip.mp4"
    io.write_video(path, frames, fps=12)

    read, fps = io.read_video(path)

    even_h, even_w = height + height % 2, width + width % 2
    assert read.shape == (5, 3, even_h, even_w)
    assert fps == pytest.approx(12)
    assert (read[:, :, :height, :width] - frames).abs().mean() < 0.05
    assert leftovers(tmp_path) == ["clip.mp4"]


def test_gif_round_trip_keeps_repeated_frames(tmp_path: Path) -> None:
    moving = smooth_frames(3, 21, 30)
    frames = torch.cat([moving, moving[-1:].expand(3, -1, -1, -1)])  # 3 identical at the end
    path = tmp_path / "clip.gif"
    io.write_video(path, frames, fps=8)

    read, fps = io.read_video(path)

    assert read.shape == (6, 3, 21, 30)
    assert fps == pytest.approx(8, rel=0.05)
    assert (read - frames).abs().mean() < 0.05
    assert Image.open(path).info.get("loop") == 0


def test_folder_output_is_written_into_and_keeps_other_files(tmp_path: Path) -> None:
    frames = smooth_frames(3, 10, 12)
    path = tmp_path / "frames"
    path.mkdir()
    (path / "mine.txt").write_text("the user's")

    io.write_video(path, frames, fps=10)

    assert leftovers(path) == [io.MANIFEST_NAME, "0000.png", "0001.png", "0002.png", "mine.txt"]
    assert leftovers(tmp_path) == ["frames"]
    read, fps = io.read_video(path, folder_fps=10)
    assert fps == 10
    assert (read - frames).abs().max() <= 0.5 / 255 + 1e-6
    # a shorter clip replaces the frames anima wrote (none stale) and nothing else
    io.write_video(path, frames[:2], fps=10)
    assert leftovers(path) == [io.MANIFEST_NAME, "0000.png", "0001.png", "mine.txt"]
    assert (path / "mine.txt").read_text() == "the user's"


def test_a_plain_file_is_never_turned_into_a_folder(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("keep")
    with pytest.raises(InputError, match="is a file"):
        io.write_video(plain, smooth_frames(2, 4, 4), fps=8)
    assert plain.read_text() == "keep" and leftovers(tmp_path) == ["plain"]


def test_gif_frame_rate_is_clamped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "fast.gif"
    with pytest.warns(UserWarning, match="at most 50 fps"):
        io.write_video(path, smooth_frames(4, 8, 8), fps=240)
    assert [frame.info["duration"] for frame in ImageSequence.Iterator(Image.open(path))] == [
        20
    ] * 4


def test_unknown_video_suffix(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    with pytest.raises(InputError, match="unknown format") as info:
        io.write_video(path, smooth_frames(2, 4, 4), fps=8)
    assert str(path) in str(info.value)
    assert leftovers(tmp_path) == []


def test_read_video_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        io.read_video(tmp_path / "none.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="junk.mp4") as info:
        io.read_video(junk)
    assert "\n" not in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no image frames"):
        io.read_video(empty)


# --------------------------------------------------------------------------- atomic writes


def test_atomic_path_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    with pytest.raises(RuntimeError, match="boom"), io.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png"
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert leftovers(tmp_path) == []


def test_atomic_path_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with io.atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new"
    assert leftovers(tmp_path) == ["out.txt"]


def test_atomic_dir_failure_keeps_old_dir(tmp_path: Path) -> None:
    target = tmp_path / "dir"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(RuntimeError), io.atomic_dir(target) as tmp:
        (tmp / "partial").write_text("y")
        raise RuntimeError("boom")
    assert leftovers(tmp_path) == ["dir"]
    assert leftovers(target) == ["keep"]


def test_failed_video_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_ffmpeg(args: list[str], stdin: bytes) -> None:
        Path(args[-1]).write_bytes(b"partial")
        raise RuntimeError("encoder died")

    monkeypatch.setattr(io, "_run_ffmpeg", broken_ffmpeg)
    for name in ("clip.mp4", "clip.gif"):
        with pytest.raises(RuntimeError, match="encoder died"):
            io.write_video(tmp_path / name, smooth_frames(2, 4, 4), fps=8)
    assert leftovers(tmp_path) == []


def test_an_interruption_while_encoding_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    from anima.interrupts import Interrupted

    def interrupted_encoder(args: list[str], stdin: bytes) -> None:
        Path(args[-1]).write_bytes(stdin[:100])  # ffmpeg has begun writing the temporary
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(io, "_run_ffmpeg", interrupted_encoder)
    out = tmp_path / "new" / "clip.mp4"
    with pytest.raises(Interrupted):
        io.write_video(out, smooth_frames(3, 8, 8), fps=8)
    assert leftovers(tmp_path) == []  # no temporary, and no folder made for it
    existing = tmp_path / "old.mp4"
    existing.write_bytes(b"the user's video")
    with pytest.raises(Interrupted):
        io.write_video(existing, smooth_frames(3, 8, 8), fps=8)
    assert leftovers(tmp_path) == ["old.mp4"] and existing.read_bytes() == b"the user's video"
