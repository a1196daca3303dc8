"""Loading diffusers/transformers components from local directories, offline and checked.

Every loader checks the directory first (`anima.weights.checkpoint_format`), so a missing file
is one `InputError` naming the file and where it was looked for, and pickle checkpoints load
only with ``--allow-pickle``. Nothing is downloaded (``local_files_only``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    UNetSpatioTemporalConditionModel,
)
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file
from transformers import CLIPVisionModelWithProjection
from transformers.utils import logging as transformers_logging

from anima.errors import InputError
from anima.models.svd import CLIPProcessor
from anima.models.svd_controlnet import SVDControlNetModel
from anima.weights import checkpoint_format

#: Sub-folders of a diffusers SVD pipeline directory, the class of each, and what it is.
SVD_MODELS: dict[str, tuple[Any, str]] = {
    "unet": (UNetSpatioTemporalConditionModel, "SVD UNet"),
    "vae": (AutoencoderKLTemporalDecoder, "SVD VAE"),
    "image_encoder": (CLIPVisionModelWithProjection, "SVD image encoder"),
}


def load_model(
    cls: Any,
    folder: Path,
    kind: str,
    allow_pickle: bool,
    dtype: torch.dtype | None = None,
    **config_overrides: Any,
) -> Any:
    """``cls.from_pretrained(folder)`` offline, after checking the files."""
    kwargs = checkpoint_format(folder, kind, allow_pickle) | config_overrides
    diffusers_logging.disable_progress_bar()  # progress is reported by the caller
    transformers_logging.disable_progress_bar()
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        return cls.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise InputError(f"cannot load {kind} ({reason})", str(folder)) from error


def read_weights_file(path: Path, allow_pickle: bool = True) -> Any:
    """What a checkpoint file holds: ``safetensors`` by suffix, else a pickle read with
    ``torch.load(weights_only=True)`` (tensors and plain containers only), which needs
    ``allow_pickle`` (``--allow-pickle``; callers that checked it already leave the default).
    Any failure is one `InputError` naming the file."""
    if path.suffix != ".safetensors" and not allow_pickle:
        raise InputError(
            f"{path.name} is a pickle file; pass --allow-pickle to read it (tensors only), or "
            "save it as .safetensors",
            f"in {path.parent}",
        )
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling raises many types; all mean "not readable"
        lines = str(error).strip().splitlines()
        reason = lines[0] if lines else type(error).__name__
        raise InputError(f"cannot read {path.name}: {reason}", str(path)) from error


def check_state(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    what: str,
    where: str,
    release_name: Callable[[str], str] = str,
    complete: bool = True,
) -> None:
    """Keys of ``state`` all in ``expected`` (and all of ``expected`` there when ``complete``),
    with its shapes; errors name the key as the checkpoint's author does (``release_name``)."""
    unexpected = sorted(release_name(key) for key in set(state) - set(expected))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise InputError(f"{what}: unknown key {unexpected[0]}{more}", where)
    missing = sorted(set(expected) - set(state)) if complete else []
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{what}: missing key {release_name(missing[0])}{more}", where)
    for key in sorted(state):
        got, want = tuple(state[key].shape), tuple(expected[key].shape)
        if got != want:
            raise InputError(f"{what}: {release_name(key)} has shape {got}, expected {want}", where)


def _require_file(path: Path, kind: str) -> Path:
    if not path.is_file():
        raise InputError(f"{kind}: {path.name} not found", f"in {path.parent}")
    return path


def load_svd_components(folder: Path, allow_pickle: bool, dtype: torch.dtype) -> dict[str, Any]:
    """The components of a `StableVideoDiffusionPipeline` from its diffusers directory."""
    components: dict[str, Any] = {
        name: load_model(cls, folder / name, kind, allow_pickle, dtype)
        for name, (cls, kind) in SVD_MODELS.items()
    }
    scheduler_config = _require_file(
        folder / "scheduler" / "scheduler_config.json", "SVD scheduler"
    )
    components["scheduler"] = EulerDiscreteScheduler.from_config(
        json.loads(scheduler_config.read_text())
    )
    processor_config = _require_file(
        folder / "feature_extractor" / "preprocessor_config.json", "SVD feature extractor"
    )
    components["feature_extractor"] = CLIPProcessor.from_pretrained(
        processor_config.parent, local_files_only=True
    )
    return components


#: Class names an SVD ControlNet config may carry: ours, LeviTor's release, and the community
#: temporal ControlNet (I2V3D). All share one parameter layout.
CONTROLNET_CLASS_NAMES = ("SVDControlNetModel", "ControlNetSVDModel", "ControlNetSDVModel")


def load_svd_controlnet(
    folder: Path, allow_pickle: bool, dtype: torch.dtype | None = None, kind: str = "ControlNet"
) -> SVDControlNetModel:
    """An `SVDControlNetModel` from our layout or an official release's (same keys)."""
    config_path = _require_file(folder / "config.json", kind)
    config = json.loads(config_path.read_text())
    name = config.get("_class_name")
    if name not in CONTROLNET_CLASS_NAMES:
        raise InputError(
            f"{kind}: config.json describes a {name}, not an SVD ControlNet", f"in {folder}"
        )
    if config.get("with_id_feature"):
        raise InputError(
            f"{kind}: ControlNets with the point-feature adapter (with_id_feature) are not "
            "supported",
            f"in {folder}",
        )
    overrides = {}
    if name == "ControlNetSDVModel":  # trained with repeated skip residuals (SVDControlNetModel)
        overrides["cumulative_skip_residuals"] = True
    return load_model(SVDControlNetModel, folder, kind, allow_pickle, dtype, **overrides)
