"""The `AnyI2VPipeline` components: from a weights directory, or tiny random ones.

AnyI2V's release runs on AnimateDiff (README, "AnyI2V"): an SD1.5 UNet turned into a
`UNetMotionModel` by the AnimateDiff v3 `MotionAdapter` (v1-5-3, no mid-block motion module),
SD1.5's VAE, CLIP text encoder and tokenizer, and a DDIM sampler configured as the release's
AnimateDiff inference config. Weights (``--weights DIR``, docs/architecture.md, "Models and
weights")::

    DIR/sd15/            SD1.5, diffusers layout (unet, vae, text_encoder, tokenizer)
    DIR/motion-adapter/  AnimateDiff MotionAdapter (diffusers layout)
    DIR/anyi2v/personalized.safetensors   optional: a personalised SD1.5 checkpoint in the
                         original single-file layout (the release: realisticVisionV60B1)

The personalised checkpoint replaces SD1.5's spatial UNet weights, and its VAE and text encoder
where the file holds them (README, "AnyI2V"), before the motion modules are added: it is read
with diffusers' single-file loading (`StableDiffusionPipeline.from_single_file`) against
``DIR/sd15``'s configs, offline (`load_personalized`).

With ``options.backbone = "modelscope"`` the components are ModelScope / Zeroscope
text-to-video's instead (`anima.models.modelscope`, AnyI2V appendix: other text-to-video
backbones)::

    DIR/modelscope-t2v/  ModelScope / Zeroscope, diffusers layout (unet, vae, text_encoder, ...)

sampled with the model's own DDIM config (its ``scheduler/``, scaled-linear betas for
ModelScope and Zeroscope), not the AnimateDiff one. ``--weights tiny`` then builds
`anima.models.modelscope.tiny_modelscope_components`.

SD1.5's own ``scheduler/`` folder is not read: it holds a PNDM sampler with scaled-linear betas,
and the release samples with the DDIM of `ANYI2V_SCHEDULER_CONFIG` instead. ``--weights tiny``
builds `tiny_anyi2v_components`: random models of the same classes, with four UNet levels as
SD1.5 has, so that every layer AnyI2V names (``up_blocks.1`` and ``up_blocks.2``, attentions and
resnets 0 and 1) exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextModel, CLIPTokenizer

from anima.errors import InputError
from anima.methods.anyi2v.backbone import Backbone
from anima.models.loading import load_model
from anima.models.modelscope import (
    MODELSCOPE_T2V,
    load_modelscope_components,
    tiny_modelscope_components,
)
from anima.models.tiny_sd import (
    motion_unet,
    tiny_motion_adapter,
    tiny_sd_unet,
    tiny_sd_vae,
    tiny_text_encoder,
    tiny_tokenizer,
)
from anima.weights import SD15, Component, Weights

MOTION_ADAPTER = Component(
    "AnimateDiff motion adapter", "motion-adapter", "AnimateDiff v3 motion modules (v1-5-3)"
)
#: A personalised SD1.5 single-file checkpoint, read when present (AnimateDiff backbone).
PERSONALIZED = Component(
    "personalised SD1.5 checkpoint",
    "anyi2v",
    "single-file SD1.5 checkpoint replacing SD1.5's UNet, VAE and text encoder",
    required_files=("personalized.safetensors",),
    optional=True,
)
#: Key prefixes of the parts of an original-layout (single-file) SD1.5 checkpoint.
PERSONALIZED_PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}
#: ModelScope / Zeroscope text-to-video, read only with ``backbone = "modelscope"``.
MODELSCOPE = MODELSCOPE_T2V
#: The components each backbone reads (the optional ones where present).
BACKBONE_COMPONENTS: dict[str, tuple[Component, ...]] = {
    "animatediff": (SD15, MOTION_ADAPTER, PERSONALIZED),
    "modelscope": (MODELSCOPE,),
}
#: What the AnyI2V pipeline reads from a weights directory (`anima.weights.Component`s).
COMPONENTS = (SD15, MOTION_ADAPTER, PERSONALIZED, MODELSCOPE)

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
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    personalized = weights.component_dir(PERSONALIZED)
    if personalized is not None:
        file = personalized / PERSONALIZED.required_files[0]
        parts = load_personalized(file, sd, tokenizer, dtype, pickle)
    else:
        parts = {
            "unet": load_model(UNet2DConditionModel, sd / "unet", "SD1.5 UNet", pickle, dtype),
            "vae": load_model(AutoencoderKL, sd / "vae", "SD1.5 VAE", pickle, dtype),
            "text_encoder": load_model(
                CLIPTextModel, sd / "text_encoder", "SD1.5 text encoder", pickle, dtype
            ),
        }
    adapter = load_model(
        MotionAdapter, weights.require(MOTION_ADAPTER, "anyi2v"), "motion adapter", pickle, dtype
    )
    unet = motion_unet(parts["unet"], adapter).eval()  # from_unet2d builds it in training mode
    if unet.dtype != dtype:
        unet.to(dtype=dtype)
    return {
        "vae": parts["vae"],
        "text_encoder": parts["text_encoder"],
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": anyi2v_scheduler(),
    }


def checkpoint_parts(file: Path) -> set[str]:
    """Which of ``unet``, ``vae``, ``text_encoder`` a single-file SD1.5 checkpoint holds, by
    the original layout's key prefixes (`PERSONALIZED_PREFIXES`)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        keys = list(handle.keys())
    return {
        part
        for part, prefix in PERSONALIZED_PREFIXES.items()
        if any(key.startswith(prefix) for key in keys)
    }


def load_personalized(
    file: Path, sd15: Path, tokenizer: CLIPTokenizer, dtype: torch.dtype, allow_pickle: bool
) -> dict[str, Any]:
    """The ``unet`` (`UNet2DConditionModel`), ``vae`` and ``text_encoder`` of a personalised
    SD1.5 checkpoint ``file`` in the original single-file layout, by diffusers' single-file
    loading (`StableDiffusionPipeline.from_single_file`) with ``sd15``'s configs, offline; the
    VAE and text encoder are ``sd15``'s where the file lacks them. A file without a UNet, or
    unreadable, is an `InputError` naming it."""
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    try:
        parts = checkpoint_parts(file)
    except (OSError, ValueError, RuntimeError) as error:
        raise InputError(f"cannot read the personalised checkpoint ({error})", str(file)) from error
    if "unet" not in parts:
        prefix = PERSONALIZED_PREFIXES["unet"]
        raise InputError(f"the personalised checkpoint has no UNet ({prefix}*)", str(file))
    kept: dict[str, Any] = {}
    if "vae" not in parts:
        kept["vae"] = load_model(AutoencoderKL, sd15 / "vae", "SD1.5 VAE", allow_pickle, dtype)
    if "text_encoder" not in parts:
        kept["text_encoder"] = load_model(
            CLIPTextModel, sd15 / "text_encoder", "SD1.5 text encoder", allow_pickle, dtype
        )
    diffusers_logging.disable_progress_bar()
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(file),
            config=str(sd15),
            local_files_only=True,
            torch_dtype=dtype,
            tokenizer=tokenizer,
            scheduler=anyi2v_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **kept,
        )
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        message = f"cannot load the personalised checkpoint ({reason})"
        raise InputError(message, str(file)) from error
    return {"unet": pipe.unet, "vae": pipe.vae.eval(), "text_encoder": pipe.text_encoder.eval()}


def modelscope_components(weights: Weights, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The `AnyI2VPipeline` keyword arguments of the ModelScope backbone: from
    ``DIR/modelscope-t2v`` (in ``dtype``), or tiny random ones with ``--weights tiny``; the
    sampler is a DDIM of the model's own config."""
    if weights.builtin == "tiny":
        parts = tiny_modelscope_components(seed=0)
    else:
        folder = weights.require(MODELSCOPE, "anyi2v (backbone modelscope)")
        parts = load_modelscope_components(folder, weights.allow_pickle, dtype or torch.float32)
    scheduler = DDIMScheduler.from_config(parts.pop("scheduler_config"))
    return parts | {"scheduler": scheduler}


def load_components(
    weights: Weights, dtype: torch.dtype, backbone: Backbone = "animatediff"
) -> dict[str, Any]:
    """The keyword arguments of `AnyI2VPipeline` for ``backbone``: `load_anyi2v_components`
    (or `modelscope_components`) from the weights directory, or, with ``--weights tiny``,
    `tiny_anyi2v_components` (or tiny ModelScope ones) cast to ``dtype``."""
    if backbone not in BACKBONE_COMPONENTS:
        raise ValueError(f"unknown backbone {backbone!r}")
    if weights.builtin != "tiny":
        if backbone == "modelscope":
            return modelscope_components(weights, dtype)
        return load_anyi2v_components(weights, dtype)
    if backbone == "modelscope":
        components = modelscope_components(weights)
    else:
        components = tiny_anyi2v_components(seed=0)
    for module in components.values():
        if isinstance(module, torch.nn.Module) and dtype != torch.float32:
            module.to(dtype=dtype)
    return components
