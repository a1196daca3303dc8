"""LeviTor's components: SVD img2vid(-xt) and the LeviTor ControlNet from a weights directory,
or tiny random models of the same architectures (``--weights tiny``), behind one signature."""

from __future__ import annotations

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
    components["controlnet"] = load_svd_controlnet(controlnet_dir, weights.allow_pickle, dtype)
    return components
