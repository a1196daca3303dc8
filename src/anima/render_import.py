"""Guidance renders from other tools, in I2V3D's render layout, and anima's render written in it.

I2V3D (§3.1) composes and animates the lifted scene in Blender and renders "RGB frames and depth
maps", plus the foreground and visibility masks its keyframe stage (§3.2.2) masks the feature
injection with. A spec's ``render`` folder brings such a render in: methods are then guided by it
instead of anima's own (`guidance_render`), and `write_render_folder` writes anima's render in
the same layout (the ``--dump`` does, under ``render/i2v3d/``), so a render can go to Blender or
another tool and come back. (docs/architecture.md, "Data flow": Render.)

Layout (the folder names the I2V3D release reads; accepted variants after them)::

    RENDER/ani/0001.png      RGB (also rgb/, images/, color/)
    RENDER/depth/0001.png    depth in the R channel, near is bright (any 8-bit scale)
    RENDER/fg_mask/0001.png  foreground: 255 = object (also foreground/, fg/)
    RENDER/mask/0001.png     visibility: 255 = visible, i.e. covered by the reconstruction
                             (also visible/, visibility/). Beware: in the release ``mask/`` is
                             the VISIBILITY mask, the foreground is ``fg_mask/``.
    RENDER/instance/0001.png optional (anima's addition): the object id of each pixel, 0 =
                             background; needed when the spec has several objects

A frame's number is the run of digits that ends its file name (``0001.png``, ``Image0001.png``);
``.png``, ``.jpg`` and ``.jpeg`` are read. Blender numbers frames from 1 (its default start
frame) with four digits, and `write_render_folder` does the same. Frames are taken in number
order from the lowest, the spec's ``num_frames`` of them; their numbers must follow each other
in every folder. All files have one size, with the aspect ratio of the spec's working size; the
render is resized to the size a method works at (RGB by area or bilinear, depth and masks by the
nearest pixel, `anima.scene.nearest_source_pixels`, as `anima.scene.Scene.resized` does).

Depth. The release reads the R channel of Blender's depth output (Z mapped linearly from 0-0.3
to 0-1 and inverted, near is bright) and min-max normalises it PER FRAME to 0-255
(README, "I2V3D"). That is all a file carries: each frame's depth up to its own unknown
affine map. It is read the same way (R channel, min-max per frame: n in [0, 1], 1 = nearest) and
mapped LINEARLY (Blender's mapping is linear in Z, not in disparity) onto the scene's distance
range: distance = far - n (far - near), with near and far the scene's nearest and farthest
distances (`guidance_render`). So each frame's nearest pixel lies at the scene's nearest
distance and its farthest at the scene's farthest: a relative distance, exact in order and in
ratios of depth differences within a frame, not in absolute scale across frames (an object
coming nearer does not make the frame's range wider). The alternative, keeping the normalised
values as they are, would not be a distance at all. A frame of one depth value has no order to
keep and is put at mid-range.

Every problem with the folder (missing, a channel folder or a frame missing, fewer frames than
``num_frames``, files of differing sizes or of another aspect ratio, unreadable images) is one
`InputError` naming ``render`` and the file.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from anima.animation import Animation
from anima.errors import InputError
from anima.io import (
    ASPECT_TOLERANCE,
    FRAME_SUFFIXES,
    read_image,
    staged_outputs,
    to_uint8,
    write_png,
)
from anima.mesh import scene_meshes
from anima.render import RenderFrame, RenderResult, render
from anima.scene import Scene, nearest_source_pixels
from anima.spec import MotionSpec

#: Each channel's folder names, the I2V3D release's first (`write_render_folder` writes those).
CHANNEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "rgb": ("ani", "rgb", "images", "color"),
    "depth": ("depth",),
    "foreground": ("fg_mask", "foreground", "fg"),
    "visible": ("mask", "visible", "visibility"),
}
#: anima's optional per-pixel object ids (8-bit, 0 = background).
INSTANCE_FOLDER = "instance"
#: Blender's default first frame: the first file `write_render_folder` writes is 0001.png.
FIRST_FRAME = 1
#: Masks are 255 = set; anything above this counts as set (anti-aliased or JPEG edges).
MASK_THRESHOLD = 127
#: Fallback distance range when no scene gives one.
DEFAULT_DISTANCE_RANGE = (1.0, 50.0)

_TRAILING_DIGITS = re.compile(r"(\d+)$")
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


@dataclass(frozen=True)
class RenderFolder:
    """A render folder's files, one list per channel in frame order, and their size (H, W)."""

    path: Path
    files: dict[str, list[Path]]  # channel (CHANNEL_FOLDERS, and "instance" if present) -> files
    size: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return len(self.files["rgb"])


# ---------------------------------------------------------------------------------------------
# Finding the files


def _fail(what: str, path: Path, where: str) -> InputError:
    return InputError(f"{what}: '{path}'", where)


def _channel_folder(root: Path, channel: str, where: str) -> Path:
    for name in CHANNEL_FOLDERS[channel]:
        if (root / name).is_dir():
            return root / name
    names = " or ".join(f"{name}/" for name in CHANNEL_FOLDERS[channel])
    raise _fail(f"the render folder has no {channel} frames ({names})", root, where)


def _numbered(folder: Path) -> dict[int, Path]:
    """The folder's image files by frame number (the digits that end the name)."""
    frames: dict[int, Path] = {}
    for file in sorted(folder.iterdir()):  # 0001.jpg before 0001.png, on every system
        match = _TRAILING_DIGITS.search(file.stem)
        if file.suffix.lower() in FRAME_SUFFIXES and match and file.is_file():
            frames.setdefault(int(match.group(1)), file)
    return frames


def _frame_files(folder: Path, numbers: Sequence[int], template: Path, where: str) -> list[Path]:
    found = _numbered(folder)
    for number in numbers:
        if number not in found:
            missing = folder / f"{number:0{len(_digits(template))}d}{template.suffix}"
            raise _fail("render frame missing", missing, where)
    return [found[number] for number in numbers]


def _digits(path: Path) -> str:
    match = _TRAILING_DIGITS.search(path.stem)
    return match.group(1) if match else ""


def _header_size(path: Path, where: str) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            width, height = img.size
    except _IMAGE_ERRORS as error:
        raise _fail(f"cannot read render frame ({_reason(error)})", path, where) from None
    return height, width


def _reason(error: BaseException) -> str:
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image file"
    if isinstance(error, Image.DecompressionBombError):
        return "image too large"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def scan_render_folder(path: Path, num_frames: int | None, where: str = "render") -> RenderFolder:
    """The first ``num_frames`` frames (None: as many as there are RGB frames) of each channel
    of the render folder ``path`` (module docstring), their sizes checked from the file
    headers: all equal. Nothing is decoded."""
    root = Path(path)
    if not root.is_dir():
        what = "render folder is a file" if root.exists() else "render folder not found"
        raise _fail(what, root, where)
    rgb_folder = _channel_folder(root, "rgb", where)
    numbered = _numbered(rgb_folder)
    if not numbered:
        raise _fail("the render folder has no RGB frames", rgb_folder, where)
    start = min(numbered)
    num_frames = len(numbered) if num_frames is None else num_frames
    numbers = list(range(start, start + num_frames))
    template = numbered[start]
    available = sum(1 for number in numbers if number in numbered)
    if available < num_frames:
        gap = next(number for number in numbers if number not in numbered)
        missing = rgb_folder / f"{gap:0{len(_digits(template))}d}{template.suffix}"
        raise _fail(
            f"render frame missing ({len(numbered)} frames from {start}, the spec has "
            f"num_frames {num_frames})",
            missing,
            where,
        )
    if len(numbered) > num_frames:
        warnings.warn(
            f"the render folder '{root}' has {len(numbered)} frames; the first {num_frames} "
            "(the spec's num_frames) are used",
            UserWarning,
            stacklevel=2,
        )
    files = {"rgb": [numbered[number] for number in numbers]}
    for channel in ("depth", "foreground", "visible"):
        folder = _channel_folder(root, channel, where)
        files[channel] = _frame_files(folder, numbers, template, where)
    if (root / INSTANCE_FOLDER).is_dir():
        files["instance"] = _frame_files(root / INSTANCE_FOLDER, numbers, template, where)
    first = files["rgb"][0]
    size = _header_size(first, where)
    for channel_files in files.values():
        for file in channel_files:
            found = _header_size(file, where)
            if found != size:
                raise _fail(
                    f"render frame is {found[1]}x{found[0]} pixels, but {first.name} in "
                    f"{first.parent.name}/ is {size[1]}x{size[0]}",
                    file,
                    where,
                )
    return RenderFolder(root, files, size)


def check_aspect(folder: RenderFolder, size: tuple[int, int], where: str = "render") -> None:
    """`InputError` unless the render has the aspect ratio of ``size`` (H, W): within
    `anima.io.ASPECT_TOLERANCE`, or a pixel of rounding on either side."""
    (h, w), (height, width) = folder.size, size
    close = abs((h / w) / (height / width) - 1.0) <= ASPECT_TOLERANCE
    rounding = (h - 1) / height <= (w + 1) / width and (w - 1) / width <= (h + 1) / height
    if not (close or rounding):
        raise _fail(
            f"render frames are {w}x{h} pixels, another aspect ratio than the {width}x{height} "
            "working size (they would be stretched onto it)",
            folder.files["rgb"][0],
            where,
        )


# ---------------------------------------------------------------------------------------------
# Decoding


def _decoded(path: Path, where: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except _IMAGE_ERRORS as error:
        raise _fail(f"cannot read render frame ({_reason(error)})", path, where) from None


def _grey(path: Path, where: str) -> np.ndarray:
    """(H, W) uint8: the R channel of an 8-bit image (grey images: the grey value), where the
    release reads depth (its masks are grey or R = G = B)."""
    img = _decoded(path, where)
    if img.mode not in _EIGHT_BIT_MODES:
        raise _fail(
            f"render {path.parent.name}/ frames must be 8-bit images, got mode {img.mode} "
            "(anima's own 16-bit distance PNGs are not this layout: its dump writes this "
            "layout under render/i2v3d/)",
            path,
            where,
        )
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"))
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))[..., 0])


def normalised_depth(depth: np.ndarray) -> np.ndarray:
    """A depth frame (H, W), near is bright, min-max normalised to [0, 1] float32 as the I2V3D
    release does per frame; a constant frame is 0.5 everywhere."""
    values = depth.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.full_like(values, 0.5)
    return (values - low) / (high - low)


def _nearest(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if values.shape[:2] == tuple(size):
        return values
    rows = nearest_source_pixels(values.shape[0], size[0]).numpy()
    cols = nearest_source_pixels(values.shape[1], size[1]).numpy()
    return values[rows][:, cols]


def _resized_rgb(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = size[0] <= image.shape[-2] and size[1] <= image.shape[-1]
    method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    values = image.permute(1, 2, 0).numpy()
    out = cv2.resize(values, (size[1], size[0]), interpolation=method)
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).clamp(0, 1)


def _frame(
    folder: RenderFolder,
    f: int,
    size: tuple[int, int],
    distance_range: tuple[float, float],
    object_ids: Sequence[int],
    where: str,
) -> RenderFrame:
    files = {channel: paths[f] for channel, paths in folder.files.items()}
    rgb = _resized_rgb(read_image(files["rgb"], where=where), size)
    near, far = distance_range
    depth = _nearest(normalised_depth(_grey(files["depth"], where)), size)
    distance = torch.from_numpy(np.ascontiguousarray(far - depth * (far - near)))
    foreground = _nearest(_grey(files["foreground"], where) > MASK_THRESHOLD, size)
    visible = _nearest(_grey(files["visible"], where) > MASK_THRESHOLD, size)
    if "instance" in files:
        ids = _nearest(_grey(files["instance"], where), size).astype(np.int64)
        unknown = sorted(set(np.unique(ids).tolist()) - {0, *object_ids})
        if unknown:
            raise _fail(
                f"render instance ids {unknown} are not objects of the spec ({list(object_ids)})",
                files["instance"],
                where,
            )
    elif len(object_ids) > 1 and foreground.any():
        raise _fail(
            f"the spec has {len(object_ids)} objects but the render only one foreground mask: "
            f"add {INSTANCE_FOLDER}/ frames (object id per pixel)",
            files["foreground"],
            where,
        )
    else:
        ids = np.where(foreground, object_ids[0] if object_ids else 0, 0).astype(np.int64)
    return RenderFrame(
        rgb=rgb.float(),
        distance=distance.float(),
        instance=torch.from_numpy(np.ascontiguousarray(ids)),
        visible=torch.from_numpy(np.ascontiguousarray(visible)),
    )


def read_render_folder(
    path: Path,
    size: tuple[int, int] | None,
    where: str = "render",
    *,
    num_frames: int | None = None,
    distance_range: tuple[float, float] = DEFAULT_DISTANCE_RANGE,
    object_ids: Sequence[int] = (1,),
    aspect_of: tuple[int, int] | None = None,
) -> RenderResult:
    """The render in the folder ``path`` (module docstring) as anima's `RenderResult` at
    ``size`` (H, W; None: the files' own size): the first ``num_frames`` frames (None: all the
    RGB frames from the first), distances on ``distance_range`` (near, far), foreground pixels
    labelled ``object_ids[0]`` (several objects need the ``instance/`` frames). The files must
    have the aspect ratio of ``aspect_of`` (default ``size``). Problems are `InputError`s
    naming ``where`` and the file."""
    folder = scan_render_folder(Path(path), num_frames, where)
    target = tuple(size) if size is not None else folder.size
    if aspect_of is not None or size is not None:
        check_aspect(folder, tuple(aspect_of or target), where)
    near, far = (float(v) for v in distance_range)
    if not 0 < near < far:
        raise ValueError(f"distance_range must be 0 < near < far, got {distance_range}")
    return RenderResult.stack(
        _frame(folder, f, target, (near, far), list(object_ids), where)
        for f in range(folder.num_frames)
    )


def check_render_folder(
    path: Path,
    num_frames: int,
    size: tuple[int, int],
    object_ids: Sequence[int] = (1,),
    where: str = "render",
) -> None:
    """Everything `read_render_folder` would find wrong with the folder, for the preflight:
    its files against ``num_frames``, the working ``size`` and the spec's ``object_ids``, every
    frame decoded and converted at the files' own size, one at a time."""
    folder = scan_render_folder(path, num_frames, where)
    check_aspect(folder, size, where)
    for f in range(folder.num_frames):
        _frame(folder, f, folder.size, DEFAULT_DISTANCE_RANGE, list(object_ids), where)


# ---------------------------------------------------------------------------------------------
# Writing


def depth_to_i2v3d(distance: torch.Tensor) -> np.ndarray:
    """(H, W) uint8: a frame's distances as the release's depth, min-max normalised over the
    frame and inverted (near = 255, far = 0); a frame of one distance is 128."""
    values = distance.double()
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.full(tuple(distance.shape), 128, np.uint8)
    return to_uint8(((high - values) / (high - low)).float())


class RenderFolderWriter:
    """Writes a render frame by frame into ``folder`` in the I2V3D layout (module docstring):
    ``ani/``, ``depth/`` (grey, so its R channel is the depth), ``fg_mask/``, ``mask/`` and
    anima's ``instance/``, frames numbered from `FIRST_FRAME` with four digits."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.index = 0

    def write(self, frame: RenderFrame) -> None:
        name = f"{self.index + FIRST_FRAME:04d}.png"
        folder = {channel: self.folder / names[0] for channel, names in CHANNEL_FOLDERS.items()}
        write_png(folder["rgb"] / name, frame.rgb.float())
        write_png(folder["depth"] / name, depth_to_i2v3d(frame.distance))
        write_png(folder["foreground"] / name, _mask_png(frame.instance > 0))
        write_png(folder["visible"] / name, _mask_png(frame.visible))
        instance = frame.instance.clamp(0, 255).to(torch.uint8).numpy()
        write_png(self.folder / INSTANCE_FOLDER / name, instance)
        self.index += 1


def _mask_png(mask: torch.Tensor) -> np.ndarray:
    return mask.numpy().astype(np.uint8) * 255


def write_render_folder(render: RenderResult, path: Path) -> None:
    """Write ``render`` into the folder ``path`` in the I2V3D layout (`RenderFolderWriter`),
    staged: the folder holds all of it or, on an error or interrupt, nothing new
    (`anima.io.staged_outputs`; an existing folder is written into)."""
    with staged_outputs() as outputs:
        writer = RenderFolderWriter(outputs.folder(Path(path)))
        for frame in render:
            writer.write(frame)


# ---------------------------------------------------------------------------------------------
# The guidance render of a spec


def scene_distance_range(scene: Scene) -> tuple[float, float]:
    """(near, far): the scene's nearest and farthest distances (far > near)."""
    near, far = float(scene.distance.min()), float(scene.distance.max())
    return near, max(far, near * 1.001)


def guidance_render(
    spec: MotionSpec, scene: Scene, animation: Animation, size: tuple[int, int]
) -> RenderResult:
    """The render a method is guided by, at ``size`` (H, W): the spec's ``render`` folder when
    it names one (checked against ``num_frames`` and the working size, distances on the scene's
    range), else anima's render of ``animation`` (both at the scene's size) seen at ``size``,
    objects with a ``mesh`` drawn from it (`anima.mesh`)."""
    if spec.render is None:
        meshes = scene_meshes(spec, scene)
        return render(scene.resized(size), animation.resized(size), meshes=meshes)
    try:
        return read_render_folder(
            spec.resolve(spec.render),
            size,
            "render",
            num_frames=spec.num_frames,
            distance_range=scene_distance_range(scene),
            object_ids=[obj.id for obj in spec.objects],
            aspect_of=scene.size,
        )
    except InputError as exc:
        raise exc.in_spec(spec.where) from None
