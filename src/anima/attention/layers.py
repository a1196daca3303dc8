"""Naming and selecting the layers the hooks touch.

A layer is named by its module path in the model, as diffusers names it: an attention layer by
its key in ``model.attn_processors`` without the ``.processor`` suffix (e.g.
``down_blocks.0.attentions.0.transformer_blocks.0.attn1``), a resnet by its module path (e.g.
``up_blocks.1.resnets.0``), a residual branch by the module path of the res block whose
``conv2`` computes it (``up_blocks.1.resnets.0`` in `UNet2DConditionModel` and
`UNetMotionModel`; ``up_blocks.1.resnets.0.spatial_res_block`` and
``up_blocks.1.resnets.0.temporal_res_block`` inside SVD's ``SpatioTemporalResBlock``).
Selections are patterns over those names:

- a ``str`` is a shell pattern matched against the whole name with `fnmatch.fnmatchcase`
  (``*`` also matches dots, so ``"down_blocks.*.attn1"`` is every ``attn1`` in the down blocks,
  motion modules' included);
- a compiled `re.Pattern` must match the whole name (`re.Pattern.fullmatch`);
- an iterable of either selects a name matched by any of them.

`SPATIAL_SELF`, `CROSS` and `TEMPORAL` name the three kinds of attention of the supported UNets
(`UNet2DConditionModel`, AnimateDiff's `UNetMotionModel`, SVD's
`UNetSpatioTemporalConditionModel`): ``attn1`` of a spatial transformer block is self-attention
over the tokens of one frame, its ``attn2`` is cross-attention to the text/image embedding, and
every attention inside a motion module (``motion_modules``) or a temporal transformer block
(``temporal_transformer_blocks``, ``temp_attentions``, ``transformer_in``) attends over frames
at one pixel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import TypeAlias

from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D, TemporalResnetBlock
from torch import nn

Pattern: TypeAlias = str | re.Pattern[str]
Patterns: TypeAlias = Pattern | Iterable[Pattern]

#: Spatial self-attention (``attn1`` of a spatial transformer block): the layers of
#: X-Dyna's Dynamics-Adapter, AnyI2V's and I2V3D's Q/K injection and extended attention.
SPATIAL_SELF = re.compile(r"(.+\.)?attentions\.\d+\.transformer_blocks\.\d+\.attn1")
#: Cross-attention of a spatial transformer block (``attn2``).
CROSS = re.compile(r"(.+\.)?attentions\.\d+\.transformer_blocks\.\d+\.attn2")
#: Everything that attends over frames: AnimateDiff motion modules, SVD temporal blocks,
#: `UNet3DConditionModel` temporal attentions (``temp_attentions``, and ``transformer_in`` after
#: its ``conv_in``).
TEMPORAL = re.compile(
    r"(.+\.)?(motion_modules|temporal_transformer_blocks|temp_attentions|transformer_in)\..+"
)
#: A resnet block of a UNet level (``ResnetBlock2D``, SVD's ``SpatioTemporalResBlock``).
RESNETS = re.compile(r"(.+\.)?resnets\.\d+")
#: The temporal res blocks of SVD's ``SpatioTemporalResBlock``s (their residual branch mixes
#: frames), e.g. to exclude them from a selection of residual branches.
TEMPORAL_RESIDUALS = re.compile(r"(.+\.)?temporal_res_block")
#: The res blocks whose residual branch (``conv2`` output) can be captured and injected.
RESIDUAL_BLOCKS = (ResnetBlock2D, TemporalResnetBlock)


def _as_list(patterns: Patterns | None) -> list[Pattern]:
    if patterns is None:
        return []
    if isinstance(patterns, (str, re.Pattern)):
        return [patterns]
    return list(patterns)


def matches(name: str, patterns: Patterns | None) -> bool:
    """Whether ``name`` is matched by any of ``patterns`` (none matches nothing)."""
    for pattern in _as_list(patterns):
        if isinstance(pattern, re.Pattern):
            if pattern.fullmatch(name):
                return True
        elif fnmatchcase(name, pattern):
            return True
    return False


def select(names: Iterable[str], include: Patterns, exclude: Patterns | None = None) -> list[str]:
    """The names matched by ``include`` and not by ``exclude``, in their given order."""
    return [name for name in names if matches(name, include) and not matches(name, exclude)]


def is_temporal(name: str) -> bool:
    """Whether the layer attends over frames (its batch is pixels, its tokens frames)."""
    return matches(name, TEMPORAL)


def all_attention_layers(model: nn.Module) -> dict[str, Attention]:
    """Every attention layer of ``model`` by name, in ``model.attn_processors`` order."""
    return {
        name: module
        for name, module in model.named_modules()
        if hasattr(module, "set_processor") and hasattr(module, "processor")
    }


def attention_layers(
    model: nn.Module, include: Patterns, exclude: Patterns | None = None
) -> dict[str, Attention]:
    """The attention layers of ``model`` selected by name, e.g.
    ``attention_layers(unet, "down_blocks.*.attn1", exclude=TEMPORAL)``."""
    layers = all_attention_layers(model)
    return {name: layers[name] for name in select(layers, include, exclude)}


def resnet_layers(
    model: nn.Module, include: Patterns = RESNETS, exclude: Patterns | None = None
) -> dict[str, nn.Module]:
    """The resnet blocks of ``model`` (modules named ``...resnets.<i>``) selected by name, e.g.
    ``resnet_layers(unet, "up_blocks.*")``."""
    blocks = {name: module for name, module in model.named_modules() if RESNETS.fullmatch(name)}
    return {name: blocks[name] for name in select(blocks, include, exclude)}


def residual_layers(
    model: nn.Module, include: Patterns = "*", exclude: Patterns | None = None
) -> dict[str, nn.Module]:
    """The res blocks of ``model`` whose residual branch hooks can read and replace (every
    ``ResnetBlock2D`` and SVD ``TemporalResnetBlock``, by module path) selected by name, e.g.
    ``residual_layers(unet, "up_blocks.[12].resnets.[01]")`` (AnyI2V) or
    ``residual_layers(svd_unet, "up_blocks.*", exclude=TEMPORAL_RESIDUALS)``."""
    blocks = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, RESIDUAL_BLOCKS)
    }
    return {name: blocks[name] for name in select(blocks, include, exclude)}
