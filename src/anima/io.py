"""Reading and writing images, masks, depth maps and videos.

Conventions: images are float32 tensors in [0, 1] shaped (3, H, W), videos are (F, 3, H, W),
sizes are (H, W). uint8 / uint16 only appear at the file boundary. Problems with user-supplied
files raise `InputError` naming the file; programming errors (wrong shapes) raise `ValueError`.
Everything written goes through `staged_outputs` (`atomic_path` is one staged file;
`atomic_dir` replaces a folder anima owns), so a failed or interrupted write never leaves a
half-written file (or a stray temporary) behind, and a folder the user already had is written
into, never replaced.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence

from anima.errors import InputError
from anima.interrupts import signals_deferred

PathLike = str | os.PathLike[str]
ArrayLike = torch.Tensor | np.ndarray

DEPTH_PNG_SCALE = 1000.0
"""A 16-bit depth PNG stores round(distance * DEPTH_PNG_SCALE); 0 marks an invalid pixel."""

MP4_CRF = 18
"""libx264 constant rate factor for MP4 output (lower is better; 18 is visually lossless)."""

DEFAULT_FOLDER_FPS = 8.0
"""Frame rate reported by `read_video` for a folder of frames, which stores no timing."""

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Files read as frames from a frame folder; `write_video` writes ``%04d.png``."""

_GIF_FILTER = (
    "split[a][b];[a]palettegen=stats_mode=full[p];"
    "[b][p]paletteuse=dither=bayer:bayer_scale=4:diff_mode=rectangle"
)
_MP4_FILTER = (
    "scale=out_color_matrix=bt709:out_range=tv,"
    "setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709"
)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


# --------------------------------------------------------------------------- atomic writes


MANIFEST_NAME = ".anima-written.json"
"""In every folder `Staging.folder` writes: the files anima put there, so that the next write
into the folder replaces exactly those (and removes the ones it no longer writes)."""


def _temp_sibling(path: Path, tag: str, suffix: str = "") -> Path:
    """A hidden, unused name next to `path`: ``.anima-<random>.<tag><suffix>`` (short, so that
    a `path` whose name is as long as the file system allows still gets a temporary)."""
    return path.with_name(f".anima-{secrets.token_hex(4)}.{tag}{suffix}")


def _remove(path: Path) -> None:
    """Delete a file or directory tree if it exists, ignoring errors."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns the folders created, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    missing.reverse()
    for created in missing:
        created.mkdir(exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove those of `folders` that are empty, innermost first."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; move it onto `path` on success.

    The temporary name keeps the suffix of `path`, so writers that pick the format from the
    suffix still work. The parent directory is created if needed. On an exception (or an
    `anima.interrupts.Interrupted`) the temporary and the folders made for it are removed and
    the exception re-raised; `path` is left untouched.
    """
    with staged_outputs() as staging:
        yield staging.file(path)


def _swap_in(new: Path, path: Path) -> None:
    """Rename directory `new` to `path`, replacing whatever is at `path`."""
    if not path.exists() and not path.is_symlink():
        os.replace(new, path)
        return
    old = _temp_sibling(path, "old")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


@contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a fresh empty directory next to `path`; rename it to `path` on success.

    An existing file or directory at `path` is REPLACED (moved aside, then deleted): for folders
    anima owns (a world, a converted model, a checkpoint), never for a user's output folder
    (`Staging.folder` writes into those). On an exception the temporary directory is deleted
    and the exception re-raised.
    """
    path = Path(path)
    created = _make_parents(path.parent)
    tmp = _temp_sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        _swap_in(tmp, path)
    except BaseException:
        _remove(tmp)
        _remove_empty(created)
        raise


def _written_files(folder: Path) -> list[str]:
    """Relative POSIX paths of the files under `folder` (the manifest left out)."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME
    )


def _previously_written(folder: Path) -> list[str]:
    """The files the manifest of `folder` lists (none when it has no readable manifest); a
    name that would leave the folder is ignored."""
    try:
        names = json.loads((folder / MANIFEST_NAME).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [
        name
        for name in names
        if isinstance(name, str) and not Path(name).is_absolute() and ".." not in Path(name).parts
    ]


def _write_manifest(folder: Path, files: list[str]) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps({"writer": "anima", "files": files}) + "\n")


@dataclass
class _StagedFolder:
    stage: Path
    target: Path
    merge: bool  # the target existed: move the files in one by one


@dataclass
class Staging:
    """Outputs written under temporary names, then moved into place together by `commit`.

    - `file(path)`: a temporary file next to `path` (same suffix), renamed onto `path`.
    - `folder(path)`: a staging folder. A new `path` is the staging folder renamed. An existing
      folder is written INTO: each staged file replaces the file of its name, files an earlier
      anima write listed in the folder's manifest (`MANIFEST_NAME`) and this one does not
      write are removed, and nothing else in the folder is touched.

    `commit` holds SIGINT / SIGTERM back while it moves things (`signals_deferred`), so that a
    run ends with all of its outputs or none; `discard` removes every temporary and every
    folder made for them. Use `staged_outputs`, which calls one or the other.
    """

    _files: list[tuple[Path, Path]] = field(default_factory=list)
    _folders: list[_StagedFolder] = field(default_factory=list)
    _created: list[Path] = field(default_factory=list)

    def file(self, path: PathLike) -> Path:
        path = Path(path)
        self._created += _make_parents(path.parent)
        tmp = _temp_sibling(path, "tmp", path.suffix)
        self._files.append((tmp, path))
        return tmp

    def folder(self, path: PathLike) -> Path:
        path = Path(path)
        merge = path.is_dir()
        if merge:
            stage = path / f".anima-{secrets.token_hex(4)}.tmp"
        else:
            self._created += _make_parents(path.parent)
            stage = _temp_sibling(path, "tmp")
        stage.mkdir()
        self._folders.append(_StagedFolder(stage, path, merge))
        return stage

    def commit(self) -> None:
        with signals_deferred():
            for tmp, path in self._files:
                os.replace(tmp, path)
            for folder in self._folders:
                files = _written_files(folder.stage)
                if folder.merge:
                    _merge_into(folder.stage, folder.target, files)
                else:
                    _write_manifest(folder.stage, files)
                    os.replace(folder.stage, folder.target)
        self._files, self._folders, self._created = [], [], []

    def discard(self) -> None:
        for tmp, _path in self._files:
            _remove(tmp)
        for folder in self._folders:
            _remove(folder.stage)
        _remove_empty(self._created)
        self._files, self._folders, self._created = [], [], []


def _merge_into(stage: Path, target: Path, files: list[str]) -> None:
    """Move the staged `files` into the existing folder `target`, remove the files anima wrote
    there before and no longer writes, and record the new list."""
    stale = sorted(set(_previously_written(target)) - set(files))
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / name, target / name)
    for name in stale:
        (target / name).unlink(missing_ok=True)
        parents = [p for p in (target / name).parents if target in p.parents]
        _remove_empty(parents)
    _remove(stage)
    _write_manifest(target, files)


@contextmanager
def staged_outputs() -> Iterator[Staging]:
    """A `Staging` committed when the block ends normally and discarded when it raises (an
    error or an `anima.interrupts.Interrupted`)."""
    staging = Staging()
    try:
        yield staging
    except BaseException:
        staging.discard()
        raise
    try:
        staging.commit()
    except BaseException:
        staging.discard()
        raise


# --------------------------------------------------------------------------- conversions


def _to_numpy(array: ArrayLike) -> np.ndarray:
    """A numpy view/copy of a tensor or array (CPU, detached)."""
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def to_uint8(image: ArrayLike) -> np.ndarray:
    """Float values in [0, 1] to uint8 (``round(x * 255)``, clipped; NaN becomes 0).

    The shape is kept as is; returns a numpy array.
    """
    values = np.nan_to_num(_to_numpy(image).astype(np.float32), nan=0.0)
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _frames_hwc_uint8(frames: ArrayLike) -> np.ndarray:
    """(F, 3, H, W) float frames to a contiguous (F, H, W, 3) uint8 array."""
    array = _to_numpy(frames)
    if array.ndim != 4 or array.shape[1] != 3 or array.shape[0] == 0:
        raise ValueError(f"frames must be shaped (F>0, 3, H, W), got {tuple(array.shape)}")
    return np.ascontiguousarray(to_uint8(array).transpose(0, 2, 3, 1))


def _check_size(size: tuple[int, int] | None) -> None:
    """Reject malformed (H, W) sizes early (a programming error)."""
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f"size must be a positive (H, W) pair, got {size}")


# --------------------------------------------------------------------------- reading images


def _reason(err: BaseException) -> str:
    """A one-line reason from an exception (the last meaningful line, e.g. of ffmpeg's log)."""
    lines = [line.strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line and not line.startswith("===")]
    reason = lines[-1] if lines else type(err).__name__
    return reason if len(reason) <= 200 else reason[:197] + "..."


@contextmanager
def _opened(path: PathLike, kind: str, where: str | None) -> Iterator[Image.Image]:
    """Open an image file (lazily); failures inside the block become `InputError`.

    The message reads "cannot read <kind> '<path>': <reason>".
    """
    path = Path(path)

    def fail(reason: str) -> InputError:
        return InputError(f"cannot read {kind} '{path}': {reason}", where)

    if not path.exists():
        raise fail("file not found")
    if path.is_dir():
        raise fail("is a directory")
    try:
        with Image.open(path) as img:
            yield img
    except Image.DecompressionBombError as err:
        raise fail("image too large") from err
    except Image.UnidentifiedImageError as err:
        raise fail("not an image file") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise fail(f"corrupt or unreadable image ({_reason(err)})") from err


def _open_image(path: PathLike, kind: str, where: str | None) -> Image.Image:
    """Open and fully decode an image file, EXIF orientation applied (see `_opened`)."""
    with _opened(path, kind, where) as img:
        img.load()
        return ImageOps.exif_transpose(img)


def _has_alpha(img: Image.Image) -> bool:
    """Whether the image carries transparency (an alpha band or a transparent colour)."""
    return img.mode in _ALPHA_MODES or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )


def has_transparent_pixels(path: PathLike) -> bool:
    """Whether an image file has transparency (`_has_alpha`) and some pixel is not fully
    opaque: `read_image` composites those on black. Only images with transparency are decoded;
    an unreadable file gives False (reading it reports the problem)."""
    try:
        with Image.open(path) as img:
            if not _has_alpha(img):
                return False
            alpha = np.asarray(img.convert("RGBA"))[..., 3]
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return False
    return bool(alpha.min() < 255)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """(H, W) float grey to (H, W, 3)."""
    return np.repeat(grey[..., None], 3, axis=2)


def _image_to_float(img: Image.Image) -> np.ndarray:
    """A decoded PIL image to (H, W, 3) float32 RGB in [0, 1].

    16-bit grey is scaled by 1/65535, 32-bit integer grey likewise (clipped), float grey is
    taken as [0, 1] (clipped). Transparent images are composited on black (premultiplied).
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb(np.asarray(img).astype(np.float32) / 65535.0)
    if img.mode in ("I", "F"):
        scale = 65535.0 if img.mode == "I" else 1.0
        grey = np.asarray(img).astype(np.float32) / scale
        return _grey_to_rgb(np.clip(np.nan_to_num(grey), 0.0, 1.0))
    if _has_alpha(img):
        rgba = np.asarray(img.convert("RGBA")).astype(np.float32) / 255.0
        return rgba[..., :3] * rgba[..., 3:]
    return np.asarray(img.convert("RGB")).astype(np.float32) / 255.0


def _resize_float(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, C) float32 to `size` (H, W) with Lanczos, per channel, clipped to [0, 1]."""
    height, width = size
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
                (width, height), Image.Resampling.LANCZOS
            )
        )
        for c in range(image.shape[2])
    ]
    return np.clip(np.stack(channels, axis=2), 0.0, 1.0)


def read_image(
    path: PathLike, size: tuple[int, int] | None = None, where: str | None = None
) -> torch.Tensor:
    """Read any PIL-readable image as a (3, H, W) float32 tensor in [0, 1].

    EXIF orientation is applied. Grey (8/16-bit), palette and CMYK images become RGB; images
    with transparency are composited on black. If `size` (H, W) is given the image is resized
    to it with a Lanczos filter. A missing or unreadable file raises `InputError` naming the
    path, with `where` (e.g. ``"spec.image"``) as the location.
    """
    _check_size(size)
    try:
        image = _image_to_float(_open_image(path, "image", where))
    except ValueError as err:  # mode PIL cannot convert to RGB (e.g. LAB)
        raise InputError(f"cannot read image '{path}': unsupported image mode", where) from err
    if size is not None and image.shape[:2] != tuple(size):
        image = _resize_float(image, size)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


# --------------------------------------------------------------------------- masks


def _mask_array(img: Image.Image) -> np.ndarray:
    """The object pixels of a mask image as an (H, W) bool array.

    If the image has transparency and any pixel is not fully opaque, the object is where
    alpha > 0. Otherwise it is every pixel with a nonzero value in any colour channel.
    """
    if _has_alpha(img):
        rgba = np.asarray(img.convert("RGBA"))
        alpha = rgba[..., 3]
        if alpha.min() < 255:
            return alpha > 0
        colour = rgba[..., :3]
    elif img.mode in ("1", "L", "I", "F", "RGB", *_SIXTEEN_BIT_MODES):
        colour = np.asarray(img)
    else:
        colour = np.asarray(img.convert("RGB"))
    nonzero = colour != 0
    return nonzero if nonzero.ndim == 2 else nonzero.any(axis=-1)


ASPECT_TOLERANCE = 0.01
"""A mask or depth file may differ from the image's aspect ratio by this fraction (or by a
pixel of rounding on either side) and still be resized onto it."""


def _same_aspect(found: tuple[int, int], wanted: tuple[int, int]) -> bool:
    """Whether (H, W) ``found`` has the aspect of ``wanted``: within `ASPECT_TOLERANCE`, or
    within one pixel on each side of some scaling of ``wanted`` (rounding at a small size)."""
    (h, w), (height, width) = found, wanted
    if abs((h / w) / (height / width) - 1.0) <= ASPECT_TOLERANCE:
        return True
    return (h - 1) / height <= (w + 1) / width and (w - 1) / width <= (h + 1) / height


def _check_aspect(
    found: tuple[int, int],
    sizes: list[tuple[int, int] | None],
    path: PathLike,
    kind: str,
    where: str | None,
) -> None:
    """`InputError` unless ``found`` (H, W) has the aspect of one of ``sizes`` (None: skip):
    resizing it would stretch the file over the image."""
    wanted = [tuple(s) for s in sizes if s is not None]
    if not wanted or any(_same_aspect(found, s) for s in wanted):
        return
    height, width = wanted[0]
    raise InputError(
        f"invalid {kind} '{path}': {found[1]}x{found[0]} pixels, another aspect ratio than the "
        f"{width}x{height} image's (it would be stretched onto it)",
        where,
    )


def read_mask(
    path: PathLike,
    size: tuple[int, int] | None = None,
    where: str | None = None,
    image_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Read an object mask as an (H, W) bool tensor.

    Nonzero pixels (in any channel) are the object; if the image has a non-trivial alpha
    channel, alpha > 0 decides instead. With `size` (H, W) the mask is resized with nearest
    neighbour; it must then have the aspect ratio of `size` or of `image_size` (the source
    image's (H, W), when `size` stretches it), within `ASPECT_TOLERANCE` or a pixel of
    rounding, so that it is never silently stretched. An unreadable file, a mask of another
    aspect, or a mask with no object pixels (after resizing), raises `InputError` naming the
    path, with `where` (e.g. ``"objects[0].mask"``) as the location.
    """
    _check_size(size)
    mask = _mask_array(_open_image(path, "mask", where))
    if size is not None:
        _check_aspect(mask.shape[:2], [image_size, size], path, "mask", where)
    if size is not None and mask.shape != tuple(size):
        small = Image.fromarray(mask.astype(np.uint8) * 255)
        resized = small.resize((size[1], size[0]), Image.Resampling.NEAREST)
        mask = np.asarray(resized) > 127
    if not mask.any():
        raise InputError(f"invalid mask '{path}': empty (no nonzero pixels)", where)
    return torch.from_numpy(np.ascontiguousarray(mask))


# --------------------------------------------------------------------------- depth


def _load_depth_npy(path: Path) -> np.ndarray:
    """Load a .npy distance array; raises ValueError with a reason on any problem."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError("not a valid .npy file") from err
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf":
        raise ValueError("expected a numeric array")
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) array, got shape {array.shape}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError("contains NaN or infinite values")
    if (array <= 0).any():
        raise ValueError("distances must be > 0")
    return array


def _load_depth_png(path: Path, where: str | None) -> np.ndarray:
    """Load a 16-bit single-channel depth image; raises ValueError with a reason."""
    img = _open_image(path, "depth", where)
    if img.mode not in (*_SIXTEEN_BIT_MODES, "I"):
        raise ValueError(
            f"expected a 16-bit single-channel PNG (value / {DEPTH_PNG_SCALE:g} = distance), "
            f"got mode {img.mode}"
        )
    values = np.asarray(img).astype(np.float32)
    if (values <= 0).any():
        raise ValueError("has zero (invalid) pixels")
    return values / DEPTH_PNG_SCALE


def read_depth(
    path: PathLike,
    size: tuple[int, int] | None = None,
    where: str | None = None,
    image_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Read a distance map as an (H, W) float32 tensor.

    Accepted files: a ``.npy`` 2-D array of finite distances > 0, or a 16-bit grey PNG whose
    value / `DEPTH_PNG_SCALE` is the distance (zero pixels are invalid). With `size` (H, W) the
    map is resized bilinearly; it must then have the aspect ratio of `size` or of `image_size`
    (as for `read_mask`). Any problem raises `InputError` naming the file.
    """
    _check_size(size)
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy" and path.is_file():
            depth = _load_depth_npy(path)
        else:
            depth = _load_depth_png(path, where)
    except ValueError as err:
        raise InputError(f"invalid depth '{path}': {err}", where) from err
    if size is not None:
        _check_aspect(depth.shape[:2], [image_size, size], path, "depth", where)
    if size is not None and depth.shape != tuple(size):
        depth = cv2.resize(depth, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))


# --------------------------------------------------------------------------- writing images


def _png_image(image: ArrayLike) -> Image.Image:
    """A PIL image for `write_png`: (3, H, W) float RGB or (H, W) uint8 / uint16 grey."""
    array = _to_numpy(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.dtype.kind == "f":
        return Image.fromarray(np.ascontiguousarray(to_uint8(array).transpose(1, 2, 0)))
    if array.ndim == 2 and array.dtype in (np.uint8, np.uint16):
        return Image.fromarray(np.ascontiguousarray(array))
    raise ValueError(
        "write_png expects a (3, H, W) float image or an (H, W) uint8/uint16 array, "
        f"got shape {tuple(array.shape)} dtype {array.dtype}"
    )


def write_png(path: PathLike, image: ArrayLike) -> None:
    """Write a PNG atomically.

    `image` is a (3, H, W) float image in [0, 1] (saved as 8-bit RGB) or an (H, W) uint8 or
    uint16 array (saved as 8- or 16-bit grey). Tensors or numpy arrays are accepted.
    """
    img = _png_image(image)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def write_depth_png(path: PathLike, distance: ArrayLike) -> None:
    """Write an (H, W) distance map as a 16-bit PNG, the inverse of `read_depth`.

    Stores ``round(distance * DEPTH_PNG_SCALE)`` clipped to 1..65535 (so about 1 mm to 65.5 m
    at a scale of 1000); the file is written atomically.
    """
    array = _to_numpy(distance).astype(np.float64)
    if array.ndim != 2:
        raise ValueError(f"distance must be (H, W), got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("distance contains NaN")
    encoded = np.clip(np.rint(array * DEPTH_PNG_SCALE), 1, 65535).astype(np.uint16)
    write_png(path, encoded)


# --------------------------------------------------------------------------- video


def _run_ffmpeg(args: list[str], stdin: bytes) -> None:
    """Run the bundled ffmpeg with raw frames on stdin; raise RuntimeError on failure."""
    import imageio_ffmpeg  # here, not at the top: reading and writing images never needs it

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *args]
    result = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"ffmpeg failed ({result.returncode}): {message}")


def _raw_input_args(width: int, height: int, fps: float) -> list[str]:
    """ffmpeg arguments that read rgb24 frames from stdin at `fps` (no audio)."""
    rate = str(Fraction(fps).limit_denominator(1001))
    size = f"{width}x{height}"
    return ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", size, "-r", rate, "-i", "-", "-an"]


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Pad (F, H, W, 3) frames by edge replication so H and W are even."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


GIF_MAX_FPS = 50.0
"""GIF delays are whole hundredths of a second, and most viewers play a delay under 20 ms at
100 ms: a GIF faster than 50 fps is written at 50 fps (with a warning)."""


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """H.264 / yuv420p MP4 (BT.709, tagged), odd sizes padded to even."""
    frames = np.ascontiguousarray(_pad_to_even(frames))
    height, width = frames.shape[1:3]
    encode = ["-c:v", "libx264", "-preset", "medium", "-crf", str(MP4_CRF)]
    output = ["-vf", _MP4_FILTER, "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4"]
    _run_ffmpeg(
        [*_raw_input_args(width, height, fps), *encode, *output, str(path)], frames.tobytes()
    )


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    """Looping GIF with one global palette; every frame is kept, even repeated ones."""
    if fps > GIF_MAX_FPS:
        warnings.warn(
            f"a GIF plays at most {GIF_MAX_FPS:g} fps in most viewers (shorter frame delays are "
            f"shown at 100 ms): writing {path.name} at {GIF_MAX_FPS:g} fps instead of {fps:g}",
            stacklevel=3,
        )
        fps = GIF_MAX_FPS
    height, width = frames.shape[1:3]
    output = ["-vf", _GIF_FILTER, "-loop", "0", "-f", "gif"]
    _run_ffmpeg([*_raw_input_args(width, height, fps), *output, str(path)], frames.tobytes())


def _write_folder(path: Path, frames: np.ndarray) -> None:
    """``0000.png``, ``0001.png``, ... in the (empty, staging) folder `path`."""
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(path / f"{index:04d}.png", format="PNG")


def video_kind(path: PathLike, where: str | None = None) -> str:
    """``"mp4"``, ``"gif"`` or ``"folder"`` (no suffix, or an existing folder) for an output
    path; another suffix raises `InputError`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if os.path.isdir(path):
        return "folder"
    if suffix == "":
        if os.path.lexists(path):
            raise InputError(f"'{path}' is a file, not a folder for the frames", where)
        return "folder"
    if suffix not in (".mp4", ".gif"):
        raise InputError(
            f"cannot write video '{path}': unknown format '{path.suffix}' "
            "(use .mp4, .gif or a folder)",
            where,
        )
    return suffix[1:]


def write_video(
    path: PathLike,
    frames: ArrayLike,
    fps: float,
    where: str | None = None,
    staging: Staging | None = None,
) -> None:
    """Write (F, 3, H, W) float frames in [0, 1] as a video, chosen by the suffix of `path`.

    - ``.mp4``: H.264 (libx264, crf `MP4_CRF`), yuv420p, BT.709. yuv420p needs even sizes,
      so an odd H or W is padded by edge replication: the decoded size is then H, W rounded
      up to even.
    - ``.gif``: loops forever, frame delay 1000 / fps ms (GIF delays have 10 ms steps; ffmpeg
      alternates them so the average rate is exact), one palette for the whole clip; above
      `GIF_MAX_FPS` the rate is clamped with a warning.
    - no suffix, or an existing directory: a folder of ``%04d.png``. An existing folder is
      written into: its other files stay (see `Staging.folder`).

    Another suffix raises `InputError`. The write is atomic in every case; with `staging` it
    is part of the caller's outputs, moved into place when the caller commits them.
    """
    path = Path(path)
    kind = video_kind(path, where)
    if not (fps > 0 and np.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps}")
    array = _frames_hwc_uint8(frames)
    with nullcontext(staging) if staging else staged_outputs() as outputs:
        if kind == "folder":
            _write_folder(outputs.folder(path), array)
        elif kind == "mp4":
            _write_mp4(outputs.file(path), array, fps)
        else:
            _write_gif(outputs.file(path), array, fps)


def _natural_key(name: str) -> list[int | str]:
    """Sort key that orders ``2.png`` before ``10.png``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_folder(path: Path, where: str | None) -> list[np.ndarray]:
    """Frames of a directory of images, in natural name order."""
    files = sorted(
        (f for f in path.iterdir() if f.suffix.lower() in FRAME_SUFFIXES and f.is_file()),
        key=lambda f: _natural_key(f.name),
    )
    if not files:
        raise InputError(f"cannot read video '{path}': folder has no image frames", where)
    return [_image_to_float(_open_image(f, "frame", where)) for f in files]


def _gif_delay_ms(frame: Image.Image) -> float:
    """A GIF frame's delay, with browsers' rule that delays under 20 ms mean 100 ms."""
    delay = frame.info.get("duration") or 0
    return float(delay) if delay >= 20 else 100.0


def _read_gif(path: Path, where: str | None) -> tuple[list[np.ndarray], float]:
    """Frames of a GIF (composited, transparency on black) and 1000 / mean delay as fps."""
    frames, delays = [], []
    with _opened(path, "video", where) as img:
        for frame in ImageSequence.Iterator(img):
            frames.append(_image_to_float(frame))
            delays.append(_gif_delay_ms(frame))
    return frames, 1000.0 * len(delays) / sum(delays)


def _read_ffmpeg(path: Path, where: str | None) -> tuple[list[np.ndarray], float]:
    """Frames and fps of any video ffmpeg can decode (converted to RGB)."""
    if not path.is_file():
        raise InputError(f"cannot read video '{path}': file not found", where)
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
        width, height = meta["size"]
        frames = [
            np.frombuffer(raw, np.uint8).reshape(height, width, 3).astype(np.float32) / 255.0
            for raw in reader
        ]
    except (OSError, RuntimeError, ValueError, StopIteration) as err:
        raise InputError(
            f"cannot read video '{path}': cannot decode ({_reason(err)})", where
        ) from err
    finally:
        reader.close()
    if not frames:
        raise InputError(f"cannot read video '{path}': no frames", where)
    return frames, float(meta.get("fps") or DEFAULT_FOLDER_FPS)


def read_video(
    path: PathLike, where: str | None = None, folder_fps: float = DEFAULT_FOLDER_FPS
) -> tuple[torch.Tensor, float]:
    """Read a video as ((F, 3, H, W) float32 frames in [0, 1], fps).

    A directory is read as a folder of ``.png``/``.jpg`` frames in natural name order (it
    stores no timing, so `folder_fps` is returned); ``.gif`` is read with PIL (fps from the mean
    frame delay); anything else (``.mp4``, ...) is decoded with ffmpeg. Unreadable input
    raises `InputError` naming the path.
    """
    path = Path(path)
    fps = folder_fps
    if path.is_dir():
        frames = _read_folder(path, where)
    elif path.suffix.lower() == ".gif":
        frames, fps = _read_gif(path, where)
    else:
        frames, fps = _read_ffmpeg(path, where)
    if len({frame.shape for frame in frames}) != 1:
        raise InputError(f"cannot read video '{path}': frames differ in size", where)
    stacked = np.stack(frames).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stacked, dtype=np.float32)), fps
