"""LeviTor's components: SVD img2vid(-xt) and the LeviTor ControlNet from a weights directory,
or tiny random models of the same architectures (``--weights tiny``), behind one signature.

The ControlNet's config records the control-map convention it was trained on
(``control_convention``, LeviTor §3.2 maps drawn our way or the release's). A config without
the field is ours (``"anima"``) unless it is the release's own class, ``ControlNetSVDModel``
(its accelerate state loaded as downloaded): that one was trained on the release's maps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from anima.weights import SVD, Component, Weights

LEVITOR_CONTROLNET = Component(
    "LeviTor ControlNet",
    "levitor",
    "LeviTor ControlNet (ours, or the official release's accelerate state dir)",
    required_files=("config.json",),
    layouts=("", "controlnet"),
)
#: The class name of the LeviTor release's ControlNet config (trained on the release's maps).
RELEASE_CLASS_NAME = "ControlNetSVDModel"
DEFAULT_CONVENTION = "anima"


def config_convention(config: dict[str, Any]) -> str:
    """The control-map convention a ControlNet config records: its ``control_convention``,
    else ``"release"`` for the release's class and ``"anima"`` for any other."""
    recorded = config.get("control_convention")
    if recorded is not None:
        return str(recorded)
    return "release" if config.get("_class_name") == RELEASE_CLASS_NAME else DEFAULT_CONVENTION


def folder_convention(folder: Path) -> str:
    """`config_convention` of ``folder/config.json``."""
    return config_convention(json.loads((folder / "config.json").read_text()))


def recorded_convention(weights: Weights) -> str:
    """The convention of the ControlNet ``weights`` provide: built-in tiny models are ours,
    a directory's ``levitor/`` says (`folder_convention`); ``"anima"`` when it is absent."""
    folder = weights.component_dir(LEVITOR_CONTROLNET)
    return DEFAULT_CONVENTION if folder is None else folder_convention(folder)


def load_components(weights: Weights, dtype: torch.dtype) -> dict[str, Any]:
    """The keyword arguments of `LeviTorPipeline`: ``DIR/svd`` and ``DIR/levitor`` (every file
    checked, safetensors unless pickle is allowed), or, with ``--weights tiny``, tiny random
    models whose ControlNet has random outputs (so the controls matter), cast to ``dtype``."""
    if weights.builtin == "tiny":
        from anima.models.tiny import tiny_controlnet, tiny_svd_components

        components = tiny_svd_components(seed=0)
        components["controlnet"] = tiny_controlnet(components["unet"], seed=0, random_output=True)
        for module in components.values():
            if isinstance(module, torch.nn.Module) and dtype != torch.float32:
                module.to(dtype=dtype)
        return components
    from anima.models.loading import load_svd_components, load_svd_controlnet

    components = load_svd_components(weights.require(SVD, "levitor"), weights.allow_pickle, dtype)
    controlnet_dir = weights.require(LEVITOR_CONTROLNET, "levitor")
    controlnet = load_svd_controlnet(controlnet_dir, weights.allow_pickle, dtype)
    controlnet.register_to_config(control_convention=folder_convention(controlnet_dir))
    components["controlnet"] = controlnet
    return components
