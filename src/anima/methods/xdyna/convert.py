"""``anima weights convert xdyna``: the X-Dyna release checkpoints into our weights layout.

The release ships three pickles (``torch.load``; read only with ``--allow-pickle``)::

    unet-checkpoint-epoch-5.ckpt             AnimateDiff UNet3D: motion modules, the
                                             Dynamics-Adapter, IP-Adapter keys, maybe SD's own
    controlnet-checkpoint-epoch-5.ckpt       pose ControlNetModel (3 conditioning channels)
    controlnet-face-checkpoint-epoch-2.ckpt  S-Face ControlNetModel (6 conditioning channels)

each a state dict (under ``state_dict`` if there is one; a ``module.`` prefix is dropped). The
UNet checkpoint is split by name:

- ``<layer>.to_q_ff.weight``, ``<layer>.to_out_ff.{weight,bias}`` (``<layer>`` a spatial
  self-attention ``...attn1``) -> ``DIR/xdyna/adapter`` (`DynamicsAdapter`,
  ``weights.layers.<layer, '.' as '-'>.{to_q,to_out}.*``);
- ``{down,up}_blocks.i.motion_modules.j.temporal_transformer.*`` -> ``DIR/motion-adapter``
  (diffusers `MotionAdapter`: ``temporal_transformer.`` dropped, ``attention_blocks.{0,1}`` ->
  ``attn{1,2}``, ``norms.{0,1}`` -> ``norm{1,2}``, ``ff_norm`` -> ``norm3``). AnimateDiff gives
  each of the two temporal attentions its own ``pos_encoder.pe`` buffer; diffusers adds ONE
  ``pos_embed.pe`` a transformer block before both attentions. Both are the same deterministic
  sinusoid, so the release's buffers are checked against the one diffusers computes (max length
  `MOTION_MAX_SEQ_LENGTH`, within `PE_TOLERANCE`; a checkpoint without them is accepted) and
  diffusers' is written;
- ``<layer>.to_k_ip.weight`` / ``<layer>.to_v_ip.weight`` (``<layer>`` a cross-attention
  ``...attn2``): IP-Adapter-Plus's image-token keys and values. The release builds its UNet with
  ``unet_use_ipadapter: true`` (commit 9a54f8e, ``configs/x_dyna.yaml``; ``IPAdapterAttention``
  in ``animatediff/models/attention.py``) and loads this checkpoint (``strict=False``) over an
  IP-Adapter-Plus initialisation, so these are the ones it runs. They are checked (every
  cross-attention, the shape of its ``to_k``) and, with ``--ip-adapter`` (IP-Adapter's
  ``ip-adapter-plus_sd15.bin``, whose ``image_proj`` resampler the release loads on its own),
  written with that resampler to ``DIR/ip-adapter/ip-adapter-plus_sd15.safetensors`` in
  diffusers' IP-Adapter format (renumbered ``<n>.to_{k,v}_ip.weight``,
  `anima.models.ip_adapter`); without ``--ip-adapter`` they are only checked;
- every other key must be a key of SD1.5's `UNet2DConditionModel` (built from
  ``--sd15``'s ``unet/config.json``) with its shape. The release loads its UNet checkpoint over
  SD1.5 (non-strictly), so these are the spatial weights it runs: each is compared with the same
  tensor of ``--sd15``'s UNet (`same_tensor`: equal, or equal up to rounding where their dtypes
  differ). Where all match nothing is written (the UNet is the frozen SD1.5 one); the ones that
  differ are written, as the release has them, to ``DIR/xdyna/unet_spatial.safetensors``
  (`SPATIAL_FILE`), which the loader puts over ``DIR/sd15``'s UNet, and one line says how many.
  A checkpoint of trained parameters only, without them, is accepted (and, like one whose
  spatial tensors all match, removes a `SPATIAL_FILE` an earlier conversion left).

The Dynamics-Adapter's config records the release's normalisation (`RELEASE_NORMS`,
`anima.models.frame_norms`; X-Dyna §3.1, §4.1: AnimateDiff v1's UNet): its motion modules
normalise each frame on its own, its resnets and output norm pool over all frames of a pass;
diffusers' `UNetMotionModel` does the opposite, and `XDynaPipeline` runs the UNet as recorded.

The ControlNets are `ControlNetModel.from_unet` of that UNet (3 or 6 conditioning channels), key
for key. ``--ip-adapter`` without ``--unet`` (or with a UNet checkpoint without IP keys) writes
IP-Adapter's file with its own ``to_k_ip``/``to_v_ip``. The image encoder that goes with it
(IP-Adapter's ``models/image_encoder``, already a transformers folder) is copied by hand to
``DIR/ip-adapter/image_encoder/``. Every input is checked (unknown key, missing key, shape)
before anything is written; each output folder or file is then written atomically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel, MotionAdapter, UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin
from safetensors import safe_open
from safetensors.torch import save_file

from anima.errors import InputError
from anima.io import atomic_dir, atomic_path
from anima.methods.xdyna.adapter import DynamicsAdapter
from anima.models.frame_norms import FrameNorms
from anima.models.ip_adapter import (
    IMAGE_PROJ,
    IP_ADAPTER,
    IPAdapterState,
    check_ip_adapter,
    cross_attention_layers,
    ip_attention_shapes,
    read_ip_adapter,
    save_ip_adapter,
)
from anima.models.loading import check_state, read_weights_file
from anima.weights import PICKLE_SUFFIXES, checkpoint_format

#: The release's motion modules: AnimateDiff v1 (8 heads, positions up to 24 frames).
MOTION_NUM_ATTENTION_HEADS = 8
MOTION_MAX_SEQ_LENGTH = 24
#: Largest difference allowed between a release ``pos_encoder.pe`` and diffusers' sinusoid.
PE_TOLERANCE = 1e-4

#: Output folders under ``DIR`` (`anima.methods.xdyna`'s components).
MOTION_DIR = "motion-adapter"
ADAPTER_DIR = "xdyna/adapter"
POSE_DIR = "xdyna/pose_controlnet"
FACE_DIR = "xdyna/face_controlnet"
IP_FILE = "ip-adapter/ip-adapter-plus_sd15.safetensors"
#: The release UNet checkpoint's SD1.5 tensors that differ from the user's SD1.5 UNet.
SPATIAL_FILE = "xdyna/unet_spatial.safetensors"

#: How the release's UNet normalises (AnimateDiff v1's UNet3D): motion modules per frame,
#: resnets and ``conv_norm_out`` pooled over the frames of a pass.
RELEASE_NORMS = FrameNorms(motion="per_frame", resnet="pooled")

_ADAPTER_KEY = re.compile(r"(?P<layer>.+\.attn1)\.(?P<proj>to_q_ff|to_out_ff)\.(?P<param>\w+)")
_IP_KEY = re.compile(r".+\.attn2\.to_[kv]_ip\.\w+")
_MOTION_KEY = re.compile(r"(?P<kind>down|up)_blocks\.(?P<block>\d+)\.motion_modules\.(?P<j>\d+)\.")
_MOTION_RENAMES = (
    (re.compile(r"\.attention_blocks\.(\d+)\."), "attn"),
    (re.compile(r"\.norms\.(\d+)\."), "norm"),
)
_MOTION_ORIGINAL = (
    ("attn1", "attention_blocks.0"),
    ("attn2", "attention_blocks.1"),
    ("norm1", "norms.0"),
    ("norm2", "norms.1"),
    ("norm3", "ff_norm"),
)
_ADAPTER_OURS = re.compile(
    r"weights\.layers\.(?P<layer>[^.]+)\.(?P<proj>to_q|to_out)\.(?P<param>\w+)"
)
_POS_ENCODER = re.compile(r"(?P<block>.+\.transformer_blocks\.\d+)\.attn[12]\.pos_encoder\.pe")


@dataclass
class ConversionReport:
    """What `convert_xdyna` wrote and what it found in the checkpoints."""

    written: list[Path] = field(default_factory=list)
    adapter_keys: int = 0  # Dynamics-Adapter tensors written
    motion_keys: int = 0  # motion-module tensors written (position encodings not counted)
    position_encodings: int = 0  # release pos_encoder.pe buffers checked against diffusers'
    spatial_keys: int = 0  # SD UNet keys found in the UNet checkpoint (checked, compared)
    spatial_differ: int = 0  # of those, tensors that differ from --sd15's UNet (written)
    spatial_removed: Path | None = None  # a stale SPATIAL_FILE removed
    ip_keys: int = 0  # to_k_ip / to_v_ip tensors found in the UNet checkpoint (checked)
    controlnet_keys: dict[str, int] = field(default_factory=dict)  # folder -> tensors written
    ip_adapter: str | None = None  # what the IP-Adapter file was made of, when written

    def lines(self) -> list[str]:
        out = [f"wrote {path}" for path in self.written]
        if self.adapter_keys or self.motion_keys:
            written = "written" if self.ip_keys and self.ip_adapter else "checked"
            out.append(
                f"UNet checkpoint: {self.adapter_keys} Dynamics-Adapter and {self.motion_keys} "
                f"motion-module tensors ({self.position_encodings} position encodings checked), "
                f"{self.spatial_keys} SD1.5 UNet keys checked and compared, "
                f"{self.ip_keys} IP-Adapter keys {written}"
            )
            if self.spatial_keys:
                out.append(self.spatial_line())
            if self.spatial_removed is not None:
                out.append(f"removed {self.spatial_removed} (from an earlier conversion)")
            if self.ip_keys and not self.ip_adapter:
                out.append(
                    "IP-Adapter keys not written: pass --ip-adapter ip-adapter-plus_sd15.bin "
                    "(the image_proj resampler they go with)"
                )
        out += [f"{name}: {count} tensors" for name, count in self.controlnet_keys.items()]
        if self.ip_adapter:
            out.append(f"IP-Adapter: {self.ip_adapter}")
        return out

    def spatial_line(self) -> str:
        """How many of the UNet checkpoint's SD1.5 tensors differ from the user's SD1.5."""
        if not self.spatial_differ:
            return (
                f"SD1.5 UNet: all {self.spatial_keys} tensors of the UNet checkpoint equal "
                "--sd15's (nothing written)"
            )
        return (
            f"SD1.5 UNet: {self.spatial_differ} of {self.spatial_keys} tensors of the UNet "
            f"checkpoint differ from --sd15's; the release's are written to {SPATIAL_FILE}"
        )


# --------------------------------------------------------------------------- reading


def read_checkpoint(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file (``state_dict`` entry if any, ``module.`` dropped)."""
    if not path.is_file():
        raise InputError("checkpoint not found", str(path))
    safetensors = path.suffix == ".safetensors"
    if not safetensors and not allow_pickle:
        raise InputError(
            f"{path.name} is a pickle file; pass --allow-pickle to convert it", f"in {path.parent}"
        )
    state = read_weights_file(path)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise InputError(f"{path.name} holds no state dict", str(path))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("module.") if isinstance(key, str) else key
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise InputError(f"{key!r} is not a tensor entry of a state dict", str(path))
        if name in out:
            raise InputError(f"{name} appears with and without the module. prefix", str(path))
        out[name] = value
    return out


def sd_unet_config(sd15: Path) -> dict[str, Any]:
    """The SD1.5 UNet config from ``sd15/unet/config.json``."""
    path = sd15 / "unet" / "config.json"
    if not path.is_file():
        raise InputError("SD1.5 UNet: config.json not found", f"in {path.parent}")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"SD1.5 UNet: cannot read config.json ({err})", str(path)) from err
    name = config.get("_class_name", UNet2DConditionModel.__name__)
    if name != UNet2DConditionModel.__name__:
        raise InputError(f"SD1.5 UNet: config.json describes a {name}", str(path))
    return config


def _empty_sd_unet(config: dict[str, Any], where: str) -> UNet2DConditionModel:
    try:
        with init_empty_weights():
            return UNet2DConditionModel.from_config(config)
    except (TypeError, ValueError) as err:
        raise InputError(f"SD1.5 UNet: config.json is not valid ({err})", where) from err


def sd_unet_files(folder: Path, allow_pickle: bool) -> list[Path]:
    """The weight files of the SD1.5 UNet in ``folder`` (one file or the shards of an index),
    in the format `checkpoint_format` picks (safetensors first, pickle with ``allow_pickle``)."""
    found = checkpoint_format(folder, "SD1.5 UNet", allow_pickle)
    infix = f".{found['variant']}" if found["variant"] else ""
    suffixes = (".safetensors",) if found["use_safetensors"] else PICKLE_SUFFIXES
    for stem in ("diffusion_pytorch_model", "model"):
        for suffix in suffixes:
            name = f"{stem}{infix}{suffix}"
            if (folder / name).is_file():
                return [folder / name]
            index = folder / f"{name}.index.json"
            if index.is_file():
                try:
                    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                except (OSError, ValueError, KeyError, AttributeError) as err:
                    raise InputError(f"SD1.5 UNet: cannot read {index.name}", str(index)) from err
                return [folder / shard for shard in shards]
    raise InputError("SD1.5 UNet: no weights file found", f"in {folder}")


def _file_tensors(path: Path, keys: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of ``keys`` in the weights file ``path``, one at a time (safetensors are
    read lazily)."""
    if path.suffix != ".safetensors":
        state = read_weights_file(path)
        if not isinstance(state, Mapping):
            raise InputError(f"{path.name} holds no state dict", str(path))
        yield from ((key, value) for key, value in state.items() if key in keys)
        return
    try:
        with safe_open(str(path), framework="pt") as file:
            for key in file.keys():
                if key in keys:
                    yield key, file.get_tensor(key)
    except (OSError, RuntimeError, ValueError) as err:
        raise InputError(f"cannot read {path.name}: {err}", str(path)) from err


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same values: exactly, when their dtypes agree; else
    (floats) up to rounding to the coarser of the two dtypes, elementwise ``|a - b| <= eps *
    (max(|a|, |b|) + tiny)`` in that dtype's ``finfo`` (a float16 or bfloat16 copy of a float32
    tensor, or of each other, is the same tensor)."""
    if a.shape != b.shape:
        return False
    if a.dtype == b.dtype or not (a.is_floating_point() and b.is_floating_point()):
        return a.dtype == b.dtype and torch.equal(a, b)
    coarser = torch.finfo(max(a.dtype, b.dtype, key=lambda dtype: torch.finfo(dtype).eps))
    x, y = a.double(), b.double()
    bound = coarser.eps * (torch.maximum(x.abs(), y.abs()) + coarser.tiny)
    return bool(((x - y).abs() <= bound).all())


def differing_sd_tensors(
    spatial: Mapping[str, torch.Tensor], sd15: Path, allow_pickle: bool
) -> dict[str, torch.Tensor]:
    """The tensors of ``spatial`` (the release UNet checkpoint's SD1.5 keys) that differ from
    ``sd15``'s UNet (`same_tensor`), as the release has them."""
    folder = sd15 / "unet"
    wanted, differ = set(spatial), {}
    for path in sd_unet_files(folder, allow_pickle):
        for key, theirs in _file_tensors(path, wanted):
            wanted.discard(key)
            if not same_tensor(spatial[key], theirs):
                differ[key] = spatial[key]
    if wanted:
        more = f" (and {len(wanted) - 1} more)" if len(wanted) > 1 else ""
        raise InputError(f"SD1.5 UNet: weights lack {min(wanted)}{more}", f"in {folder}")
    return differ


# --------------------------------------------------------------------------- checking


def _motion_name(key: str) -> str:
    """Our (diffusers) name of a motion-module key without ``temporal_transformer.``."""
    for pattern, prefix in _MOTION_RENAMES:
        key = pattern.sub(lambda m, p=prefix: f".{p}{int(m.group(1)) + 1}.", key)
    return key.replace(".ff_norm.", ".norm3.")


def release_motion_name(key: str) -> str:
    """The release's (AnimateDiff's) name of a diffusers `MotionAdapter` key."""
    match = _MOTION_KEY.match(key)
    if match is None:
        return key
    head, rest = key[: match.end()], key[match.end() :]
    for ours, theirs in _MOTION_ORIGINAL:
        rest = re.sub(rf"^(transformer_blocks\.\d+\.){ours}\.", rf"\g<1>{theirs}.", rest)
    return f"{head}temporal_transformer.{rest}"


def release_adapter_name(key: str) -> str:
    """The release's name of a `DynamicsAdapter` key (``<layer>.to_q_ff.weight``, ...)."""
    match = _ADAPTER_OURS.fullmatch(key)
    if match is None:
        return key
    return f"{match['layer'].replace('-', '.')}.{match['proj']}_ff.{match['param']}"


@dataclass
class _UNetParts:
    adapter: dict[str, torch.Tensor] = field(default_factory=dict)
    motion: dict[str, torch.Tensor] = field(default_factory=dict)
    position: dict[str, torch.Tensor] = field(default_factory=dict)  # release name -> pe
    spatial: dict[str, torch.Tensor] = field(default_factory=dict)
    ip: dict[str, torch.Tensor] = field(default_factory=dict)  # release names
    motion_modules: dict[tuple[str, int], set[int]] = field(default_factory=dict)


def _split_unet(state: Mapping[str, torch.Tensor]) -> _UNetParts:
    parts = _UNetParts()
    for key, value in state.items():
        adapter = _ADAPTER_KEY.fullmatch(key)
        motion = _MOTION_KEY.match(key)
        if _IP_KEY.fullmatch(key):
            parts.ip[key] = value
        elif adapter:
            layer = adapter["layer"].replace(".", "-")
            proj = "to_q" if adapter["proj"] == "to_q_ff" else "to_out"
            name = f"weights.layers.{layer}.{proj}.{adapter['param']}"
            parts.adapter[name] = value
        elif motion:
            module = (motion["kind"], int(motion["block"]))
            parts.motion_modules.setdefault(module, set()).add(int(motion["j"]))
            head, _, rest = key.partition(".temporal_transformer.")
            if not rest:  # not an AnimateDiff motion module: reported as unknown
                parts.spatial[key] = value
            elif rest.endswith(".pos_encoder.pe"):
                parts.position[key] = value
            else:
                name = _motion_name(f"{head}.{rest}")
                parts.motion[name] = value
        else:
            parts.spatial[key] = value
    return parts


def _motion_config(parts: _UNetParts, unet_config: dict[str, Any], where: str) -> dict:
    """The release's MotionAdapter config, its layer counts read from the keys and checked
    against the SD1.5 UNet's."""
    channels = list(unet_config["block_out_channels"])
    per_block = unet_config["layers_per_block"]
    if not isinstance(per_block, int):
        raise InputError(f"SD1.5 UNet: layers_per_block {per_block} is not one number", where)
    if not parts.motion_modules:
        raise InputError(
            "UNet checkpoint: no motion-module keys (down_blocks.*.motion_modules)", where
        )
    for kind, extra in (("down", 0), ("up", 1)):
        blocks = sorted(b for k, b in parts.motion_modules if k == kind)
        if blocks != list(range(len(channels))):
            raise InputError(
                f"UNet checkpoint: motion modules in {kind}_blocks {blocks}, the SD1.5 UNet has "
                f"{len(channels)} {kind} blocks",
                where,
            )
        for block in blocks:
            count = max(parts.motion_modules[(kind, block)]) + 1
            if count != per_block + extra:
                raise InputError(
                    f"UNet checkpoint: {count} motion modules in {kind}_blocks.{block}, expected "
                    f"{per_block + extra} (SD1.5 layers_per_block {per_block})",
                    where,
                )
    return {
        "block_out_channels": channels,
        "motion_layers_per_block": per_block,
        "motion_num_attention_heads": MOTION_NUM_ATTENTION_HEADS,
        "motion_norm_num_groups": 32,
        "motion_max_seq_length": MOTION_MAX_SEQ_LENGTH,
        "use_motion_mid_block": False,
    }


def _check_positions(
    position: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor], where: str
) -> None:
    """Each release ``pos_encoder.pe`` equals diffusers' ``pos_embed.pe`` of its block."""
    for key in sorted(position):
        match = _POS_ENCODER.fullmatch(_motion_name(key.replace(".temporal_transformer.", ".")))
        target = f"{match['block']}.pos_embed.pe" if match else None
        if target not in buffers:
            raise InputError(f"UNet checkpoint: unknown key {key}", where)
        got, want = position[key], buffers[target]
        if tuple(got.shape) != tuple(want.shape):
            raise InputError(
                f"UNet checkpoint: {key} has shape {tuple(got.shape)}, expected "
                f"{tuple(want.shape)}",
                where,
            )
        error = (got.float() - want.float()).abs().max().item()
        if not error <= PE_TOLERANCE:
            raise InputError(
                f"UNet checkpoint: {key} is not the sinusoidal position encoding "
                f"(differs by {error:.3g})",
                where,
            )


def _owned(value: torch.Tensor) -> torch.Tensor:
    """``value`` as a contiguous tensor owning its storage (safetensors refuses shared ones)."""
    if value.is_contiguous() and value.untyped_storage().nbytes() == value.nbytes:
        return value
    return value.clone(memory_format=torch.contiguous_format)


def _assigned(model: ModelMixin, state: Mapping[str, torch.Tensor]) -> ModelMixin:
    model.load_state_dict({k: _owned(v) for k, v in state.items()}, strict=True, assign=True)
    return model


@dataclass
class _Output:
    subdir: str
    model: ModelMixin
    count: int


def release_ip_names(sd_unet: UNet2DConditionModel) -> dict[str, str]:
    """Diffusers' ``ip_adapter`` key (``<n>.to_k_ip.weight``) -> the release's
    (``<layer>.to_k_ip.weight``), for every cross-attention of the SD1.5 UNet."""
    return {
        f"{number}.{proj}.weight": f"{layer}.{proj}.weight"
        for layer, number in cross_attention_layers(sd_unet).items()
        for proj in ("to_k_ip", "to_v_ip")
    }


def _ip_attention(
    ip: Mapping[str, torch.Tensor], sd_unet: UNet2DConditionModel, where: str
) -> dict[str, torch.Tensor]:
    """The release's ``to_k_ip``/``to_v_ip`` under diffusers' names, all of them checked."""
    names = release_ip_names(sd_unet)
    ours = {release: key for key, release in names.items()}
    renamed = {ours.get(key, key): value for key, value in ip.items()}
    expected = ip_attention_shapes(sd_unet)
    check_state(renamed, expected, "UNet checkpoint", where, lambda key: names.get(key, key))
    return renamed


@dataclass
class _UNetResult:
    outputs: list[_Output]  # the motion adapter and the Dynamics-Adapter
    ip: dict[str, torch.Tensor]  # IP-Adapter keys, diffusers' names (empty when none)
    spatial: dict[str, torch.Tensor]  # SD1.5 tensors that differ from --sd15's


def _unet_outputs(
    path: Path,
    state: Mapping[str, torch.Tensor],
    sd15: Path,
    allow_pickle: bool,
    config: dict[str, Any],
    report: ConversionReport,
) -> _UNetResult:
    """The motion adapter and Dynamics-Adapter (its config with `RELEASE_NORMS`) outputs, the
    IP-Adapter keys and the SD1.5 tensors that differ from ``sd15``'s."""
    where = f"in {path}"
    parts = _split_unet(state)
    sd_unet = _empty_sd_unet(config, where)
    check_state(parts.spatial, sd_unet.state_dict(), "UNet checkpoint", where, complete=False)
    with init_empty_weights():
        adapter = DynamicsAdapter.from_unet(sd_unet, RELEASE_NORMS)
        motion = MotionAdapter(**_motion_config(parts, config, where))
    check_state(parts.adapter, adapter.state_dict(), "UNet checkpoint", where, release_adapter_name)
    buffers = dict(motion.named_buffers())
    parameters = {k: v for k, v in motion.state_dict().items() if k not in buffers}
    check_state(parts.motion, parameters, "UNet checkpoint", where, release_motion_name)
    _check_positions(parts.position, buffers, where)
    ip = _ip_attention(parts.ip, sd_unet, where) if parts.ip else {}
    dtype = next(iter(parts.motion.values())).dtype
    motion_state = {**parts.motion, **{k: v.to(dtype) for k, v in buffers.items()}}
    report.adapter_keys, report.motion_keys = len(parts.adapter), len(parts.motion)
    report.position_encodings, report.spatial_keys = len(parts.position), len(parts.spatial)
    report.ip_keys = len(ip)
    spatial = differing_sd_tensors(parts.spatial, sd15, allow_pickle) if parts.spatial else {}
    report.spatial_differ = len(spatial)
    outputs = [
        _Output(MOTION_DIR, _assigned(motion, motion_state), len(parts.motion)),
        _Output(ADAPTER_DIR, _assigned(adapter, parts.adapter), len(parts.adapter)),
    ]
    return _UNetResult(outputs, ip, spatial)


def _controlnet_output(
    path: Path, state: Mapping[str, torch.Tensor], config: dict[str, Any], channels: int, sub: str
) -> _Output:
    where = f"in {path}"
    sd_unet = _empty_sd_unet(config, where)
    with init_empty_weights():
        controlnet = ControlNetModel.from_unet(
            sd_unet, conditioning_channels=channels, load_weights_from_unet=False
        )
    what = f"{'pose' if channels == 3 else 'face'} ControlNet checkpoint"
    check_state(state, controlnet.state_dict(), what, where)
    return _Output(sub, _assigned(controlnet, state), len(state))


# --------------------------------------------------------------------------- converting


def _ip_state(
    path: Path,
    allow_pickle: bool,
    config: dict[str, Any],
    from_unet: Mapping[str, torch.Tensor],
    report: ConversionReport,
) -> IPAdapterState:
    """IP-Adapter's checkpoint at ``path``, checked against the SD1.5 UNet, its ``to_k_ip``/
    ``to_v_ip`` replaced by the UNet checkpoint's (``from_unet``, diffusers' names) when it
    has them: the release loads its UNet checkpoint over IP-Adapter's weights."""
    where = f"in {path}"
    state = read_ip_adapter(path, allow_pickle)
    check_ip_adapter(state, _empty_sd_unet(config, where), where)
    if from_unet:
        state = {IMAGE_PROJ: state[IMAGE_PROJ], IP_ADAPTER: dict(from_unet)}
    source = "the UNet checkpoint" if from_unet else path.name
    report.ip_adapter = (
        f"{len(state[IMAGE_PROJ])} image_proj tensors from {path.name}, "
        f"{len(state[IP_ADAPTER])} to_k_ip/to_v_ip tensors from {source}"
    )
    return state


def _write(
    out: Path,
    outputs: list[_Output],
    ip_state: IPAdapterState | None,
    spatial: Mapping[str, torch.Tensor],
) -> list[Path]:
    """Every output saved, then all renamed into place together (atomically each)."""
    written = [out / output.subdir for output in outputs]
    with ExitStack() as stack:
        for output in outputs:
            tmp = stack.enter_context(atomic_dir(out / output.subdir))
            output.model.save_pretrained(tmp, safe_serialization=True)
        if ip_state is not None:
            save_ip_adapter(ip_state, stack.enter_context(atomic_path(out / IP_FILE)))
            written.append(out / IP_FILE)
        if spatial:
            tensors = {key: _owned(value) for key, value in spatial.items()}
            save_file(tensors, str(stack.enter_context(atomic_path(out / SPATIAL_FILE))))
            written.append(out / SPATIAL_FILE)
    return written


def convert_xdyna(
    sd15: Path,
    out: Path,
    unet: Path | None = None,
    controlnet: Path | None = None,
    face_controlnet: Path | None = None,
    allow_pickle: bool = False,
    ip_adapter: Path | None = None,
) -> ConversionReport:
    """Write the release's ``unet`` (motion adapter + Dynamics-Adapter, its SD1.5 tensors that
    differ from ``sd15``'s, and its IP-Adapter keys with ``ip_adapter``'s resampler), pose
    ``controlnet`` and ``face_controlnet`` checkpoints into the weights directory ``out``;
    ``sd15`` (SD1.5 in diffusers layout) gives the UNet config and, when the UNet checkpoint
    holds SD1.5 keys, the tensors they are compared with. Nothing is written unless every input
    checks."""
    if all(path is None for path in (unet, controlnet, face_controlnet, ip_adapter)):
        raise InputError(
            "nothing to convert: give --unet, --controlnet, --face-controlnet or --ip-adapter"
        )
    config = sd_unet_config(sd15)
    report = ConversionReport()
    outputs: list[_Output] = []
    ip: dict[str, torch.Tensor] = {}
    spatial: dict[str, torch.Tensor] = {}
    if unet is not None:
        state = read_checkpoint(unet, allow_pickle)
        result = _unet_outputs(unet, state, sd15, allow_pickle, config, report)
        outputs += result.outputs
        ip, spatial = result.ip, result.spatial
    for path, channels, sub in ((controlnet, 3, POSE_DIR), (face_controlnet, 6, FACE_DIR)):
        if path is not None:
            state = read_checkpoint(path, allow_pickle)
            outputs.append(_controlnet_output(path, state, config, channels, sub))
    ip_state = None
    if ip_adapter is not None:
        ip_state = _ip_state(ip_adapter, allow_pickle, config, ip, report)
    report.written = _write(out, outputs, ip_state, spatial)
    stale = out / SPATIAL_FILE
    if unet is not None and not spatial and stale.is_file():
        stale.unlink()  # an earlier conversion's: this UNet checkpoint runs SD1.5's tensors
        report.spatial_removed = stale
    for output in outputs:
        if output.subdir in (POSE_DIR, FACE_DIR):
            report.controlnet_keys[output.subdir] = output.count
    return report
