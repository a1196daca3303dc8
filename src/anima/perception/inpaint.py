"""Inpainting the background plate: what a moved object or a camera move uncovers.

I2V3D (§3.1) removes the foreground object from the photo with "SDXL inpainting" to get a
complete, clean background before reconstructing it. anima's plate (`anima.render.
background_plate`, computed once per scene) does the same with a diffusers inpainting pipeline
when the weights directory has an ``inpaint/`` folder (`anima.weights.INPAINT`: Stable Diffusion
1.5 inpainting, `StableDiffusionInpaintPipeline`, or SDXL inpainting,
`StableDiffusionXLInpaintPipeline`, chosen by the ``_class_name`` of its ``model_index.json``),
and with OpenCV's Telea inpainting otherwise (Telea, "An Image Inpainting Technique Based on the
Fast Marching Method", J. Graphics Tools 2004).

An inpainter is a function ``(image (3, H, W) float in [0, 1], region (H, W) bool) -> image``
whose pixels outside ``region`` are the input's, bit for bit: only the inpainted region changes.
The diffusion inpainter works on a crop around the region (the region's box grown by
`CONTEXT` of its size on each side, so the model sees the surroundings it continues) resized to
the model's native resolution, and pastes the result back inside the region only.

The pipeline is loaded once (the last one is kept) and only when a plate needs it; a run makes
it the plate's inpainter with `plate_inpainting` (`anima.pipeline.animate` does, for
``method.prepare``), so that `background_plate` needs no weights argument.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from anima.errors import InputError
from anima.weights import INPAINT, Weights

Inpainter = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: diffusers pipelines the ``inpaint/`` folder may hold (its model_index.json's ``_class_name``).
PIPELINE_CLASSES = ("StableDiffusionInpaintPipeline", "StableDiffusionXLInpaintPipeline")
#: The crop around the region grows by this fraction of the region's box on each side.
CONTEXT = 0.5
#: Smallest growth of the crop, in photo pixels.
MIN_CONTEXT = 16
# Object removal, not object replacement: our prompts (not from the paper, which gives none).
REMOVAL_PROMPT = "empty background, seamless continuation of the scene"
REMOVAL_NEGATIVE_PROMPT = "object, person, animal, text, watermark, blurry"

_ACTIVE: ContextVar[Inpainter | None] = ContextVar("anima_plate_inpainter", default=None)


def opencv_inpaint(image: torch.Tensor, region: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """OpenCV Telea inpainting of ``region`` in 8-bit colour; outside it, ``image`` as is."""
    rgb8 = (image.permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    mask = region.numpy().astype(np.uint8)
    filled = cv2.inpaint(rgb8, mask, radius, cv2.INPAINT_TELEA)
    filled_rgb = torch.from_numpy(filled).permute(2, 0, 1).to(image.dtype) / 255
    return torch.where(region, filled_rgb, image)


def _crop_box(region: torch.Tensor) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the region's bounding box grown by `CONTEXT`, inside the image."""
    ys, xs = torch.nonzero(region, as_tuple=True)
    height, width = region.shape
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    grow_y = max(MIN_CONTEXT, round(CONTEXT * (y1 - y0)))
    grow_x = max(MIN_CONTEXT, round(CONTEXT * (x1 - x0)))
    return (
        max(0, y0 - grow_y),
        min(height, y1 + grow_y),
        max(0, x0 - grow_x),
        min(width, x1 + grow_x),
    )


def model_size(size: tuple[int, int], resolution: int, multiple: int = 8) -> tuple[int, int]:
    """The crop's size (H, W) scaled so its longest side is ``resolution``, sides rounded to
    multiples of ``multiple`` (the VAE's factor), at least one multiple."""
    scale = resolution / max(size)
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in size)  # type: ignore[return-value]


class DiffusionInpainter:
    """A diffusers inpainting pipeline as an `Inpainter` (module docstring): deterministic
    (seeded CPU generator), run on a crop at the model's native resolution (the UNet's sample
    size times the VAE's factor: 512 for SD1.5, 1024 for SDXL), composited inside the region."""

    def __init__(
        self,
        pipeline: Any,
        *,
        prompt: str = REMOVAL_PROMPT,
        negative_prompt: str = REMOVAL_NEGATIVE_PROMPT,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int = 0,
    ) -> None:
        self.pipeline = pipeline
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed

    @property
    def resolution(self) -> int:
        factor = int(self.pipeline.vae_scale_factor)
        return int(self.pipeline.unet.config.sample_size) * factor

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        if not bool(region.any()):
            return image.clone()
        y0, y1, x0, x1 = _crop_box(region)
        crop, mask = image[:, y0:y1, x0:x1].float(), region[y0:y1, x0:x1]
        height, width = model_size((y1 - y0, x1 - x0), self.resolution)
        pipe = self.pipeline
        device, dtype = pipe.unet.device, pipe.unet.dtype
        crop_in = F.interpolate(crop[None], (height, width), mode="bilinear", antialias=True)
        # Area coverage > 0: a pixel partly in the region is inpainted (the mask never shrinks).
        mask_in = F.interpolate(mask[None, None].float(), (height, width), mode="area") > 0
        generated = pipe(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            image=crop_in.to(device, dtype),
            mask_image=mask_in.to(device, dtype),
            height=height,
            width=width,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(self.seed),
            output_type="pt",
        ).images
        back = F.interpolate(generated.float().cpu(), (y1 - y0, x1 - x0), mode="bilinear")
        out = image.clone()
        patch = back[0].clamp(0, 1).to(image.dtype)
        out[:, y0:y1, x0:x1] = torch.where(mask, patch, image[:, y0:y1, x0:x1])
        return out


def load_inpaint_pipeline(
    folder: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
) -> Any:
    """The inpainting pipeline in ``folder`` (diffusers layout), of the class its
    ``model_index.json`` names (`PIPELINE_CLASSES`), offline, safetensors unless
    ``allow_pickle``. Problems are `InputError`s naming the folder."""
    import diffusers

    where = f"in {folder}"
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"inpaint: cannot read model_index.json ({error})", where) from None
    name = index.get("_class_name") if isinstance(index, dict) else None
    if name not in PIPELINE_CLASSES:
        raise InputError(
            f"inpaint: model_index.json names {name!r}, expected {' or '.join(PIPELINE_CLASSES)}",
            where,
        )
    try:
        pipeline = getattr(diffusers, name).from_pretrained(
            folder,
            local_files_only=True,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise InputError(f"inpaint: cannot load the pipeline ({reason})", where) from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device=torch.device(device), dtype=dtype)


@functools.lru_cache(maxsize=1)
def _cached_pipeline(folder: str, device: str, dtype: torch.dtype, allow_pickle: bool) -> Any:
    return load_inpaint_pipeline(Path(folder), device, dtype, allow_pickle)


def inpainter_for(
    weights: Weights, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Inpainter | None:
    """The diffusion inpainter of the weights' ``inpaint/`` folder, loaded when first called
    (and kept), or None when the weights have none (the plate then uses OpenCV)."""
    folder = weights.component_dir(INPAINT)
    if folder is None:
        return None
    key = (str(folder.resolve()), str(device), dtype, weights.allow_pickle)

    def inpaint(image: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        return DiffusionInpainter(_cached_pipeline(*key))(image, region)

    return inpaint


@contextmanager
def plate_inpainting(inpainter: Inpainter | None) -> Iterator[None]:
    """Within the block, plates (`anima.render.background_plate`) are inpainted with
    ``inpainter`` (None: OpenCV)."""
    token = _ACTIVE.set(inpainter)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def plate_inpainter(radius: int = 5) -> Inpainter:
    """The inpainter `plate_inpainting` set, else OpenCV Telea with ``radius``."""
    active = _ACTIVE.get()
    if active is not None:
        return active
    return functools.partial(opencv_inpaint, radius=radius)


def tiny_inpaint_pipeline(seed: int = 0) -> Any:
    """A tiny random `StableDiffusionInpaintPipeline` of SD1.5 inpainting's architecture (a
    UNet reading 9 channels: latent, mask, masked-image latent), built offline from config;
    its native resolution is 64 pixels."""
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel

    from anima.models.schedules import SD_DDIM_CONFIG
    from anima.models.seeding import seeded
    from anima.models.tiny_sd import (
        TINY_BLOCK_CHANNELS,
        TINY_CROSS_ATTENTION_DIM,
        tiny_sd_vae,
        tiny_text_encoder,
        tiny_tokenizer,
    )

    levels = len(TINY_BLOCK_CHANNELS)
    with seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=9,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
            block_out_channels=TINY_BLOCK_CHANNELS,
            layers_per_block=1,
            cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
            attention_head_dim=8,
            norm_num_groups=32,
        )
    scheduler = DDIMScheduler(**SD_DDIM_CONFIG)
    pipeline = StableDiffusionInpaintPipeline(
        vae=tiny_sd_vae(seed + 1),
        text_encoder=tiny_text_encoder(seed + 2),
        tokenizer=tiny_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
