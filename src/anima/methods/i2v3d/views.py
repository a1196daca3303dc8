"""The augmented views of I2V3D's LoRA customisation (I2V3D §3.2.1, Eq. 1): novel views of the
foreground object, each with its mask.

The paper trains the LoRA on the input image plus, every step, one random novel view of the
object (InstantMesh's, in the release), whose loss counts only inside the object's mask M. Two
sources:

- **A folder** (`read_view_folder`), e.g. InstantMesh's six views. Accepted layout, one view a
  file (``.png``, ``.jpg``, ``.jpeg``, ``.webp``; sorted by name):

  - ``NAME.png`` with ``NAME_mask.png`` beside it (nonzero mask pixels are the object; the
    mask may be another resolution of the same aspect ratio), or
  - an RGBA ``NAME.png`` whose alpha is the mask (soft: alpha in [0, 1] weights the loss).

  An image with neither, a mask without its image, or an empty folder is an `InputError`.
- **``auto``** (`render_views`): weight-free views made by anima's renderer (`anima.render`,
  docs/architecture.md, "Data flow"): the object turned about its vertical axis (the camera's
  y axis through the object's centre, `anima.animation`'s rotation keyframes) by ``AUTO_ANGLES``
  degrees, each mask the render's instance map of the object (what another object hides in
  front of it is not the object's). An object with a mesh (``objects[i].mesh``) is rendered
  from it; without one, its pixels turn as a relief of their depth.

Every view is composited over white with its mask (`composite`) at its own resolution and again
at the training one, so pixels outside the mask never reach the VAE: they cannot change the
loss or its gradient (Eq. 1's M), and the background the model sees behind the object is the
plain white of InstantMesh's views. Views are resized (aspect kept) so their short side is the
training resolution, sides multiples of 8, and neither cropped nor flipped (the release's
augmentation is the input image's only).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.nn import functional as F

from anima.animation import build_animation
from anima.errors import InputError
from anima.io import has_transparent_pixels, read_image, read_mask
from anima.mesh import scene_meshes
from anima.render import Renderer
from anima.scene import Scene
from anima.spec import Keyframe, MotionSpec

#: Image files a views folder may hold.
VIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: ``NAME<MASK_SUFFIX>.png`` is the mask of ``NAME.<ext>``.
MASK_SUFFIX = "_mask"
#: Degrees the object is turned for ``auto`` views (about the vertical axis).
AUTO_ANGLES: tuple[float, ...] = (-45.0, -30.0, -15.0, 15.0, 30.0, 45.0)
#: Colour behind the object in every view.
BACKGROUND = 1.0


@dataclass
class View:
    """One augmented view: ``image`` (3, H, W) in [0, 1], composited over white with ``mask``
    (H, W) float in [0, 1] (1 = the object); ``name`` says where it came from."""

    image: Tensor
    mask: Tensor
    name: str

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])


def composite(image: Tensor, mask: Tensor, background: float = BACKGROUND) -> Tensor:
    """``image * mask + background * (1 - mask)`` (``mask`` broadcast over channels): where the
    mask is 0 the result does not depend on ``image``."""
    mask = mask.to(image.dtype)
    if mask.dim() == image.dim() - 1:
        mask = mask.unsqueeze(-3)
    return torch.where(mask > 0, image * mask + background * (1.0 - mask), background)


def short_side_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(H, W) scaled (aspect kept) so the shorter side is ``short_side``, sides rounded to
    multiples of 8 (at least 8)."""
    scale = short_side / min(size)
    return tuple(max(8, round(side * scale / 8) * 8) for side in size)  # type: ignore[return-value]


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(C, H, W) resized to ``size`` (antialiased bilinear; the same size is returned as is)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    resized = F.interpolate(
        image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].clamp(0.0, 1.0)


def resized_view(view: View, short_side: int) -> View:
    """``view`` at the training resolution (`short_side_size`), composited again there."""
    size = short_side_size(view.size, short_side)
    mask = resize_image(view.mask[None], size)[0]
    return View(composite(resize_image(view.image, size), mask), mask, view.name)


def latent_mask(mask: Tensor, latent_size: tuple[int, int]) -> Tensor:
    """A (..., H, W) mask at latent size: each latent pixel's share of object pixels (area
    average), the M of Eq. 1."""
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    pooled = F.interpolate(flat, size=latent_size, mode="area")
    return pooled.reshape(*mask.shape[:-2], *latent_size)


def views_digest(views: list[View]) -> str:
    """SHA-256 of the views' pixels and masks (a LoRA's record names the views it saw)."""
    digest = hashlib.sha256()
    for view in views:
        for tensor in (view.image, view.mask):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.float().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------
# A folder of views
# ------------------------------------------------------------------------------------------


def _alpha(path: Path) -> Tensor:
    """The alpha channel of an image file as (H, W) float in [0, 1] (EXIF orientation
    applied, as `anima.io.read_image` applies it)."""
    with Image.open(path) as img:
        img.load()
        upright = ImageOps.exif_transpose(img)
        alpha = np.asarray(upright.convert("RGBA"))[..., 3].astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(alpha))


def _mask_for(image: Path) -> Path | None:
    for suffix in VIEW_SUFFIXES:
        candidate = image.with_name(f"{image.stem}{MASK_SUFFIX}{suffix}")
        if candidate.is_file():
            return candidate
    return None


def read_view(image_path: Path) -> View:
    """One view of a folder (see the module docstring for the layout)."""
    where = str(image_path)
    mask_path = _mask_for(image_path)
    if mask_path is not None:
        image = read_image(image_path, where=where)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        mask = read_mask(mask_path, size=size, where=str(mask_path)).float()
    elif has_transparent_pixels(image_path):
        image = read_image(image_path, where=where)  # premultiplied: composited on black
        mask = _alpha(image_path)
        if not bool((mask > 0).any()):
            raise InputError("the view's alpha (its mask) is empty", where)
        image = image + BACKGROUND * (1.0 - mask)  # over white instead
    else:
        raise InputError(
            f"the view has no mask (add {image_path.stem}{MASK_SUFFIX}.png, or give it an alpha "
            "channel)",
            where,
        )
    return View(composite(image, mask), mask, image_path.name)


def read_view_folder(folder: Path, where: str = "--views") -> list[View]:
    """Every view of ``folder`` with its mask, sorted by file name (module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"views folder not found: {folder}", where)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIEW_SUFFIXES)
    masks = [p for p in files if p.stem.endswith(MASK_SUFFIX)]
    images = [p for p in files if not p.stem.endswith(MASK_SUFFIX)]
    if not images:
        raise InputError(
            f"no view images ({', '.join(VIEW_SUFFIXES)}) in the views folder", str(folder)
        )
    stems = {p.stem for p in images}
    for mask in masks:
        if mask.stem.removesuffix(MASK_SUFFIX) not in stems:
            raise InputError("a mask without its view image", str(mask))
    return [read_view(p) for p in images]


# ------------------------------------------------------------------------------------------
# Views rendered by anima (``auto``)
# ------------------------------------------------------------------------------------------


def turned_spec(
    spec: MotionSpec, scene: Scene, object_id: int, angles: tuple[float, ...]
) -> MotionSpec:
    """A spec of ``1 + len(angles)`` frames in which object ``object_id`` stays in place and
    turns about its vertical axis: frame 0 as the photo, frame ``k`` turned by ``angles[k-1]``
    degrees (keyframes at the frames' times, so the interpolation passes through them); every
    other object stays still, the camera too."""
    mask = scene.mask(object_id)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    x, y = float(xs.double().mean()), float(ys.double().mean())
    depth = float(scene.distance[mask].double().median())
    count = len(angles) + 1
    keyframes = [
        Keyframe(t=k / (count - 1), x=x, y=y, depth=depth, rotation=(0.0, float(a), 0.0))
        for k, a in enumerate((0.0, *angles))
    ]
    objects = [
        obj.model_copy(update={"trajectory": keyframes if obj.id == object_id else []})
        for obj in spec.objects
    ]
    return spec.model_copy(update={"objects": objects, "num_frames": count, "camera": None})


def render_views(
    spec: MotionSpec,
    scene: Scene,
    object_id: int,
    short_side: int,
    angles: tuple[float, ...] = AUTO_ANGLES,
) -> list[View]:
    """``auto`` views: ``scene`` (`anima.scene.Scene` of ``spec``) rendered with the object
    turned by each of ``angles`` (`turned_spec`), at the training resolution; each view's mask
    is the render's instance map of the object, its image the render composited over white.
    An object with a 3D model (``objects[i].mesh``, `anima.mesh`; e.g. InstantMesh's, as in
    I2V3D §3.1) is drawn from its model, so its turned views show its sides."""
    if object_id not in scene.object_ids or not bool(scene.mask(object_id).any()):
        raise InputError(f"object {object_id} has no pixels in the scene", "--object-id")
    animation = build_animation(turned_spec(spec, scene, object_id, angles), scene)
    size = short_side_size(scene.size, short_side)
    meshes = scene_meshes(spec, scene)
    renderer = Renderer(scene.resized(size), animation.resized(size), meshes=meshes or None)
    views = []
    for k, angle in enumerate(angles, start=1):
        frame = renderer.frame(k)
        mask = (frame.instance == object_id).float()
        if not bool(mask.any()):
            raise InputError(f"the object turned by {angle:g} degrees is hidden", "--views auto")
        views.append(View(composite(frame.rgb, mask), mask, f"auto {angle:+g} deg"))
    return views
