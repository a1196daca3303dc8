"""The reference image's augmentations for Animate124's textual inversion, in pure torch
(Animate124 §3.4; README, "Animate124": "heavy augmentation (rotation, crop, colour jitter,
grey, blur, flip)"; docs/architecture.md, "Conventions" and "The training loop").

Every random number is drawn from the ``torch.Generator`` passed in (the training loop's
per-micro-batch generator, `anima.training.step_generator`), so a batch is a function of the
step alone and a resumed run draws the same images. The settings (`AugmentSettings`) are the
release's (its ``--use_augmentations`` pipeline), expressed resolution-free:

1. the image is composited on white by its mask (when there is one) and its centre square is
   resized, antialiased, to 5/4 of the training side (the release's ``Resize`` +
   ``CenterCrop``), the *base* the geometric steps sample;
2. **rotation**, probability 0.75: uniform in +-10 degrees, white outside the image, then the
   central 2/3 of the side kept (the release's centre crop of 5/6 of the side from its 5/4);
3. **random resized crop**: area fraction U(0.85, 1.15) of the (rotated or not) image, aspect
   log-uniform in [3/4, 4/3], ten tries to fit inside it, else the whole image (torchvision's
   rule, with continuous positions), resized to the training side;
4. **colour jitter**, probability 0.75: brightness, contrast and saturation factors
   U(0.96, 1.04), hue shift U(-0.04, 0.04) of a turn, applied in a random order;
5. **grey**, probability 0.1 (ITU-R 601 luma in all three channels);
6. **Gaussian blur**, probability 0.1: a 5-tap kernel, sigma U(0.1, 2.0), reflected borders;
7. **horizontal flip**, probability 0.5.

Steps 2, 3 and 7 are one affine resampling of the base (`grid_sample`, bilinear, white
outside), so the image is interpolated once; flipping after the colour steps, as the release
does, gives the same image (they are the same at mirrored pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

#: ITU-R 601 luma weights (torchvision's ``rgb_to_grayscale``).
LUMA = (0.299, 0.587, 0.114)
#: The base is this many training sides wide (the release's ``Resize(5/4 size)``).
BASE_SCALE = 5.0 / 4.0


class AugmentSettings(BaseModel):
    """Probabilities and ranges of the augmentations (the release's; module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rotation_prob: float = Field(0.75, ge=0, le=1, description="Probability of a rotation.")
    rotation_degrees: float = Field(10.0, ge=0, le=180, description="Rotation range, +-degrees.")
    rotation_keep: float = Field(
        2.0 / 3.0, gt=0, le=1, description="Central fraction of the side kept after a rotation."
    )
    crop_scale: tuple[float, float] = Field(
        (0.85, 1.15), description="Area fraction range of the random resized crop."
    )
    crop_ratio: tuple[float, float] = Field(
        (3.0 / 4.0, 4.0 / 3.0), description="Aspect (width / height) range of the crop."
    )
    jitter_prob: float = Field(0.75, ge=0, le=1, description="Probability of colour jitter.")
    brightness: float = Field(0.04, ge=0, lt=1, description="Brightness factor range, 1 +-.")
    contrast: float = Field(0.04, ge=0, lt=1, description="Contrast factor range, 1 +-.")
    saturation: float = Field(0.04, ge=0, lt=1, description="Saturation factor range, 1 +-.")
    hue: float = Field(0.04, ge=0, le=0.5, description="Hue shift range, +- a turn's fraction.")
    grey_prob: float = Field(0.1, ge=0, le=1, description="Probability of grey.")
    blur_prob: float = Field(0.1, ge=0, le=1, description="Probability of a Gaussian blur.")
    blur_kernel: int = Field(5, ge=1, description="Blur kernel size (odd).")
    blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="Blur sigma range.")
    flip_prob: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip.")


@dataclass(frozen=True)
class AugmentDraw:
    """One image's random draws: ``angle`` (degrees, None: no rotation), the crop as
    fractions of the rotated image (``left``, ``top``, ``width``, ``height``), ``flip``, the
    colour ``jitter`` as ``(name, value)`` pairs in their order (empty: none), ``grey`` and
    ``sigma`` (None: no blur)."""

    angle: float | None
    crop: tuple[float, float, float, float]
    flip: bool
    jitter: tuple[tuple[str, float], ...]
    grey: bool
    sigma: float | None


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _chance(generator: torch.Generator, probability: float) -> bool:
    return bool(float(torch.rand((), generator=generator)) < probability)


def draw_crop(
    generator: torch.Generator, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[float, float, float, float]:
    """A random resized crop of a square image as fractions ``(left, top, width, height)``:
    torchvision's rule (ten tries of area and log-aspect, else the whole image) with
    continuous positions."""
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        area = _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, log_low, log_high))
        width, height = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if 0 < width <= 1 and 0 < height <= 1:
            left = _uniform(generator, 0.0, 1.0 - width)
            top = _uniform(generator, 0.0, 1.0 - height)
            return left, top, width, height
    return 0.0, 0.0, 1.0, 1.0


def draw(generator: torch.Generator, settings: AugmentSettings) -> AugmentDraw:
    """Every random choice of one augmented image, from ``generator`` in a fixed order."""
    angle = None
    if _chance(generator, settings.rotation_prob):
        angle = _uniform(generator, -settings.rotation_degrees, settings.rotation_degrees)
    crop = draw_crop(generator, settings.crop_scale, settings.crop_ratio)
    jitter: tuple[tuple[str, float], ...] = ()
    if _chance(generator, settings.jitter_prob):
        order = torch.randperm(4, generator=generator).tolist()
        ranges = {
            "brightness": (1 - settings.brightness, 1 + settings.brightness),
            "contrast": (1 - settings.contrast, 1 + settings.contrast),
            "saturation": (1 - settings.saturation, 1 + settings.saturation),
            "hue": (-settings.hue, settings.hue),
        }
        names = list(ranges)
        jitter = tuple((names[i], _uniform(generator, *ranges[names[i]])) for i in order)
    grey = _chance(generator, settings.grey_prob)
    sigma = None
    if _chance(generator, settings.blur_prob):
        sigma = _uniform(generator, *settings.blur_sigma)
    flip = _chance(generator, settings.flip_prob)
    return AugmentDraw(angle, crop, flip, jitter, grey, sigma)


# ------------------------------------------------------------------------------------------
# Pixels
# ------------------------------------------------------------------------------------------


def composite_on_white(image: Tensor, mask: Tensor | None) -> Tensor:
    """``image`` (3, H, W) in [0, 1] over white where ``mask`` (H, W; bool, or a float alpha
    in [0, 1]) is off: ``image * m + (1 - m)``. No mask: the image unchanged."""
    if mask is None:
        return image
    alpha = mask.to(image.dtype)[None]
    return image * alpha + (1.0 - alpha)


def centre_square(image: Tensor, side: int) -> Tensor:
    """The centre square of ``image`` (3, H, W) (its short side), resized to ``side``
    (bilinear, antialiased when shrinking)."""
    height, width = image.shape[-2:]
    short = min(height, width)
    top, left = (height - short) // 2, (width - short) // 2
    square = image[:, top : top + short, left : left + short]
    if short == side:
        return square.clone()
    resized = F.interpolate(
        square[None], size=(side, side), mode="bilinear", align_corners=False, antialias=True
    )
    return resized[0].clamp(0.0, 1.0)


def grey(image: Tensor) -> Tensor:
    """Luma (`LUMA`) of (..., 3, H, W) as (..., 1, H, W)."""
    weights = torch.tensor(LUMA, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * weights).sum(dim=-3, keepdim=True)


def rgb_to_hsv(image: Tensor) -> Tensor:
    """(3, H, W) RGB in [0, 1] to HSV, hue in [0, 1)."""
    r, g, b = image.unbind(0)
    high, _ = image.max(dim=0)
    low, _ = image.min(dim=0)
    delta = high - low
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    saturation = torch.where(high > 0, delta / torch.where(high > 0, high, 1.0), 0.0)
    hue_r = ((g - b) / safe) % 6.0
    hue_g = (b - r) / safe + 2.0
    hue_b = (r - g) / safe + 4.0
    hue = torch.where(high == r, hue_r, torch.where(high == g, hue_g, hue_b))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue)) % 1.0
    return torch.stack([hue, saturation, high])


def hsv_to_rgb(image: Tensor) -> Tensor:
    """(3, H, W) HSV (hue in [0, 1)) to RGB."""
    hue, saturation, value = image.unbind(0)
    sector = hue * 6.0
    k = torch.stack([(5.0 + sector) % 6.0, (3.0 + sector) % 6.0, (1.0 + sector) % 6.0])
    ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return value[None] - value[None] * saturation[None] * ramp


def adjust(image: Tensor, name: str, value: float) -> Tensor:
    """One colour-jitter step on (3, H, W) in [0, 1]: ``brightness``, ``contrast`` and
    ``saturation`` blend with black, the mean grey and the pixel's grey by factor ``value``;
    ``hue`` turns the hue by ``value`` of a turn. Clamped to [0, 1]."""
    if name == "brightness":
        out = image * value
    elif name == "contrast":
        mean = grey(image).mean()
        out = image * value + mean * (1.0 - value)
    elif name == "saturation":
        out = image * value + grey(image) * (1.0 - value)
    elif name == "hue":
        hsv = rgb_to_hsv(image)
        hsv = torch.stack([(hsv[0] + value) % 1.0, hsv[1], hsv[2]])
        out = hsv_to_rgb(hsv)
    else:
        raise ValueError(f"unknown colour adjustment {name!r}")
    return out.clamp(0.0, 1.0)


def gaussian_blur(image: Tensor, kernel: int, sigma: float) -> Tensor:
    """(3, H, W) blurred by a separable Gaussian of ``kernel`` taps, borders reflected."""
    if kernel % 2 == 0:
        raise ValueError(f"the blur kernel must be odd, got {kernel}")
    half = kernel // 2
    x = torch.arange(-half, half + 1, dtype=image.dtype, device=image.device)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    taps = taps / taps.sum()
    padded = F.pad(image[None], (half, half, half, half), mode="reflect")
    channels = image.shape[0]
    horizontal = taps.view(1, 1, 1, kernel).expand(channels, 1, 1, kernel)
    vertical = taps.view(1, 1, kernel, 1).expand(channels, 1, kernel, 1)
    out = F.conv2d(padded, horizontal, groups=channels)
    out = F.conv2d(out, vertical, groups=channels)
    return out[0]


def geometry_grid(choice: AugmentDraw, size: int, keep: float) -> Tensor:
    """The (1, size, size, 2) sampling grid of the rotation, crop and flip of ``choice`` in the
    base's normalised coordinates (``grid_sample``, ``align_corners=False``). ``keep``: the
    central fraction of the side a rotation keeps."""
    steps = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2.0 - 1.0
    v, u = torch.meshgrid(steps, steps, indexing="ij")
    if choice.flip:
        u = -u
    left, top, width, height = choice.crop
    # the crop, in the rotated image's coordinates ([-1, 1], its whole side)
    x = -1.0 + 2.0 * left + width * (u + 1.0)
    y = -1.0 + 2.0 * top + height * (v + 1.0)
    if choice.angle is not None:
        theta = math.radians(choice.angle)
        cos, sin = math.cos(theta), math.sin(theta)
        x, y = keep * x, keep * y
        # content turned counter-clockwise on screen (y down): sample the inverse rotation
        x, y = cos * x - sin * y, sin * x + cos * y
    return torch.stack([x, y], dim=-1)[None].float()


def apply(base: Tensor, choice: AugmentDraw, size: int, settings: AugmentSettings) -> Tensor:
    """``base`` (3, L, L) in [0, 1] augmented as ``choice`` says, at (3, size, size)."""
    grid = geometry_grid(choice, size, settings.rotation_keep).to(base.device, base.dtype)
    image = (
        F.grid_sample(
            base[None] - 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )[0]
        + 1.0
    )
    image = image.clamp(0.0, 1.0)
    for name, value in choice.jitter:
        image = adjust(image, name, value)
    if choice.grey:
        image = grey(image).expand(3, -1, -1).clone()
    if choice.sigma is not None:
        image = gaussian_blur(image, settings.blur_kernel, choice.sigma)
    return image


def base_image(image: Tensor, mask: Tensor | None, size: int, augment: bool = True) -> Tensor:
    """The base the augmentations sample (module docstring, step 1): ``image`` over white by
    ``mask``, its centre square at `BASE_SCALE` times ``size`` (``size`` without
    augmentations)."""
    side = round(size * BASE_SCALE) if augment else size
    return centre_square(composite_on_white(image, mask), side)


def augment(
    base: Tensor, size: int, generator: torch.Generator, settings: AugmentSettings
) -> Tensor:
    """One augmented (3, size, size) image of ``base`` (`base_image`), drawn from
    ``generator``."""
    return apply(base, draw(generator, settings), size, settings)


def augment_batch(
    base: Tensor, size: int, count: int, generator: torch.Generator, settings: AugmentSettings
) -> Tensor:
    """``count`` augmented images (count, 3, size, size), drawn one after another."""
    return torch.stack([augment(base, size, generator, settings) for _ in range(count)])


def flip_only(base: Tensor, generator: torch.Generator, flip_prob: float = 0.5) -> Tensor:
    """The release's path without augmentations: the image, flipped with ``flip_prob``."""
    return base.flip(-1) if _chance(generator, flip_prob) else base.clone()


__all__ = [
    "AugmentDraw",
    "AugmentSettings",
    "BASE_SCALE",
    "LUMA",
    "adjust",
    "apply",
    "augment",
    "augment_batch",
    "base_image",
    "centre_square",
    "composite_on_white",
    "draw",
    "draw_crop",
    "flip_only",
    "gaussian_blur",
    "geometry_grid",
    "grey",
    "hsv_to_rgb",
    "rgb_to_hsv",
]
