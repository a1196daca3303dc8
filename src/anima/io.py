"""Reading and writing images, masks, depth maps and videos.

Conventions: images are float32 tensors in [0, 1] shaped (3, H, W), videos are (F, 3, H, W),
sizes are (H, W). uint8 / uint16 only appear at the file boundary. Problems with user-supplied
files raise `InputError` naming the file; programming errors (wrong shapes) raise `ValueError`.
Everything written goes through `staged_outputs` (`atomic_path` is one staged file;
`atomic_dir` replaces a folder anima owns), so a failed or interrupted write never leaves a
half-written file (or a stray temporary) behind, and a folder the user already had is written
into, never replaced. Videos are written frame by frame (`VideoWriter`), so that memory does not
grow with the number of frames.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO

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

_GIF_PALETTE = "palettegen=stats_mode=full"
_GIF_DITHER = "paletteuse=dither=bayer:bayer_scale=4:diff_mode=rectangle"
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
    values = _to_numpy(image).astype(np.float32)  # a copy: the steps below work in place
    values *= 255.0
    np.rint(values, out=values)
    np.fmax(values, 0.0, out=values)  # fmax, unlike clip, takes 0 over NaN
    np.fmin(values, 255.0, out=values)
    return values.astype(np.uint8)


_CONVERT_BAND = 1 << 18
"""`_frame_hwc_uint8` converts a float frame this many values at a time (a band of rows), so
that its float scratch is about a megabyte whatever the frame's size (a 12-megapixel frame is
144 MB of float32)."""


def _frame_hwc_uint8(frame: ArrayLike) -> np.ndarray:
    """One video frame as a contiguous (H, W, 3) uint8 array.

    `frame` is (3, H, W) float in [0, 1] (converted by `to_uint8`, a band of rows at a time) or
    (H, W, 3) uint8 (taken as is); anything else raises ValueError.
    """
    array = _to_numpy(frame)
    if array.dtype == np.uint8:
        if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
            raise ValueError(f"a uint8 frame must be shaped (H, W, 3), got {tuple(array.shape)}")
        return np.ascontiguousarray(array)
    if array.ndim != 3 or array.shape[0] != 3 or 0 in array.shape:
        raise ValueError(
            "a frame must be (3, H, W) float in [0, 1] or (H, W, 3) uint8, "
            f"got shape {tuple(array.shape)} dtype {array.dtype}"
        )
    height, width = array.shape[1:]
    image = np.empty((height, width, 3), np.uint8)
    rows = max(1, _CONVERT_BAND // (3 * width))
    for top in range(0, height, rows):
        image[top : top + rows] = to_uint8(array[:, top : top + rows]).transpose(1, 2, 0)
    return image


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


class _Ffmpeg:
    """The bundled ffmpeg, running, its input written to its stdin as it comes.

    Its log goes to an anonymous temporary file, not a pipe: nobody reads a pipe while frames
    are written, and a full one would stall ffmpeg, and so the writer. As a context manager, a
    normal exit closes the input and waits for ffmpeg; an exception kills it and waits, so that
    nothing writes the output once its temporary is removed.
    """

    def __init__(self, cmd: list[str]) -> None:
        self._log = tempfile.TemporaryFile()
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            with signals_deferred():  # a signal must not leave a started ffmpeg unknown
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log
                )
        except BaseException:
            self.kill()
            raise

    def _input(self) -> IO[bytes]:
        if self._proc is None or self._proc.stdin is None:
            raise RuntimeError("ffmpeg is not running")
        return self._proc.stdin

    def write(self, data: bytes | memoryview) -> None:
        """Give ffmpeg more input; a RuntimeError with its log when it has died."""
        try:
            self._input().write(data)
        except BrokenPipeError:
            raise self._failure() from None

    def finish(self) -> None:
        """Close the input and wait for ffmpeg; a RuntimeError with its log when it failed."""
        try:
            self._input().close()
        except BrokenPipeError:
            raise self._failure() from None
        if self._proc is not None and self._proc.wait() != 0:
            raise self._failure()
        self._log.close()

    def _failure(self) -> RuntimeError:
        """``ffmpeg failed (<exit status>): <log>``, once ffmpeg has ended."""
        returncode = self._stop(kill=False)
        self._log.seek(0)
        message = self._log.read().decode(errors="replace").strip()
        self._log.close()
        return RuntimeError(f"ffmpeg failed ({returncode}): {message or 'it stopped reading'}")

    def _stop(self, kill: bool) -> int | None:
        """Close the input (dropping what it still buffers), kill ffmpeg if asked, and wait for
        it; returns its exit status."""
        if self._proc is None:
            return None
        if kill:
            self._proc.kill()
        with suppress(OSError):
            self._input().close()
        return self._proc.wait()

    def kill(self) -> None:
        """Stop ffmpeg if it still runs, wait for it, and drop its log."""
        self._stop(kill=True)
        self._log.close()

    def __enter__(self) -> _Ffmpeg:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.finish()
        else:
            self.kill()


def _run_ffmpeg(args: list[str], stdin: bytes | memoryview) -> _Ffmpeg:
    """Start the bundled ffmpeg with `args` and write `stdin` to it (b"" when it reads files).

    Use the result as a context manager: `_Ffmpeg.write` gives more input, and the block's end
    waits for ffmpeg, raising ``RuntimeError("ffmpeg failed (<rc>): <log>")`` when it fails.
    """
    import imageio_ffmpeg  # here, not at the top: reading and writing images never needs it

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *args]
    ffmpeg = _Ffmpeg(cmd)
    try:
        ffmpeg.write(stdin)
    except BaseException:
        ffmpeg.kill()
        raise
    return ffmpeg


def _raw_input_args(width: int, height: int, fps: float, source: str = "-") -> list[str]:
    """ffmpeg arguments that read rgb24 frames at `fps` from `source` (stdin by default)."""
    rate = str(Fraction(fps).limit_denominator(1001))
    size = f"{width}x{height}"
    return ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", size, "-r", rate, "-i", source]


def _pad_to_even(image: np.ndarray) -> np.ndarray:
    """Pad an (H, W, 3) frame by edge replication so H and W are even (yuv420p needs it)."""
    pad_h, pad_w = image.shape[0] % 2, image.shape[1] % 2
    if not (pad_h or pad_w):
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


GIF_MAX_FPS = 50.0
"""GIF delays are whole hundredths of a second, and most viewers play a delay under 20 ms at
100 ms: a GIF faster than 50 fps is written at 50 fps (with a warning)."""


def _mp4_args(path: Path, width: int, height: int, fps: float) -> list[str]:
    """ffmpeg arguments for H.264 / yuv420p MP4 (BT.709, tagged) from rgb24 frames on stdin."""
    encode = ["-c:v", "libx264", "-preset", "medium", "-crf", str(MP4_CRF)]
    output = ["-vf", _MP4_FILTER, "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4"]
    return [*_raw_input_args(width, height, fps), "-an", *encode, *output, str(path)]


def _encode_gif(frames: Path, path: Path, size: tuple[int, int], fps: float) -> None:
    """Encode the raw rgb24 file `frames` of (H, W) `size` as a looping GIF at `path`.

    One palette for the whole clip: ffmpeg reads the frames twice, palettegen into a temporary
    palette PNG, then paletteuse with it. This gives the same GIF, byte for byte, as one pass
    with ``split``, which holds every frame in ffmpeg's memory until the palette is known.
    Every frame is kept, even repeated ones.
    """
    height, width = size
    source = _raw_input_args(width, height, fps, str(frames))
    palette = _temp_sibling(path, "palette", ".png")
    make_palette = ["-an", "-vf", _GIF_PALETTE, "-frames:v", "1", "-update", "1", str(palette)]
    use_palette = ["-i", str(palette), "-an", "-lavfi", f"[0:v][1:v]{_GIF_DITHER}"]
    gif = ["-loop", "0", "-f", "gif", str(path)]
    passes = [[*source, *make_palette], [*source, *use_palette, *gif]]
    try:
        for args in passes:
            with _run_ffmpeg(args, b""):
                pass  # ffmpeg reads files; the block's end waits for it
    finally:
        _remove(palette)


class _GifFrames:
    """A GIF's frames on their way: appended to a raw rgb24 file next to the GIF's temporary
    (a palette for the whole clip needs every frame before the first can be encoded) and
    encoded by `_encode_gif` when the block ends normally. The raw file is removed either way.
    """

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        self._path, self._size, self._fps = path, size, fps
        self._raw = _temp_sibling(path, "frames", ".rgb")
        self._file = self._raw.open("xb")

    def write(self, image: np.ndarray) -> None:
        self._file.write(image.data)

    def __enter__(self) -> _GifFrames:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self._file.close()
            if exc is None:
                _encode_gif(self._raw, self._path, self._size, self._fps)
        finally:
            _remove(self._raw)


class _PngFrames:
    """``0000.png``, ``0001.png``, ... saved into the (staging) folder as frames come."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._count = 0

    def write(self, image: np.ndarray) -> None:
        Image.fromarray(image).save(self._folder / f"{self._count:04d}.png", format="PNG")
        self._count += 1


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


class VideoWriter:
    """Writes a video frame by frame, so that memory does not grow with the number of frames.

    A 12-megapixel photo animated over 128 frames is gigabytes as one clip (issue "Photos as
    people take them"): the writer holds one frame at a time, whatever the clip's length. The
    format is chosen by `video_kind`, and the file is the one `write_video` writes:

    - ``.mp4``: ffmpeg (libx264, crf `MP4_CRF`, yuv420p, BT.709) starts at the first frame,
      and each frame is piped to it as it comes, an odd H or W padded to even by edge
      replication.
    - ``.gif``: one palette for the whole clip needs every frame before the first can be
      encoded, so the frames go to a temporary raw file next to the GIF's temporary, and at the
      end ffmpeg reads that file twice (palettegen, then paletteuse): disk, not memory, holds
      the clip (H * W * 3 bytes a frame). Above `GIF_MAX_FPS` the rate is clamped with a
      warning.
    - a folder: each frame saved as ``%04d.png`` as it comes (an existing folder is written
      into, see `Staging.folder`).

    Use it as a context manager. The size is the first frame's; a frame of another size raises
    ValueError, and so does leaving the block with no frame written. The output is staged: in
    the caller's `staging` (the caller commits it), else in the writer's own `staged_outputs`,
    committed when the block ends normally. An exception, an `anima.interrupts.Interrupted`
    included, kills ffmpeg, waits for it and leaves nothing behind.
    """

    def __init__(
        self,
        path: PathLike,
        fps: float,
        where: str | None = None,
        staging: Staging | None = None,
    ) -> None:
        self.path = Path(path)
        self.kind = video_kind(self.path, where)
        if not (fps > 0 and np.isfinite(fps)):
            raise ValueError(f"fps must be a positive number, got {fps}")
        if self.kind == "gif" and fps > GIF_MAX_FPS:
            warnings.warn(
                f"a GIF plays at most {GIF_MAX_FPS:g} fps in most viewers (shorter frame delays "
                f"are shown at 100 ms): writing {self.path.name} at {GIF_MAX_FPS:g} fps instead "
                f"of {fps:g}",
                stacklevel=2,
            )
            fps = GIF_MAX_FPS
        self.fps = fps
        self._staging = staging
        self._stack = ExitStack()
        self._outputs: Staging | None = None
        self._put: Callable[[np.ndarray], None] | None = None
        self._size: tuple[int, ...] = ()
        self._count = 0

    @property
    def frames_written(self) -> int:
        """The frames written so far."""
        return self._count

    def __enter__(self) -> VideoWriter:
        if self._staging is None:
            self._outputs = self._stack.enter_context(staged_outputs())
        else:
            self._outputs = self._staging
        return self

    def write(self, frame: ArrayLike) -> None:
        """Add one frame: (3, H, W) float in [0, 1] or (H, W, 3) uint8, a tensor or an array."""
        if self._outputs is None:
            raise RuntimeError("VideoWriter.write outside its with block")
        image = _frame_hwc_uint8(frame)
        if self._put is None:
            self._put = self._start(self._outputs, image)
        elif image.shape[:2] != self._size:
            (height, width), (first_h, first_w) = image.shape[:2], self._size
            raise ValueError(
                f"frame {self._count} of '{self.path}' is {width}x{height} pixels, "
                f"the first was {first_w}x{first_h}"
            )
        else:
            self._put(image)
        self._count += 1

    def _start(self, outputs: Staging, image: np.ndarray) -> Callable[[np.ndarray], None]:
        """Stage the output for frames of `image`'s size and write `image` to it; returns how
        the frames that follow are written."""
        self._size = image.shape[:2]
        if self.kind == "mp4":
            padded = _pad_to_even(image)
            height, width = padded.shape[:2]
            args = _mp4_args(outputs.file(self.path), width, height, self.fps)
            ffmpeg = self._stack.enter_context(_run_ffmpeg(args, padded.data))
            return lambda image: ffmpeg.write(_pad_to_even(image).data)
        if self.kind == "gif":
            size = (image.shape[0], image.shape[1])
            gif = _GifFrames(outputs.file(self.path), size, self.fps)
            put = self._stack.enter_context(gif).write
        else:
            put = _PngFrames(outputs.folder(self.path)).write
        put(image)
        return put

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        self._outputs = None
        if exc is None and self._count == 0:
            with self._stack:
                raise ValueError(f"no frames were written to '{self.path}'")
        return self._stack.__exit__(exc_type, exc, tb)


def write_video(
    path: PathLike,
    frames: ArrayLike | Iterable[ArrayLike],
    fps: float,
    where: str | None = None,
    staging: Staging | None = None,
) -> None:
    """Write frames in [0, 1] as a video, chosen by the suffix of `path`.

    `frames` is an (F, 3, H, W) float tensor or array, or any iterable of frames
    (`VideoWriter.write` says which): they go to a `VideoWriter` one at a time, so a generator
    that makes each frame as it is written never needs the whole clip in memory.

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
    writer = VideoWriter(path, fps, where, staging)
    if isinstance(frames, (torch.Tensor, np.ndarray)) and (frames.ndim != 4 or len(frames) == 0):
        raise ValueError(f"frames must be shaped (F>0, 3, H, W), got {tuple(frames.shape)}")
    with writer:
        for frame in frames:
            writer.write(frame)


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
