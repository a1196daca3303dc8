"""``anima weights convert levitor``: an SVD ControlNet checkpoint into our safetensors layout.

Accepts our layout, LeviTor's release (an accelerate state directory holding ``controlnet/``)
or the community temporal ControlNet (``controlnet/`` with a ``ControlNetSDVModel`` config),
with safetensors or pickle weights (pickle only with ``--allow-pickle``). The state dict is
checked against `SVDControlNetModel` built from the config, key by key and shape by shape,
before anything is written; the output is ``config.json`` + ``diffusion_pytorch_model.safetensors``
written atomically, loadable with safetensors only from then on.

LeviTor's release (config class ``ControlNetSVDModel``) was trained on control maps drawn the
release's way (LeviTor §3.2): its converted config records ``control_convention: "release"``,
so that the levitor method draws them that way by default. A checkpoint in our layout keeps the
convention it records.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors.torch import save_file

from anima.errors import InputError
from anima.io import staged_outputs
from anima.models.loading import CONTROLNET_CLASS_NAMES, read_weights_file
from anima.models.svd_controlnet import SVDControlNetModel
from anima.weights import PICKLE_SUFFIXES

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
#: The config class of LeviTor's released ControlNet.
LEVITOR_RELEASE_CLASS = "ControlNetSVDModel"


def _controlnet_folder(source: Path) -> Path:
    for folder in (source, source / "controlnet"):
        if (folder / "config.json").is_file():
            return folder
    raise InputError("no config.json here or in controlnet/", f"in {source}")


def _read_state_dict(folder: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return read_weights_file(safetensors[0])
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise InputError("no weights file (.safetensors or .bin)", f"in {folder}")
    if not allow_pickle:
        raise InputError(
            f"{pickles[0].name} is a pickle file; pass --allow-pickle to convert it", f"in {folder}"
        )
    state = read_weights_file(pickles[0])
    return state.get("state_dict", state)


def controlnet_config(folder: Path) -> dict:
    """The checkpoint's config as our class's: class name, the community ControlNet's
    repeated-residual convention and the LeviTor release's control-map convention made
    explicit."""
    config = json.loads((folder / "config.json").read_text())
    name = config.get("_class_name")
    if name not in CONTROLNET_CLASS_NAMES:
        raise InputError(f"config.json describes a {name}, not an SVD ControlNet", f"in {folder}")
    if config.get("with_id_feature"):
        raise InputError(
            "the point-feature adapter (with_id_feature) is not supported", str(folder)
        )
    known = SVDControlNetModel.extract_init_dict(config)[0]
    known["cumulative_skip_residuals"] = name == "ControlNetSDVModel" or bool(
        config.get("cumulative_skip_residuals")
    )
    if name == LEVITOR_RELEASE_CLASS and "control_convention" not in config:
        known["control_convention"] = "release"
    return known


def check_keys(state: dict[str, torch.Tensor], config: dict, where: str) -> None:
    """Every key of `SVDControlNetModel(**config)` present with its shape, and no other."""
    with init_empty_weights():
        expected = SVDControlNetModel(**config).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise InputError("checkpoint does not match the SVD ControlNet: " + ", ".join(parts), where)
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise InputError(
                f"{key} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}", where
            )


def convert_controlnet(source: Path, out: Path, allow_pickle: bool = False) -> Path:
    """Write ``source``'s SVD ControlNet to ``out`` (config.json + safetensors); returns ``out``."""
    if not source.is_dir():
        raise InputError("checkpoint directory not found", str(source))
    folder = _controlnet_folder(source)
    config = controlnet_config(folder)
    state = _read_state_dict(folder, allow_pickle)
    check_keys(state, config, f"in {folder}")
    with staged_outputs() as staging:  # an existing folder is written into, not replaced
        tmp = staging.folder(out)
        model_config = {"_class_name": SVDControlNetModel.__name__, **config}
        (tmp / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
        tensors = {key: value.contiguous() for key, value in state.items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    return out
