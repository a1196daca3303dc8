"""I2V3D's LoRA on the base UNet (I2V3D §3.2.1): its layers, its file and the record beside it.

The paper customises Stable Diffusion to the input image with LoRA "for the attention layers and
feedforward layers of the self-attention and cross-attention block"; the release (README,
"I2V3D") trains rank 32, alpha 32, on ``to_q``, ``to_k``, ``to_v``, ``to_out.0``,
``ff.net.0.proj`` and ``ff.net.2`` of the UNet only (`LORA_TARGETS`), the text encoders frozen.

- **Attaching** (`attach_lora`): a peft `LoraConfig` added to a stock diffusers
  `UNet2DConditionModel` (``add_adapter``), the base weights frozen; the A matrices are drawn
  from a seed (Gaussian, as diffusers' LoRA scripts initialise them), the B matrices are zero,
  so the UNet starts exactly as the base.
- **Saving** (`save_lora`): diffusers' LoRA format, ``pytorch_lora_weights.safetensors`` written
  by the base's pipeline class (`StableDiffusionXLPipeline` or `StableDiffusionPipeline`)
  ``save_lora_weights``, with the adapter's rank and alpha in the file's metadata, so
  ``load_lora_weights`` restores the same scale. Beside it ``i2v3d_lora.json`` (`LoraInfo`)
  records the base model kind, the SHA-256 of the image file it was trained on and the run's
  settings: a later run finds a LoRA for the same image by the hash and refuses one trained on
  another base (`check_lora`).
- **Loading** (`load_lora`): `check_lora`, then the pipeline's ``load_lora_weights``.
- **Checkpoints** (`lora_state`, `set_lora_state`): the adapter's parameters by their peft
  names, exactly, for `anima.training.train_loop`'s checkpoints (docs/architecture.md, "The
  training loop").

peft and diffusers are imported inside the functions: `anima.cli` imports this package's
training config on every start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anima.errors import InputError
from anima.methods.i2v3d.loading import LORA_FILE, Base
from anima.training import read_record, write_json

#: The UNet layers the LoRA adapts (I2V3D §3.2.1; the release's list).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
#: The record beside it (`LoraInfo`).
INFO_FILE = "i2v3d_lora.json"
INFO_FORMAT = 1
ADAPTER = "default"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the image a LoRA was trained on)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def lora_config(rank: int, alpha: float) -> Any:
    """The peft `LoraConfig` of I2V3D's LoRA (`LORA_TARGETS`, Gaussian A, zero B)."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS)
    )


def attach_lora(unet: nn.Module, rank: int, alpha: float, seed: int = 0) -> list[nn.Parameter]:
    """Freeze ``unet`` and add the LoRA adapter (its A matrices drawn from ``seed``, without
    touching the caller's random stream); returns the adapter's parameters, which train."""
    from anima.models.seeding import seeded

    unet.requires_grad_(False)
    with seeded(seed):
        unet.add_adapter(lora_config(rank, alpha), adapter_name=ADAPTER)
    params = [p for _, p in lora_named_parameters(unet)]
    if not params:
        raise ValueError("the UNet has none of the LoRA's target layers")
    for p in params:
        p.requires_grad_(True)
    return params


def lora_named_parameters(unet: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The adapter's parameters, by their names in ``unet``."""
    return [(n, p) for n, p in unet.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def lora_state(unet: nn.Module) -> dict[str, Tensor]:
    """The adapter's parameters (CPU copies), for a training checkpoint."""
    return {n: p.detach().cpu().clone().contiguous() for n, p in lora_named_parameters(unet)}


@torch.no_grad()
def set_lora_state(unet: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy a `lora_state` back into ``unet``'s adapter (names and shapes must match)."""
    named = dict(lora_named_parameters(unet))
    if set(named) != set(state):
        raise ValueError("the checkpoint's LoRA layers differ from the UNet's adapter")
    for name, p in named.items():
        p.copy_(state[name])


def pipeline_class(base: Base) -> Any:
    """The diffusers pipeline class whose LoRA format ``base`` uses."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if base == "sdxl":
        return StableDiffusionXLPipeline
    if base == "sd15":
        return StableDiffusionPipeline
    raise ValueError(f"unknown base {base!r}")


def diffusers_layers(unet: nn.Module) -> dict[str, Tensor]:
    """The adapter's weights under diffusers' LoRA names (``...to_q.lora.down.weight``)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    return {k: v.detach().float().cpu() for k, v in convert_state_dict_to_diffusers(state).items()}


def save_lora(unet: nn.Module, folder: Path, base: Base, info: dict[str, Any]) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` (diffusers' LoRA format, float32, rank
    and alpha in its metadata) and ``folder/i2v3d_lora.json`` (``info`` plus the base and the
    format); returns the weight file.

    The record goes last and is removed first, so a folder whose record is present holds the
    weights it describes, even after a crash between the two writes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INFO_FILE).unlink(missing_ok=True)
    metadata = unet.peft_config[ADAPTER].to_dict()
    with tempfile.TemporaryDirectory(prefix=".lora-", dir=folder) as tmp:
        pipeline_class(base).save_lora_weights(
            tmp,
            unet_lora_layers=diffusers_layers(unet),
            unet_lora_adapter_metadata=metadata,
            safe_serialization=True,
        )
        os.replace(Path(tmp) / LORA_FILE, folder / LORA_FILE)
    write_json(folder / INFO_FILE, {"format": INFO_FORMAT, "method": "i2v3d", "base": base} | info)
    return folder / LORA_FILE


def read_lora_info(folder: Path) -> dict[str, Any] | None:
    """The record of a complete LoRA folder (weights and record present), else None."""
    return read_record(folder, LORA_FILE, INFO_FILE)


def check_lora(folder: Path, base: Base, image_sha256: str | None = None) -> dict[str, Any]:
    """The record of the LoRA in ``folder``; an `InputError` when there is none, when it was
    trained for another base model, or (with ``image_sha256``) on another image."""
    folder = Path(folder)
    if not (folder / LORA_FILE).is_file():
        raise InputError(f"no LoRA ({LORA_FILE}) found", str(folder))
    info = read_lora_info(folder)
    if info is None:
        raise InputError(
            f"the LoRA has no readable {INFO_FILE} (not trained by anima)", str(folder)
        )
    trained_base = info.get("base")
    if trained_base != base:
        raise InputError(f"the LoRA was trained for base {trained_base}, not {base}", str(folder))
    if image_sha256 is not None and info.get("image_sha256") != image_sha256:
        raise InputError("the LoRA was trained on another image", str(folder))
    return info


@contextmanager
def quiet_text_encoder_notes() -> Iterator[None]:
    """diffusers notes, on every load of a UNet-only LoRA, that the file has no text-encoder
    layers: true of every I2V3D LoRA and nothing for the user to act on."""

    def drop(record: logging.LogRecord) -> bool:
        return "No LoRA keys associated to" not in record.getMessage()

    logger = logging.getLogger("diffusers.loaders.lora_base")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def load_lora(
    pipe: Any,
    folder: Path,
    base: Base,
    image_sha256: str | None = None,
    adapter_name: str | None = None,
) -> dict[str, Any]:
    """Check the LoRA in ``folder`` (`check_lora`) and load it into ``pipe`` with diffusers'
    ``load_lora_weights``; returns its record."""
    info = check_lora(folder, base, image_sha256)
    with quiet_text_encoder_notes():
        pipe.load_lora_weights(str(folder), weight_name=LORA_FILE, adapter_name=adapter_name)
    return info
