"""The `AnyI2VPipeline` components: from a weights directory, or tiny random ones.

AnyI2V's release runs on AnimateDiff (REFERENCE, "AnyI2V"): an SD1.5 UNet turned into a
`UNetMotionModel` by the AnimateDiff v3 `MotionAdapter` (v1-5-3, no mid-block motion module),
SD1.5's VAE, CLIP text encoder and tokenizer, and a DDIM sampler configured as the release's
AnimateDiff inference config. Weights (``--weights DIR``, docs/architecture.md, "Models and
weights")::

    DIR/sd15/            SD1.5, diffusers layout (unet, vae, text_encoder, tokenizer)
    DIR/motion-adapter/  AnimateDiff MotionAdapter (diffusers layout)

SD1.5's own ``scheduler/`` folder is not read: it holds a PNDM sampler with scaled-linear betas,
and the release samples with the DDIM of `ANYI2V_SCHEDULER_CONFIG` instead. ``--weights tiny``
builds `tiny_anyi2v_components`: random models of the same classes, with four UNet levels as
SD1.5 has, so that every layer AnyI2V names (``up_blocks.1`` and ``up_blocks.2``, attentions and
resnets 0 and 1) exists.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from anima.errors import InputError
from anima.models.loading import load_model
from anima.models.tiny_sd import (
    motion_unet,
    tiny_motion_adapter,
    tiny_sd_unet,
    tiny_sd_vae,
    tiny_text_encoder,
    tiny_tokenizer,
)
from anima.weights import Component, Weights

SD15 = Component(
    "Stable Diffusion 1.5",
    "sd15",
    "SD1.5 in diffusers layout (unet, vae, text_encoder, tokenizer)",
    required_files=("model_index.json",),
)
MOTION_ADAPTER = Component(
    "AnimateDiff motion adapter", "motion-adapter", "AnimateDiff v3 motion modules (v1-5-3)"
)
#: What the AnyI2V pipeline reads from a weights directory (`anima.weights.Component`s).
COMPONENTS = (SD15, MOTION_ADAPTER)

#: The release's sampler: DDIM with the AnimateDiff inference config it loads (linear betas
#: 0.00085-0.012, steps offset 1, no clipping). The config leaves ``set_alpha_to_one`` at
#: DDIM's default, True: the last of 25 steps goes all the way to alpha 1.
ANYI2V_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}

#: Channels of the tiny UNet's four levels (SD1.5: 320, 640, 1280, 1280); two channels
#: a GroupNorm group from the second level on, so that a 1x1 map (a 32-pixel side) normalises.
TINY_BLOCK_CHANNELS = (32, 64, 64, 64)


def anyi2v_scheduler() -> DDIMScheduler:
    """The release's DDIM sampler (`ANYI2V_SCHEDULER_CONFIG`)."""
    return DDIMScheduler(**ANYI2V_SCHEDULER_CONFIG)


def tiny_unet2d(seed: int = 0) -> UNet2DConditionModel:
    """The tiny SD-style image UNet the tiny motion UNet is made from: four levels like
    SD1.5's (three cross-attention down blocks, then three cross-attention up blocks after a
    plain one), one layer a block (two in each up block)."""
    return tiny_sd_unet(seed, TINY_BLOCK_CHANNELS)


def tiny_motion_adapter_for_unet(seed: int = 1) -> MotionAdapter:
    """Tiny AnimateDiff motion modules for `tiny_unet2d` (32 positions, no mid-block module)."""
    return tiny_motion_adapter(seed, TINY_BLOCK_CHANNELS)


def tiny_anyi2v_components(seed: int = 0) -> dict[str, Any]:
    """Tiny random components of the real classes (the keyword arguments of
    `anima.methods.anyi2v.pipeline.AnyI2VPipeline`), in eval mode."""
    return {
        "vae": tiny_sd_vae(seed).eval(),
        "text_encoder": tiny_text_encoder(seed).eval(),
        "tokenizer": tiny_tokenizer(),
        "unet": motion_unet(tiny_unet2d(seed), tiny_motion_adapter_for_unet(seed + 1)).eval(),
        "scheduler": anyi2v_scheduler(),
    }


def load_anyi2v_components(weights: Weights, dtype: torch.dtype) -> dict[str, Any]:
    """SD1.5 (``DIR/sd15``) with the motion modules (``DIR/motion-adapter``) as a
    `UNetMotionModel`, SD1.5's VAE, text encoder and tokenizer, and the release's DDIM."""
    pickle = weights.allow_pickle
    sd = weights.require(SD15, "anyi2v")
    tokenizer_dir = sd / "tokenizer"
    if not any((tokenizer_dir / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        raise InputError("SD1.5 tokenizer: vocab.json not found", f"in {tokenizer_dir}")
    unet2d = load_model(UNet2DConditionModel, sd / "unet", "SD1.5 UNet", pickle, dtype)
    adapter = load_model(
        MotionAdapter, weights.require(MOTION_ADAPTER, "anyi2v"), "motion adapter", pickle, dtype
    )
    unet = motion_unet(unet2d, adapter).eval()  # from_unet2d builds it in training mode
    if unet.dtype != dtype:
        unet.to(dtype=dtype)
    return {
        "vae": load_model(AutoencoderKL, sd / "vae", "SD1.5 VAE", pickle, dtype),
        "text_encoder": load_model(
            CLIPTextModel, sd / "text_encoder", "SD1.5 text encoder", pickle, dtype
        ),
        "tokenizer": CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True),
        "unet": unet,
        "scheduler": anyi2v_scheduler(),
    }


def load_components(weights: Weights, dtype: torch.dtype) -> dict[str, Any]:
    """The keyword arguments of `AnyI2VPipeline`: `load_anyi2v_components` from the weights
    directory, or, with ``--weights tiny``, `tiny_anyi2v_components` cast to ``dtype``."""
    if weights.builtin != "tiny":
        return load_anyi2v_components(weights, dtype)
    components = tiny_anyi2v_components(seed=0)
    for module in components.values():
        if isinstance(module, torch.nn.Module) and dtype != torch.float32:
            module.to(dtype=dtype)
    return components
