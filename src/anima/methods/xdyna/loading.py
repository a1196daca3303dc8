"""The `XDynaPipeline` components: from a weights directory, or tiny random ones.

The UNet is SD1.5's (``DIR/sd15/unet``) with, where the release's UNet checkpoint changed some
of its tensors, the release's (``DIR/xdyna/unet_spatial.safetensors``, written by
`anima.methods.xdyna.convert`; `load_spatial_changes`), plus the motion modules. How it
normalises (`anima.models.frame_norms`) is what the Dynamics-Adapter's config records
(`DynamicsAdapter.norms`: the release's for converted weights, diffusers' for weights trained
here); `XDynaPipeline` applies it around its UNet calls.

The IP-Adapter-Plus is optional: `load_ip_adapter` loads ``DIR/ip-adapter/`` when the folder is
there (the layout in `anima.methods.xdyna`), checked key by key
(`anima.models.ip_adapter`) before diffusers loads it into the UNet; ``tiny_xdyna_components``
adds a tiny random one on request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    MotionAdapter,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from anima.errors import InputError
from anima.methods.xdyna.adapter import DynamicsAdapter
from anima.methods.xdyna.convert import SPATIAL_FILE
from anima.models.ip_adapter import check_ip_adapter, load_into_unet, read_ip_adapter
from anima.models.loading import check_state, load_model, read_weights_file
from anima.models.svd import clip_feature_extractor
from anima.models.tiny_sd import (
    motion_unet,
    randomise_zero_convs,
    tiny_controlnet_2d,
    tiny_ip_adapter_plus,
    tiny_motion_unet,
    tiny_sd_unet,
    tiny_sd_vae,
    tiny_text_encoder,
    tiny_tokenizer,
    xdyna_scheduler,
)
from anima.weights import Weights

#: The pipeline's IP-Adapter components when there is none.
NO_IP_ADAPTER: dict[str, Any] = {"image_encoder": None, "feature_extractor": None}


def tiny_xdyna_components(seed: int = 0, ip_adapter: bool = False) -> dict[str, Any]:
    """Tiny random components; the adapter's output projections and the ControlNets' zero
    convs get small random values so that the video depends on reference, pose and face.
    ``ip_adapter`` adds a tiny random IP-Adapter-Plus (`tiny_ip_adapter_plus`, drawn after
    everything else: the other components are the same with or without it)."""
    unet = tiny_motion_unet(seed)
    spatial = tiny_sd_unet(seed)
    pose = tiny_controlnet_2d(spatial, 3, seed + 1)
    face = tiny_controlnet_2d(spatial, 6, seed + 2)
    randomise_zero_convs(pose, std=0.3, seed=seed + 3)
    randomise_zero_convs(face, std=0.3, seed=seed + 4)
    adapter = DynamicsAdapter.from_unet(unet)
    generator = torch.Generator().manual_seed(seed + 5)
    with torch.no_grad():
        for name in adapter.weights:
            weight = adapter.weights[name].to_out.weight
            weight.copy_(0.02 * torch.randn(weight.shape, generator=generator))
    ip_parts = tiny_ip_adapter_plus(unet, seed + 6) if ip_adapter else NO_IP_ADAPTER
    return {
        "vae": tiny_sd_vae(seed),
        "text_encoder": tiny_text_encoder(seed),
        "tokenizer": tiny_tokenizer(),
        "unet": unet,
        "adapter": adapter,
        "pose_controlnet": pose,
        "scheduler": xdyna_scheduler(),
        "face_controlnet": face,
        **ip_parts,
    }


def load_spatial_changes(unet: UNet2DConditionModel, weights: Weights) -> int:
    """Put the release's changed SD1.5 UNet tensors (``DIR/xdyna/unet_spatial.safetensors``,
    when the file is there) into ``unet``, every key and shape checked first; returns how many
    (0 without the file)."""
    path = None if weights.root is None else weights.root / SPATIAL_FILE
    if path is None or not path.is_file():
        return 0
    state = read_weights_file(path)
    check_state(
        state, unet.state_dict(), "X-Dyna spatial UNet tensors", f"in {path}", complete=False
    )
    with torch.no_grad():
        unet.load_state_dict(state, strict=False)
    return len(state)


def load_sd_components(weights: Weights, dtype: torch.dtype) -> dict[str, Any]:
    """The frozen parts: SD1.5 (``DIR/sd15``), with the release's changed tensors where the
    conversion found any (`load_spatial_changes`), and the motion modules
    (``DIR/motion-adapter``) as a `UNetMotionModel`; the release's DDIM scheduler."""
    from anima.methods.xdyna import MOTION_ADAPTER, SD15

    pickle = weights.allow_pickle
    sd = weights.require(SD15, "xdyna")
    tokenizer_dir = sd / "tokenizer"
    if not any((tokenizer_dir / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        raise InputError("SD1.5 tokenizer: vocab.json not found", f"in {tokenizer_dir}")
    unet2d = load_model(UNet2DConditionModel, sd / "unet", "SD1.5 UNet", pickle, dtype)
    load_spatial_changes(unet2d, weights)
    motion = load_model(
        MotionAdapter, weights.require(MOTION_ADAPTER, "xdyna"), "motion adapter", pickle, dtype
    )
    unet = motion_unet(unet2d, motion)
    if unet.dtype != dtype:
        unet.to(dtype=dtype)
    return {
        "vae": load_model(AutoencoderKL, sd / "vae", "SD1.5 VAE", pickle, dtype),
        "text_encoder": load_model(
            CLIPTextModel, sd / "text_encoder", "SD1.5 text encoder", pickle, dtype
        ),
        "tokenizer": CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True),
        "unet": unet,
        # The release's DDIM (linear betas), not the PNDM config SD1.5 ships.
        "scheduler": xdyna_scheduler(),
    }


def load_xdyna_parts(weights: Weights, dtype: torch.dtype, required: bool = True) -> dict[str, Any]:
    """The X-Dyna parts from ``DIR/xdyna/*``: adapter, pose and face ControlNets. Absent parts
    are errors when ``required`` (the face ControlNet is always optional), else None."""
    from anima.methods.xdyna import XDYNA_ADAPTER, XDYNA_FACE, XDYNA_POSE

    parts: dict[str, Any] = {}
    specs = (
        ("adapter", XDYNA_ADAPTER, DynamicsAdapter),
        ("pose_controlnet", XDYNA_POSE, ControlNetModel),
        ("face_controlnet", XDYNA_FACE, ControlNetModel),
    )
    for key, component, cls in specs:
        folder = weights.component_dir(component)
        if folder is None and required and not component.optional:
            folder = weights.require(component, "xdyna")
        parts[key] = (
            None
            if folder is None
            else load_model(cls, folder, component.name, weights.allow_pickle, dtype)
        )
    return parts


def check_adapter_layers(adapter: DynamicsAdapter, unet: Any, where: str) -> None:
    """Every layer the adapter names must be an attention layer of the UNet."""
    processors = unet.attn_processors
    missing = [name for name in adapter.config.layers if f"{name}.processor" not in processors]
    if missing:
        raise InputError(f"Dynamics-Adapter layer not in the UNet: {missing[0]}", where)


def ip_adapter_file(folder: Path, allow_pickle: bool) -> Path:
    """The IP-Adapter checkpoint in ``folder``: the safetensors file, else (with
    ``allow_pickle``) IP-Adapter's own ``.bin`` under the same name."""
    from anima.methods.xdyna import IP_ADAPTER_WEIGHTS

    safe = folder / IP_ADAPTER_WEIGHTS
    pickled = safe.with_suffix(".bin")
    if safe.is_file() or not pickled.is_file():
        return safe  # read_ip_adapter names it when it is missing
    if not allow_pickle:
        raise InputError(
            f"IP-Adapter: only {pickled.name} (pickle); pass --allow-pickle, or convert it once "
            "(`anima weights convert xdyna --ip-adapter`)",
            f"in {folder}",
        )
    return pickled


def load_ip_adapter(weights: Weights, unet: Any, dtype: torch.dtype) -> dict[str, Any]:
    """The IP-Adapter-Plus of ``DIR/ip-adapter/`` when that folder exists, loaded into ``unet``
    (checked first: resampler, ``to_k_ip``/``to_v_ip`` of every cross-attention, image
    encoder width); returns the ``image_encoder`` and ``feature_extractor`` components (both
    None without the folder). The release preprocesses with ``CLIPImageProcessor()``'s
    defaults (224 px, CLIP mean and std): `clip_feature_extractor`."""
    from anima.methods.xdyna import IMAGE_ENCODER_DIR, XDYNA_IP_ADAPTER

    folder = None if weights.root is None else weights.root / XDYNA_IP_ADAPTER.subdir
    if folder is None or not folder.is_dir():
        return dict(NO_IP_ADAPTER)
    encoder = load_model(
        CLIPVisionModelWithProjection,
        folder / IMAGE_ENCODER_DIR,
        "IP-Adapter image encoder",
        weights.allow_pickle,
        dtype,
    )
    path = ip_adapter_file(folder, weights.allow_pickle)
    state = read_ip_adapter(path, weights.allow_pickle)
    check_ip_adapter(state, unet, f"in {path}", encoder.config.hidden_size)
    load_into_unet(unet, state)
    return {"image_encoder": encoder, "feature_extractor": clip_feature_extractor()}


def load_xdyna_components(weights: Weights, dtype: torch.dtype) -> dict[str, Any]:
    """Every `XDynaPipeline` component from a weights directory (module docstring of
    `anima.methods.xdyna`)."""
    components = load_sd_components(weights, dtype) | load_xdyna_parts(weights, dtype)
    check_adapter_layers(components["adapter"], components["unet"], f"in {weights.root}/xdyna")
    return components | load_ip_adapter(weights, components["unet"], dtype)


def load_components(weights: Weights, dtype: torch.dtype) -> dict[str, Any]:
    """The keyword arguments of `XDynaPipeline`: `load_xdyna_components` from the weights
    directory, or, with ``--weights tiny``, `tiny_xdyna_components` cast to ``dtype``."""
    if weights.builtin != "tiny":
        return load_xdyna_components(weights, dtype)
    components = tiny_xdyna_components(seed=0)
    for module in components.values():
        if isinstance(module, torch.nn.Module) and dtype != torch.float32:
            module.to(dtype=dtype)
    return components
