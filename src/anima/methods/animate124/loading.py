"""Animate124's priors: from a weights directory, or tiny random ones (``--weights tiny``).

(Animate124 §3.2-3.4; README, "Animate124"; docs/architecture.md, "Models and weights".)
Four components, each a folder of the weights directory (``--weights DIR``)::

    DIR/sd15/             SD1.5, diffusers layout: model_index.json, unet/, vae/,
                          text_encoder/, tokenizer/, scheduler/ (optional; only its betas are read)
    DIR/zero123-xl/       Zero-1-to-3 XL, diffusers layout (e.g. kxic/zero123-xl as saved):
                          unet/            UNet2DConditionModel, 8 input channels
                          vae/             AutoencoderKL
                          image_encoder/   CLIPVisionModelWithProjection
                          cc_projection/   config.json + diffusion_pytorch_model.safetensors
                                           (Linear(768 + 4 -> 768): projection.weight/.bias),
                                           or cc_projection.safetensors in DIR/zero123-xl/
                          feature_extractor/preprocessor_config.json   optional: CLIP's size,
                                           mean and std (else CLIP ViT-L/14's)
                          scheduler/scheduler_config.json              optional: the betas
    DIR/modelscope-t2v/   ModelScope text-to-video (`anima.models.modelscope`)
    DIR/controlnet-tile/  ControlNet Tile v1.1 for SD1.5 (lllyasviel/control_v11f1e_sd15_tile):
                          config.json + diffusion_pytorch_model.safetensors

Weights load from safetensors only unless ``--allow-pickle``, from local files only; a missing
folder or file is one `InputError` naming it. Each loader returns a dict of components that the
guidance classes' ``from_components`` read (`anima.methods.animate124.guidance`); the tiny ones
have the same keys and classes. diffusers and transformers are imported inside the functions:
importing this module is cheap (the CLI imports it for its `Component`s).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from anima.errors import InputError
from anima.methods.animate124.guidance.sds import DEFAULT_SCHEDULE
from anima.methods.animate124.guidance.zero123 import CLIP_PREPROCESS
from anima.models.modelscope import MODELSCOPE_T2V
from anima.weights import SD15, Component, Weights

ZERO123_XL = Component(
    "Zero-1-to-3 XL",
    "zero123-xl",
    "3D-view prior, diffusers layout (unet, vae, image_encoder, cc_projection)",
    required_files=("unet/config.json",),
)
CONTROLNET_TILE = Component(
    "ControlNet Tile",
    "controlnet-tile",
    "ControlNet Tile v1.1 for SD1.5 (semantic refinement), diffusers layout",
)
#: Which component each prior reads (the tile prior reads SD1.5's too).
PRIOR_COMPONENTS: dict[str, tuple[Component, ...]] = {
    "sd15": (SD15,),
    "zero123": (ZERO123_XL,),
    "modelscope": (MODELSCOPE_T2V,),
    "controlnet_tile": (SD15, CONTROLNET_TILE),
}
PRIORS = tuple(PRIOR_COMPONENTS)
#: What Animate124 reads from a weights directory.
COMPONENTS = (SD15, ZERO123_XL, MODELSCOPE_T2V, CONTROLNET_TILE)
METHOD = "animate124"

#: Channels of the tiny UNets' levels (SD1.5's four levels: 320, 640, 1280, 1280).
TINY_BLOCK_CHANNELS = (32, 64)
#: The tiny Zero-1-to-3's CLIP embedding width (768 at full size).
TINY_CLIP_DIM = 32


def scheduler_config(folder: Path) -> dict[str, Any]:
    """``folder/scheduler/scheduler_config.json`` without its private keys, else the shared
    default (`DEFAULT_SCHEDULE`, the betas of SD1.5, Zero-1-to-3 and ModelScope)."""
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return dict(DEFAULT_SCHEDULE)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the scheduler config ({error})", str(path)) from error
    return {key: value for key, value in config.items() if not key.startswith("_")}


def _tokenizer(folder: Path, kind: str) -> Any:
    from transformers import CLIPTokenizer

    if not any((folder / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        raise InputError(f"{kind}: vocab.json not found", f"in {folder}")
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def load_sd15(weights: Weights, dtype: torch.dtype) -> dict[str, Any]:
    """SD1.5's ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler_config``
    from ``DIR/sd15``, in eval mode and ``dtype``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from anima.models.loading import load_model

    folder = weights.require(SD15, METHOD)
    pickle = weights.allow_pickle
    return {
        "unet": load_model(UNet2DConditionModel, folder / "unet", "SD1.5 UNet", pickle, dtype),
        "vae": load_model(AutoencoderKL, folder / "vae", "SD1.5 VAE", pickle, dtype),
        "text_encoder": load_model(
            CLIPTextModel, folder / "text_encoder", "SD1.5 text encoder", pickle, dtype
        ),
        "tokenizer": _tokenizer(folder / "tokenizer", "SD1.5 tokenizer"),
        "scheduler_config": scheduler_config(folder),
    }


def load_cc_projection(folder: Path, allow_pickle: bool, dtype: torch.dtype) -> Any:
    """Zero-1-to-3's `CCProjection` from ``folder/cc_projection/`` (diffusers layout) or
    ``folder/cc_projection.safetensors``; its sizes are read from the weight's shape."""
    from anima.methods.animate124.guidance.cc_projection import CCProjection
    from anima.models.loading import check_state, read_weights_file

    sub = folder / "cc_projection"
    names = ["diffusion_pytorch_model.safetensors", "model.safetensors"]
    candidates = [sub / name for name in names] + [folder / "cc_projection.safetensors"]
    if allow_pickle:
        candidates += [sub / "diffusion_pytorch_model.bin", folder / "cc_projection.bin"]
    path = next((path for path in candidates if path.is_file()), None)
    if path is None:
        pickles = [sub / "diffusion_pytorch_model.bin", folder / "cc_projection.bin"]
        if any(p.is_file() for p in pickles):
            raise InputError(
                "Zero-1-to-3 cc_projection: only pickle weights; pass --allow-pickle to load them",
                f"in {folder}",
            )
        raise InputError(
            "Zero-1-to-3 cc_projection: diffusion_pytorch_model.safetensors not found",
            f"in {sub}",
        )
    state = read_weights_file(path)
    weight = state.get("projection.weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise InputError("Zero-1-to-3 cc_projection: no 2-D projection.weight", str(path))
    out_channel, in_channel = weight.shape
    model = CCProjection(in_channel=in_channel, out_channel=out_channel)
    check_state(state, model.state_dict(), "Zero-1-to-3 cc_projection", str(path))
    model.load_state_dict(state)
    return model.to(dtype=dtype).eval()


def clip_preprocess(folder: Path) -> dict[str, Any]:
    """CLIP's input size, mean and std from ``folder/feature_extractor/preprocessor_config.json``
    (a `CLIPImageProcessor`'s), else CLIP ViT-L/14's (`CLIP_PREPROCESS`)."""
    path = folder / "feature_extractor" / "preprocessor_config.json"
    if not path.is_file():
        return dict(CLIP_PREPROCESS)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(
            f"cannot read the CLIP preprocessor config ({error})", str(path)
        ) from error
    crop = config.get("crop_size", CLIP_PREPROCESS["size"])
    size = crop.get("height", CLIP_PREPROCESS["size"]) if isinstance(crop, dict) else crop
    return {
        "size": int(size),
        "mean": tuple(config.get("image_mean", CLIP_PREPROCESS["mean"])),
        "std": tuple(config.get("image_std", CLIP_PREPROCESS["std"])),
    }


def load_zero123(weights: Weights, dtype: torch.dtype) -> dict[str, Any]:
    """Zero-1-to-3 XL's ``unet``, ``vae``, ``image_encoder``, ``cc_projection``,
    ``clip_preprocess`` and ``scheduler_config`` from ``DIR/zero123-xl`` (module docstring)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    from anima.models.loading import load_model

    folder = weights.require(ZERO123_XL, METHOD)
    pickle = weights.allow_pickle
    name = ZERO123_XL.name
    unet = load_model(UNet2DConditionModel, folder / "unet", f"{name} UNet", pickle, dtype)
    if unet.config.in_channels != 8:
        raise InputError(
            f"{name} UNet: {unet.config.in_channels} input channels, expected 8 "
            "(noisy latent + reference latent)",
            str(folder / "unet"),
        )
    return {
        "unet": unet.eval(),
        "vae": load_model(AutoencoderKL, folder / "vae", f"{name} VAE", pickle, dtype).eval(),
        "image_encoder": load_model(
            CLIPVisionModelWithProjection,
            folder / "image_encoder",
            f"{name} image encoder",
            pickle,
            dtype,
        ).eval(),
        "cc_projection": load_cc_projection(folder, pickle, dtype),
        "clip_preprocess": clip_preprocess(folder),
        "scheduler_config": scheduler_config(folder),
    }


def load_modelscope(weights: Weights, dtype: torch.dtype) -> dict[str, Any]:
    """ModelScope text-to-video from ``DIR/modelscope-t2v`` (`anima.models.modelscope`)."""
    from anima.models.modelscope import load_modelscope_components

    folder = weights.require(MODELSCOPE_T2V, METHOD)
    return load_modelscope_components(folder, weights.allow_pickle, dtype)


def load_controlnet_tile(weights: Weights, dtype: torch.dtype) -> Any:
    """The Tile `ControlNetModel` from ``DIR/controlnet-tile``."""
    from diffusers import ControlNetModel

    from anima.models.loading import load_model

    folder = weights.require(CONTROLNET_TILE, METHOD)
    return load_model(
        ControlNetModel, folder, CONTROLNET_TILE.name, weights.allow_pickle, dtype
    ).eval()


def tiny_sd15(seed: int = 0) -> dict[str, Any]:
    """Tiny random SD1.5 components (the keys of `load_sd15`), in eval mode."""
    from anima.models.tiny_sd import tiny_sd_unet, tiny_sd_vae, tiny_text_encoder, tiny_tokenizer

    return {
        "unet": tiny_sd_unet(seed, TINY_BLOCK_CHANNELS).eval(),
        "vae": tiny_sd_vae(seed).eval(),
        "text_encoder": tiny_text_encoder(seed).eval(),
        "tokenizer": tiny_tokenizer(),
        "scheduler_config": dict(DEFAULT_SCHEDULE),
    }


def tiny_zero123(seed: int = 0) -> dict[str, Any]:
    """Tiny random Zero-1-to-3 components (the keys of `load_zero123`): an 8-channel UNet, a
    tiny CLIP vision tower (224 px) of `TINY_CLIP_DIM` and a cc_projection for it."""
    from diffusers import UNet2DConditionModel

    from anima.methods.animate124.guidance.cc_projection import CCProjection
    from anima.models.seeding import seeded
    from anima.models.tiny import tiny_clip_image_encoder
    from anima.models.tiny_sd import tiny_sd_vae

    levels = len(TINY_BLOCK_CHANNELS)
    with seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=8,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
            block_out_channels=TINY_BLOCK_CHANNELS,
            layers_per_block=1,
            cross_attention_dim=TINY_CLIP_DIM,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        projection = CCProjection(in_channel=TINY_CLIP_DIM + 4, out_channel=TINY_CLIP_DIM)
    return {
        "unet": unet.eval(),
        "vae": tiny_sd_vae(seed).eval(),
        "image_encoder": tiny_clip_image_encoder(seed, projection_dim=TINY_CLIP_DIM).eval(),
        "cc_projection": projection.eval(),
        "clip_preprocess": dict(CLIP_PREPROCESS),
        "scheduler_config": dict(DEFAULT_SCHEDULE),
    }


def tiny_modelscope(seed: int = 0) -> dict[str, Any]:
    """Tiny random ModelScope components (`anima.models.modelscope`)."""
    from anima.models.modelscope import tiny_modelscope_components

    return tiny_modelscope_components(seed)


def tiny_controlnet_tile(unet: Any, seed: int = 0) -> Any:
    """A tiny Tile `ControlNetModel` made from the tiny SD1.5 ``unet`` (8x RGB stem), its zero
    convolutions made random so that the control image matters."""
    from anima.models.tiny_sd import randomise_zero_convs, tiny_controlnet_2d

    controlnet = tiny_controlnet_2d(unet, conditioning_channels=3, seed=seed)
    randomise_zero_convs(controlnet, seed=seed)
    return controlnet.eval()


def _cast(components: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    if dtype != torch.float32:
        for module in components.values():
            if isinstance(module, torch.nn.Module):
                module.to(dtype=dtype)
    return components


def load_components(
    weights: Weights, dtype: torch.dtype, priors: Iterable[str] = PRIORS
) -> dict[str, Any]:
    """The components of each prior in ``priors`` (`PRIORS`), keyed by prior: ``sd15``,
    ``zero123``, ``modelscope`` (dicts for the guidances' ``from_components``) and
    ``controlnet_tile`` (the Tile ControlNet; it rides on ``sd15``, loaded with it). From the
    weights directory, or tiny random ones with ``--weights tiny``."""
    wanted = list(dict.fromkeys(priors))
    unknown = [prior for prior in wanted if prior not in PRIOR_COMPONENTS]
    if unknown:
        raise ValueError(f"unknown prior {unknown[0]!r} (known: {', '.join(PRIORS)})")
    if "controlnet_tile" in wanted and "sd15" not in wanted:
        wanted.insert(0, "sd15")
    tiny = weights.builtin == "tiny"
    out: dict[str, Any] = {}
    for prior in wanted:
        if prior == "sd15":
            out[prior] = _cast(tiny_sd15(0), dtype) if tiny else load_sd15(weights, dtype)
        elif prior == "zero123":
            out[prior] = _cast(tiny_zero123(1), dtype) if tiny else load_zero123(weights, dtype)
        elif prior == "modelscope":
            out[prior] = (
                _cast(tiny_modelscope(2), dtype) if tiny else load_modelscope(weights, dtype)
            )
        else:
            out[prior] = (
                tiny_controlnet_tile(out["sd15"]["unet"], 3).to(dtype=dtype)
                if tiny
                else load_controlnet_tile(weights, dtype)
            )
    return out
