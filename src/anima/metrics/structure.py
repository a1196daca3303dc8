"""DINO structure similarity: how well an image keeps another's spatial layout.

(README, "Evaluation"; docs/architecture.md, "Models and weights")

AnyI2V (appendix A.1, "Fidelity Metric for Structure Control", Tab. 1) scores the first
generated frame against the conditional image (depth, HED, Canny, normal, segmentation) with a
"DINO score ... by extracting its structural features". The structural features of a DINO ViT
are those of Splice (Tumanyan, Bar-Tal, Bagon and Dekel, "Splicing ViT Features for Semantic
Appearance Transfer", CVPR 2022, §3): the self-similarity of the keys of the last layer's
self-attention, ``S_ij = cos(k_i, k_j)`` over all tokens (the [CLS] token included, the heads'
keys concatenated), which keeps the image's layout and discards its appearance (a Canny map and
a photo of the same scene give similar matrices). Plug-and-Play (Tumanyan et al., CVPR 2023)
reports the same measure as a distance.

**The similarity.** AnyI2V reports a similarity (higher is better, 0.76 to 0.93), not Splice's
distance. A "DINO score" is a cosine of DINO features (DreamBooth's DINO metric); here the
features are the self-similarity matrices, so the score is the **cosine of the two flattened
self-similarity matrices**: ``<S_a, S_b>_F / (||S_a||_F ||S_b||_F)``. It is 1 exactly when one
matrix is a positive multiple of the other (identical images give 1), needs no normalising
constant chosen by us (unlike ``1 - ||S_a - S_b||_F / c``) and is independent of the token
count. Splice's distance, the mean squared difference of the two matrices, is
`dino_structure_distance`.

The ViT is read in transformers layout (``ViTModel``, e.g. DINO ViT-B/8 as Splice uses) from
``DIR/metrics/dino/``; ``--weights tiny`` builds a tiny random ViT. Images are resized (bicubic,
antialiased) to the model's square ``image_size`` (so two images of different aspect ratios give
token grids that correspond) and normalised with the folder's ``preprocessor_config.json``
statistics, else ImageNet's (DINO's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from anima.metrics.components import DINO
from anima.weights import Weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DinoModel:
    """A loaded DINO ViT, its last layer's key projection and the input size and statistics."""

    model: Any
    key_projection: torch.nn.Module
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device


def last_key_projection(model: torch.nn.Module) -> torch.nn.Module:
    """The key ``nn.Linear`` of the last self-attention (named ``key`` in transformers 4,
    ``k_proj`` in 5)."""
    found = [
        module
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in ("key", "k_proj") and isinstance(module, torch.nn.Linear)
    ]
    if not found:
        raise ValueError(f"{type(model).__name__} has no attention key projection")
    return found[-1]


def tiny_dino(seed: int = 0) -> Any:
    """A tiny random ``ViTModel`` (64 px input, patch 8, 2 layers) built offline."""
    from transformers import ViTConfig, ViTModel

    from anima.models.seeding import seeded

    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=64,
        patch_size=8,
    )
    with seeded(seed):
        return ViTModel(config, add_pooling_layer=False).eval()


def load_dino(
    weights: Weights, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> DinoModel:
    """DINO ViT from ``DIR/metrics/dino/`` (transformers ``ViTModel``), or a tiny random ViT for
    ``--weights tiny``. A missing folder or file is an `InputError`."""
    device = torch.device(device)
    stats: dict[str, Any] = {}
    if weights.builtin == "tiny":
        model = tiny_dino()
    else:
        from transformers import ViTModel

        from anima.perception.common import load_local, require_model_dir

        folder = require_model_dir(
            weights.require(DINO, "DINO structure similarity"),
            "DINO",
            allow_pickle=weights.allow_pickle,
        )
        (model,) = load_local(folder, "DINO", ViTModel, allow_pickle=weights.allow_pickle)
        if (folder / "preprocessor_config.json").is_file():
            stats = json.loads((folder / "preprocessor_config.json").read_text())
    model = model.to(device=device, dtype=dtype).eval()
    return DinoModel(
        model=model,
        key_projection=last_key_projection(model),
        size=int(model.config.image_size),
        mean=tuple(float(v) for v in stats.get("image_mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in stats.get("image_std", IMAGENET_STD)),
        device=device,
    )


@torch.no_grad()
def dino_keys(image: torch.Tensor, dino: DinoModel) -> torch.Tensor:
    """The last layer's attention keys (T, C) of one image (3, H, W) in [0, 1]: T tokens
    ([CLS] first, then the patches row by row), C = heads x head size (heads concatenated)."""
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image (3, H, W), got {tuple(image.shape)}")
    pixels = image[None].to(dino.device, torch.float32)
    if tuple(pixels.shape[-2:]) != (dino.size, dino.size):
        pixels = F.interpolate(
            pixels, size=(dino.size, dino.size), mode="bicubic", antialias=True, align_corners=False
        ).clamp(0.0, 1.0)
    mean = torch.tensor(dino.mean, device=dino.device).view(1, 3, 1, 1)
    std = torch.tensor(dino.std, device=dino.device).view(1, 3, 1, 1)
    pixels = ((pixels - mean) / std).to(next(dino.model.parameters()).dtype)
    captured: list[torch.Tensor] = []
    handle = dino.key_projection.register_forward_hook(
        lambda _module, _inputs, output: captured.append(output)
    )
    try:
        dino.model(pixel_values=pixels)
    finally:
        handle.remove()
    return captured[-1][0].float()


def dino_key_self_similarity(image: torch.Tensor, dino: DinoModel) -> torch.Tensor:
    """Splice's structure descriptor of an image (3, H, W): the cosine self-similarity (T, T)
    of its last-layer DINO keys, float32."""
    keys = F.normalize(dino_keys(image, dino), dim=-1)
    return keys @ keys.T


def dino_structure_similarity(a: torch.Tensor, b: torch.Tensor, dino: DinoModel) -> float:
    """AnyI2V's structure similarity of images ``a`` and ``b`` (3, H, W) in [0, 1]: the cosine
    of their flattened key self-similarity matrices (module doc); 1 for identical images."""
    sa = dino_key_self_similarity(a, dino).double().flatten()
    sb = dino_key_self_similarity(b, dino).double().flatten()
    return float(F.cosine_similarity(sa, sb, dim=0))


def dino_structure_distance(a: torch.Tensor, b: torch.Tensor, dino: DinoModel) -> float:
    """Splice's structure distance of images ``a`` and ``b``: the mean squared difference of
    their key self-similarity matrices (Splice §3; lower is closer, 0 for identical images)."""
    sa = dino_key_self_similarity(a, dino).double()
    sb = dino_key_self_similarity(b, dino).double()
    return float((sa - sb).square().mean())
