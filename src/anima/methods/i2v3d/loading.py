"""I2V3D's keyframe-stage components: a text-to-image base and its depth ControlNet, from a
weights directory or tiny random ones (docs/architecture.md, "A method folder", "Models and
weights").

I2V3D §3.2 generates keyframes with SDXL, a LoRA trained on the object's views and a depth
ControlNet (the release: ``controlnet-depth-sdxl-1.0`` at scale 1, SDXL's VAE replaced by the
fp16-fix one; README, "I2V3D"). The same pipeline runs on SD1.5 with its depth ControlNet
(``base = "sd15"``). Weights (``--weights DIR``)::

    DIR/sdxl/                     SDXL base, diffusers layout (unet, vae, text_encoder,
                                  text_encoder_2, tokenizer, tokenizer_2)
    DIR/sdxl-vae-fp16-fix/        optional: replaces ``sdxl/vae`` (the release's VAE)
    DIR/controlnet-depth-sdxl/    depth ControlNet for SDXL (diffusers ControlNetModel)
    DIR/sd15/                     SD1.5, diffusers layout (unet, vae, text_encoder, tokenizer)
    DIR/controlnet-depth-sd15/    depth ControlNet for SD1.5 (diffusers ControlNetModel)

The model's ``scheduler/`` folder is not read: the release samples and inverts with DDIM on
SDXL's noise schedule (scaled-linear betas 0.00085-0.012, leading spacing, steps offset 1, no
final alpha of one: `I2V3D_SCHEDULER_CONFIG`), the same schedule SD1.5 was trained with.

``--weights tiny`` builds random models of the same classes offline: `anima.models.tiny_sdxl`
for SDXL (SDXL's block layout, "text_time" added conditioning, two text encoders) and
`anima.models.tiny_sd` with four levels for SD1.5 (SD1.5's layout: ``up_blocks[0]`` without
attentions), and ControlNets made from those UNets with small random zero convs, so that the
depth map changes the output as a trained ControlNet's would.

diffusers and transformers are imported inside the functions: the CLI imports this package
(the LoRA trainer's options) and must start without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch

from anima.errors import InputError
from anima.models.schedules import SD_DDIM_CONFIG
from anima.weights import SD15, SVD, Component, Weights

if TYPE_CHECKING:
    from diffusers import ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

Base = Literal["sdxl", "sd15"]
BASES: tuple[Base, ...] = ("sdxl", "sd15")

SDXL = Component(
    "Stable Diffusion XL base",
    "sdxl",
    "SDXL base in diffusers layout (unet, vae, text_encoder(_2), tokenizer(_2))",
    required_files=("model_index.json",),
)
SDXL_VAE_FP16_FIX = Component(
    "SDXL VAE fp16-fix",
    "sdxl-vae-fp16-fix",
    "replaces SDXL's VAE (the release's; SDXL's own overflows in float16)",
    optional=True,
)
CONTROLNET_DEPTH_SDXL = Component(
    "SDXL depth ControlNet",
    "controlnet-depth-sdxl",
    "controlnet-depth-sdxl-1.0 in diffusers layout",
)
CONTROLNET_DEPTH_SD15 = Component(
    "SD1.5 depth ControlNet",
    "controlnet-depth-sd15",
    "an SD1.5 depth ControlNet (e.g. control_v11f1p_sd15_depth) in diffusers layout",
)
TEMPORAL_DEPTH_CONTROLNET = Component(
    "temporal depth ControlNet",
    "temporal-depth-controlnet",
    "an SVD ControlNet on depth (the community temporal-controlnet-depth-svd-v1, as downloaded "
    "or converted with `anima weights convert levitor`)",
)
#: What the interpolation stage reads (I2V3D §3.3): SVD img2vid and its depth ControlNet.
INTERPOLATION_COMPONENTS = (SVD, TEMPORAL_DEPTH_CONTROLNET)
#: Everything the method may read; which it needs depends on ``base`` and ``stage``.
COMPONENTS = (
    SDXL,
    SDXL_VAE_FP16_FIX,
    CONTROLNET_DEPTH_SDXL,
    SD15,
    CONTROLNET_DEPTH_SD15,
    *INTERPOLATION_COMPONENTS,
)
#: The components each base needs (the fp16-fix VAE is read when present).
BASE_COMPONENTS: dict[str, tuple[Component, ...]] = {
    "sdxl": (SDXL, CONTROLNET_DEPTH_SDXL),
    "sd15": (SD15, CONTROLNET_DEPTH_SD15),
}
_BASE_COMPONENT = {"sdxl": SDXL, "sd15": SD15}
_CONTROLNET_COMPONENT = {"sdxl": CONTROLNET_DEPTH_SDXL, "sd15": CONTROLNET_DEPTH_SD15}

#: The file of a LoRA folder (diffusers' ``save_lora_weights``), read with ``options.lora``.
LORA_FILE = "pytorch_lora_weights.safetensors"

#: The release's sampler: DDIM on SDXL's training schedule (see the module docstring).
I2V3D_SCHEDULER_CONFIG: dict[str, Any] = SD_DDIM_CONFIG | {"timestep_spacing": "leading"}

#: Channels of the tiny SD1.5 UNet's four levels (as SD1.5's four; AnyI2V's tiny ones too).
TINY_SD15_BLOCK_CHANNELS = (32, 64, 64, 64)
#: Standard deviation of the tiny ControlNets' zero-conv weights.
TINY_CONTROLNET_STD = 0.05


def i2v3d_scheduler() -> DDIMScheduler:
    """The release's DDIM (`I2V3D_SCHEDULER_CONFIG`), for inversion and sampling alike."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**I2V3D_SCHEDULER_CONFIG)


def _check_base(base: str) -> None:
    if base not in BASES:
        raise ValueError(f"unknown base {base!r} (one of {', '.join(BASES)})")


def _cast(parts: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    for module in parts.values():
        if isinstance(module, torch.nn.Module) and dtype != torch.float32:
            module.to(dtype=dtype)
    return parts


def tiny_base_unet(base: Base, seed: int = 0) -> UNet2DConditionModel:
    """The tiny UNet of ``base`` (`tiny_sdxl_unet`, or `tiny_sd_unet` with four levels)."""
    from anima.models.tiny_sd import tiny_sd_unet
    from anima.models.tiny_sdxl import tiny_sdxl_unet

    _check_base(base)
    if base == "sdxl":
        return tiny_sdxl_unet(seed)
    return tiny_sd_unet(seed, TINY_SD15_BLOCK_CHANNELS)


def tiny_base(base: Base, seed: int = 0) -> dict[str, Any]:
    """Tiny random components of ``base`` in eval mode, with `i2v3d_scheduler`."""
    from anima.models.tiny_sd import tiny_sd_vae, tiny_text_encoder, tiny_tokenizer
    from anima.models.tiny_sdxl import tiny_sdxl_components

    _check_base(base)
    if base == "sdxl":
        parts = tiny_sdxl_components(seed)
    else:
        parts = {
            "unet": tiny_base_unet("sd15", seed).eval(),
            "vae": tiny_sd_vae(seed).eval(),
            "text_encoder": tiny_text_encoder(seed).eval(),
            "tokenizer": tiny_tokenizer(),
        }
    return parts | {"scheduler": i2v3d_scheduler()}


def tiny_depth_controlnet(base: Base, seed: int = 0) -> ControlNetModel:
    """A random depth ControlNet for ``base``'s tiny UNet (`tiny_base` with the same seed):
    made from it, three input channels as the released depth ControlNets read, small random
    zero convs."""
    from anima.models.tiny_sd import randomise_zero_convs, tiny_controlnet_2d

    controlnet = tiny_controlnet_2d(tiny_base_unet(base, seed), seed=seed + 7)
    randomise_zero_convs(controlnet, std=TINY_CONTROLNET_STD, seed=seed + 8)
    return controlnet.eval()


def _tokenizer(folder: Any, kind: str) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    if not any((folder / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        raise InputError(f"{kind}: vocab.json not found", f"in {folder}")
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def load_base(weights: Weights, dtype: torch.dtype, base: Base) -> dict[str, Any]:
    """The diffusers components of ``base``: ``unet``, ``vae``, ``text_encoder``, ``tokenizer``
    (and for SDXL ``text_encoder_2``, ``tokenizer_2``) from ``DIR/sdxl`` or ``DIR/sd15`` in
    ``dtype``, offline, safetensors unless ``--allow-pickle``, plus the release's DDIM
    (``scheduler``); `tiny_base` cast to ``dtype`` with ``--weights tiny``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from anima.models.loading import load_model

    _check_base(base)
    if weights.builtin == "tiny":
        return _cast(tiny_base(base, seed=0), dtype)
    pickle = weights.allow_pickle
    name = "SDXL" if base == "sdxl" else "SD1.5"
    folder = weights.require(_BASE_COMPONENT[base], f"i2v3d (base {base})")
    vae_folder = folder / "vae"
    if base == "sdxl":
        vae_fix = weights.component_dir(SDXL_VAE_FP16_FIX)
        vae_folder = vae_fix if vae_fix is not None else vae_folder
    parts: dict[str, Any] = {
        "unet": load_model(UNet2DConditionModel, folder / "unet", f"{name} UNet", pickle, dtype),
        "vae": load_model(AutoencoderKL, vae_folder, f"{name} VAE", pickle, dtype),
        "text_encoder": load_model(
            CLIPTextModel, folder / "text_encoder", f"{name} text encoder", pickle, dtype
        ),
        "tokenizer": _tokenizer(folder / "tokenizer", f"{name} tokenizer"),
    }
    if base == "sdxl":
        parts["text_encoder_2"] = load_model(
            CLIPTextModelWithProjection,
            folder / "text_encoder_2",
            "SDXL text encoder 2",
            pickle,
            dtype,
        )
        parts["tokenizer_2"] = _tokenizer(folder / "tokenizer_2", "SDXL tokenizer 2")
    for module in parts.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return parts | {"scheduler": i2v3d_scheduler()}


def load_depth_controlnet(weights: Weights, dtype: torch.dtype, base: Base) -> ControlNetModel:
    """``base``'s depth ControlNet (``DIR/controlnet-depth-sdxl`` or
    ``DIR/controlnet-depth-sd15``, a diffusers `ControlNetModel`) in ``dtype``;
    `tiny_depth_controlnet` with ``--weights tiny``."""
    from diffusers import ControlNetModel

    from anima.models.loading import load_model

    _check_base(base)
    if weights.builtin == "tiny":
        controlnet = tiny_depth_controlnet(base, seed=0)
        return controlnet.to(dtype=dtype) if dtype != torch.float32 else controlnet
    component = _CONTROLNET_COMPONENT[base]
    folder = weights.require(component, f"i2v3d (base {base})")
    controlnet = load_model(ControlNetModel, folder, component.name, weights.allow_pickle, dtype)
    return controlnet.eval()


def load_components(weights: Weights, dtype: torch.dtype, base: Base) -> dict[str, Any]:
    """`load_base` plus ``controlnet`` (`load_depth_controlnet`): the keyword arguments of
    `anima.methods.i2v3d.pipeline.I2V3DKeyframePipeline`."""
    return load_base(weights, dtype, base) | {
        "controlnet": load_depth_controlnet(weights, dtype, base)
    }


def load_interpolation(weights: Weights, dtype: torch.dtype) -> dict[str, Any]:
    """The keyword arguments of `anima.methods.i2v3d.interpolation.I2V3DInterpolationPipeline`:
    SVD from ``DIR/svd`` and the temporal depth ControlNet from
    ``DIR/temporal-depth-controlnet`` (its config says whether it adds each skip residual once
    per later block, as the community checkpoint was trained: `anima.models.loading`), or tiny
    random models with ``--weights tiny`` (the ControlNet's zero convs random, so depth
    matters)."""
    if weights.builtin == "tiny":
        from anima.models.tiny import tiny_controlnet, tiny_svd_components

        parts = tiny_svd_components(seed=0)
        parts["controlnet"] = tiny_controlnet(parts["unet"], seed=0, random_output=True)
        return _cast(parts, dtype)
    from anima.models.loading import load_svd_components, load_svd_controlnet

    parts = load_svd_components(weights.require(SVD, "i2v3d"), weights.allow_pickle, dtype)
    folder = weights.require(TEMPORAL_DEPTH_CONTROLNET, "i2v3d")
    kind = TEMPORAL_DEPTH_CONTROLNET.name
    parts["controlnet"] = load_svd_controlnet(folder, weights.allow_pickle, dtype, kind)
    return parts
