"""What the perception backends share: image checks and conversion, and loading a local
transformers checkpoint offline (Depth Anything, SAM)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anima.errors import InputError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
SAFE_WEIGHT_FILES = WEIGHT_FILES[:2]
"""File names under which transformers stores (possibly sharded) weights."""


# --------------------------------------------------------------------------- shared checks


def check_image(image: Tensor, where: str = "image") -> tuple[int, int]:
    """Validate a float (3, H, W) image tensor and return its size (H, W)."""
    if not isinstance(image, Tensor):
        raise InputError(f"expected a torch tensor, got {type(image).__name__}", where)
    if image.ndim != 3 or image.shape[0] != 3:
        raise InputError(f"expected an image of shape (3, H, W), got {tuple(image.shape)}", where)
    if not image.is_floating_point():
        raise InputError(f"expected a float image in [0, 1], got dtype {image.dtype}", where)
    height, width = int(image.shape[1]), int(image.shape[2])
    if height < 1 or width < 1:
        raise InputError(f"image is empty: size {(height, width)}", where)
    return height, width


def image_to_uint8(image: Tensor) -> np.ndarray:
    """Convert a float (3, H, W) image in [0, 1] to a contiguous uint8 (H, W, 3) RGB array."""
    pixels = (image.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy())


def require_model_dir(
    directory: Path | str, kind: str, extra: Sequence[str] = (), allow_pickle: bool = False
) -> Path:
    """Check that a local transformers checkpoint directory is complete.

    It must exist and hold ``config.json``, a weight file (see :data:`WEIGHT_FILES`) and, when
    ``extra`` is given, at least one of those file names (e.g. the processor config). Anything
    missing raises :class:`InputError` naming the file and the directory.
    """
    path = Path(directory)
    if not path.is_dir():
        raise InputError(f"{kind} model directory not found", str(path))
    if not (path / "config.json").is_file():
        raise InputError(f"{kind} model config.json is missing", f"in {path}")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise InputError(
            f"{kind} model weights ({' or '.join(WEIGHT_FILES)}) are missing", f"in {path}"
        )
    if not allow_pickle and not any((path / name).is_file() for name in SAFE_WEIGHT_FILES):
        raise InputError(
            f"{kind} model has only pickle weights (pytorch_model.bin); pass --allow-pickle",
            f"in {path}",
        )
    if extra and not any((path / name).is_file() for name in extra):
        raise InputError(f"{kind} processor config ({' or '.join(extra)}) is missing", f"in {path}")
    return path


def load_local(path: Path, kind: str, *classes: Any, allow_pickle: bool = False) -> tuple[Any, ...]:
    """``cls.from_pretrained(path)`` for each class, offline; failures become one-line
    `InputError`s naming the model kind and directory."""
    try:
        return tuple(
            cls.from_pretrained(path, local_files_only=True, **_safe_only(cls, allow_pickle))
            for cls in classes
        )
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise InputError(f"cannot load {kind} model ({reason})", str(path)) from error


def _safe_only(cls: Any, allow_pickle: bool) -> dict[str, Any]:
    """``use_safetensors=True`` for models (processors take no weights) unless pickle is allowed."""
    is_model = hasattr(cls, "base_model_prefix") or cls.__name__.startswith("AutoModel")
    return {"use_safetensors": True} if is_model and not allow_pickle else {}
