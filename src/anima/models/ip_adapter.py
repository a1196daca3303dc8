"""IP-Adapter-Plus checkpoints for SD1.5-family UNets, checked, then loaded by diffusers.

The checkpoint format is IP-Adapter's (h94/IP-Adapter ``models/ip-adapter-plus_sd15.bin``, the
format diffusers' ``IPAdapterMixin.load_ip_adapter`` reads): two state dicts,

- ``image_proj``: the Plus resampler, ``num_queries`` learned latents attending to the CLIP
  vision encoder's penultimate hidden states, under IP-Adapter's names: ``latents``,
  ``proj_in.*``, ``proj_out.*``, ``norm_out.*`` and, per layer ``i``, the attention
  ``layers.i.0.{norm1,norm2}.*``, ``layers.i.0.{to_q,to_kv,to_out}.weight`` and the feed-forward
  ``layers.i.1.{0,1,3}.*`` (LayerNorm, Linear, GELU, Linear);
- ``ip_adapter``: ``<n>.to_k_ip.weight`` and ``<n>.to_v_ip.weight`` of every cross-attention
  layer, numbered ``n = 1, 3, 5, ...`` in ``unet.attn_processors`` order (IP-Adapter numbers all
  attention processors, cross-attentions odd; diffusers' loader counts the same way and skips
  the motion modules of a `UNetMotionModel`).

A safetensors file holds the same tensors under ``image_proj.`` / ``ip_adapter.`` prefixes
(what diffusers reads from h94's ``.safetensors`` files, and what `save_ip_adapter` writes).

`check_ip_adapter` checks every key and shape against the UNet (and the image encoder's width)
with one-line `InputError`s; `load_into_unet` then hands the checkpoint to diffusers
(``UNet2DConditionLoadersMixin._load_ip_adapter_weights``, the loader behind
``load_ip_adapter``): `IPAdapterAttnProcessor2_0` on every cross-attention and an
`IPAdapterPlusImageProjection` as ``unet.encoder_hid_proj``. Diffusers rebuilds the resampler
with 4 layers of 64-channel heads and a 4x feed-forward (ip-adapter-plus_sd15's values), so
only those are accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.models.attention_processor import (
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
)
from diffusers.utils import logging as diffusers_logging
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from anima.errors import InputError
from anima.models.loading import check_state, read_weights_file
from anima.weights import PICKLE_SUFFIXES

#: The two parts of an IP-Adapter checkpoint.
IMAGE_PROJ, IP_ADAPTER = "image_proj", "ip_adapter"
#: The resampler diffusers builds for a Plus checkpoint (``_convert_ip_adapter_image_proj_to_
#: diffusers``): depth, head width and feed-forward ratio are fixed there.
PLUS_DEPTH, PLUS_HEAD_DIM, PLUS_FF_MULT = 4, 64, 4
#: Attention processors diffusers puts on the cross-attentions of a UNet with an IP-Adapter.
IP_PROCESSORS = (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)

IPAdapterState = dict[str, dict[str, Tensor]]


def _meta(*shape: int) -> Tensor:
    return torch.empty(shape, device="meta")


def resampler_shapes(
    embed_dims: int, hidden_dims: int, output_dims: int, heads: int, num_queries: int
) -> dict[str, Tensor]:
    """The ``image_proj`` keys of a Plus resampler, each with its shape (meta tensors)."""
    inner, ff = heads * PLUS_HEAD_DIM, hidden_dims * PLUS_FF_MULT
    shapes: dict[str, tuple[int, ...]] = {
        "latents": (1, num_queries, hidden_dims),
        "proj_in.weight": (hidden_dims, embed_dims),
        "proj_in.bias": (hidden_dims,),
        "proj_out.weight": (output_dims, hidden_dims),
        "proj_out.bias": (output_dims,),
        "norm_out.weight": (output_dims,),
        "norm_out.bias": (output_dims,),
    }
    for i in range(PLUS_DEPTH):
        attn, mlp = f"layers.{i}.0", f"layers.{i}.1"
        for norm in (f"{attn}.norm1", f"{attn}.norm2", f"{mlp}.0"):
            shapes[f"{norm}.weight"] = shapes[f"{norm}.bias"] = (hidden_dims,)
        shapes[f"{attn}.to_q.weight"] = (inner, hidden_dims)
        shapes[f"{attn}.to_kv.weight"] = (2 * inner, hidden_dims)
        shapes[f"{attn}.to_out.weight"] = (hidden_dims, inner)
        shapes[f"{mlp}.1.weight"] = (ff, hidden_dims)
        shapes[f"{mlp}.3.weight"] = (hidden_dims, ff)
    return {key: _meta(*shape) for key, shape in shapes.items()}


def cross_attention_layers(unet: Any) -> dict[str, str]:
    """Each cross-attention layer of ``unet`` (``...attn2``, motion modules excluded) -> its
    number in the ``ip_adapter`` part (1, 3, 5, ...; see the module docstring)."""
    names = [
        name.removesuffix(".processor")
        for name in unet.attn_processors
        if not name.endswith("attn1.processor") and "motion_modules" not in name
    ]
    return {name: str(2 * i + 1) for i, name in enumerate(names)}


def ip_attention_shapes(unet: Any) -> dict[str, Tensor]:
    """The ``ip_adapter`` keys for ``unet``, each shaped as its layer's ``to_k``: the image
    tokens' keys and values have the text's width."""
    shapes = {}
    for layer, number in cross_attention_layers(unet).items():
        to_k = unet.get_submodule(layer).to_k
        for proj in ("to_k_ip", "to_v_ip"):
            shapes[f"{number}.{proj}.weight"] = _meta(to_k.out_features, to_k.in_features)
    return shapes


# --------------------------------------------------------------------------- reading, writing


def _read_safetensors(path: Path) -> IPAdapterState:
    state: IPAdapterState = {IMAGE_PROJ: {}, IP_ADAPTER: {}}
    with safe_open(path, framework="pt", device="cpu") as file:
        for key in file.keys():  # noqa: SIM118 - safe_open has no __iter__
            part, dot, name = key.partition(".")
            if part not in state or not dot:
                raise InputError(f"IP-Adapter: unknown key {key}", str(path))
            state[part][name] = file.get_tensor(key)
    return state


def _read_pickle(path: Path) -> IPAdapterState:
    loaded = read_weights_file(path)
    if not isinstance(loaded, Mapping):
        raise InputError(f"{path.name} holds no state dict", str(path))
    return {
        part: dict(value) if isinstance(value, Mapping) else {} for part, value in loaded.items()
    }


def read_ip_adapter(path: Path, allow_pickle: bool) -> IPAdapterState:
    """An IP-Adapter checkpoint (safetensors, or a pickle with ``allow_pickle``) as its two
    state dicts; anything else in it is an `InputError`."""
    if not path.is_file():
        raise InputError(f"IP-Adapter: {path.name} not found", f"in {path.parent}")
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    elif path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise InputError(
                f"{path.name} is a pickle file; pass --allow-pickle to read it", f"in {path.parent}"
            )
        state = _read_pickle(path)
    else:
        raise InputError(f"IP-Adapter: {path.name} is neither safetensors nor a pickle", str(path))
    for part in (IMAGE_PROJ, IP_ADAPTER):
        values = state.get(part)
        if not values:
            raise InputError(f"IP-Adapter: no {part} weights", str(path))
        bad = next((k for k, v in values.items() if not isinstance(v, Tensor)), None)
        if bad is not None:
            raise InputError(f"IP-Adapter: {part}.{bad} is not a tensor", str(path))
    extra = sorted(set(state) - {IMAGE_PROJ, IP_ADAPTER})
    if extra:
        raise InputError(f"IP-Adapter: unknown entry {extra[0]}", str(path))
    return state


def save_ip_adapter(state: IPAdapterState, path: Path) -> None:
    """``state`` as one safetensors file, ``image_proj.`` / ``ip_adapter.`` prefixed."""
    flat = {
        f"{part}.{key}": value.detach().contiguous().clone()
        for part in (IMAGE_PROJ, IP_ADAPTER)
        for key, value in state[part].items()
    }
    save_file(flat, str(path))


# --------------------------------------------------------------------------- checking, loading


def _plus_dims(image_proj: Mapping[str, Tensor], where: str) -> dict[str, int]:
    """The resampler's sizes, read from the tensors that carry them."""
    for key in ("latents", "proj_in.weight", "proj_out.weight", "layers.0.0.to_q.weight"):
        if key not in image_proj:
            raise InputError(
                f"IP-Adapter: image_proj.{key} not found (not an IP-Adapter-Plus checkpoint)", where
            )
    latents, inner = image_proj["latents"], image_proj["layers.0.0.to_q.weight"].shape[0]
    if latents.ndim != 3 or inner % PLUS_HEAD_DIM:
        raise InputError(
            f"IP-Adapter: image_proj latents {tuple(latents.shape)} / attention width {inner} "
            f"are not a Plus resampler's (1, queries, width) / multiple of {PLUS_HEAD_DIM}",
            where,
        )
    return {
        "embed_dims": image_proj["proj_in.weight"].shape[-1],
        "hidden_dims": latents.shape[2],
        "output_dims": image_proj["proj_out.weight"].shape[0],
        "heads": inner // PLUS_HEAD_DIM,
        "num_queries": latents.shape[1],
    }


def check_ip_adapter(
    state: IPAdapterState, unet: Any, where: str, image_features: int | None = None
) -> None:
    """Every key and shape of an IP-Adapter-Plus checkpoint for ``unet``: a resampler whose
    tokens have the UNet's cross-attention width and (given ``image_features``) that reads the
    image encoder's hidden size, and ``to_k_ip``/``to_v_ip`` for every cross-attention."""
    dims = _plus_dims(state[IMAGE_PROJ], where)
    expected = resampler_shapes(**dims)
    check_state(state[IMAGE_PROJ], expected, "IP-Adapter", where, lambda key: f"{IMAGE_PROJ}.{key}")
    width = unet.config.cross_attention_dim
    if dims["output_dims"] != width:
        raise InputError(
            f"IP-Adapter: image_proj makes {dims['output_dims']}-channel tokens, the UNet's "
            f"cross-attention takes {width}",
            where,
        )
    if image_features is not None and dims["embed_dims"] != image_features:
        raise InputError(
            f"IP-Adapter: image_proj reads {dims['embed_dims']}-channel image features, the "
            f"image encoder gives {image_features}",
            where,
        )
    shapes = ip_attention_shapes(unet)
    check_state(state[IP_ADAPTER], shapes, "IP-Adapter", where, lambda key: f"{IP_ADAPTER}.{key}")


def load_into_unet(unet: Any, state: IPAdapterState) -> None:
    """Diffusers' IP-Adapter loader on a checked ``state``: IP attention processors on the
    cross-attentions, the resampler as ``unet.encoder_hid_proj`` (scale 1); without its
    warning about the cast to the UNet's own dtype and device it ends with (a no-op here)."""
    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        unet._load_ip_adapter_weights([state])
    finally:
        diffusers_logging.set_verbosity(previous)


def ip_adapter_loaded(unet: Any) -> bool:
    """Whether ``unet`` holds an IP-Adapter (its forward then needs ``image_embeds``)."""
    return (
        getattr(unet, "encoder_hid_proj", None) is not None
        and unet.config.encoder_hid_dim_type == "ip_image_proj"
    )


def ip_processors(unet: Any) -> list[Any]:
    """The IP-Adapter attention processors of ``unet``, in layer order."""
    return [p for p in unet.attn_processors.values() if isinstance(p, IP_PROCESSORS)]
