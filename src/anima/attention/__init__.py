"""One hook layer on diffusers' attention processors, for every method that edits attention.

Feature injection (AnyI2V, I2V3D §3.2.2/§3.3), attention to a reference frame's keys/values
(X-Dyna §3.2 Eq. 1-3, AnyI2V's frame-0 K/V) and extended cross-frame attention (I2V3D §3.2.3
Eq. 2) are all edits of a UNet's self-attention. Each is a context manager over a stock
diffusers UNet (`UNet2DConditionModel`, `UNetMotionModel`, `UNetSpatioTemporalConditionModel`)
that installs hooks on the layers selected by name and takes them off on exit, restoring the
original processors exactly; managers nest and compose on the same layers.

- `capture` records q/k/v, attention outputs and resnet outputs per step into a `FeatureStore`;
- `inject` replays them (masked, on a step range, with explicit CFG/frame batch mapping);
- `extended_attention` lets each frame attend to a window of frames' K/V;
- `reference_kv` attends to a reference frame's K/V, optionally through X-Dyna's trainable
  `ReferenceAttentionWeights` (owned by the caller, e.g. as a `ReferenceWeights` module); the
  reference is a frame of the same pass or its K/V recorded by `capture` in a pass of its own.

Layers are named as in ``model.attn_processors`` (without ``.processor``) and selected with
`anima.attention.layers` patterns (`SPATIAL_SELF`, `CROSS`, `TEMPORAL`); the frame layout and
``num_frames`` are described in `anima.attention.frames`; the processor and hook protocol in
`anima.attention.processor`.
"""

from __future__ import annotations

from anima.attention.capture import Capture, capture
from anima.attention.extended import ExtendedAttention, MaskFn, extended_attention
from anima.attention.frames import Window
from anima.attention.inject import Inject, inject
from anima.attention.layers import (
    CROSS,
    RESNETS,
    SPATIAL_SELF,
    TEMPORAL,
    attention_layers,
    is_temporal,
    resnet_layers,
    select,
)
from anima.attention.processor import AttentionCall, AttentionHook, HookedAttnProcessor, Hooks
from anima.attention.reference import (
    RecordedKV,
    ReferenceAttention,
    ReferenceAttentionWeights,
    ReferenceWeights,
    reference_kv,
)
from anima.attention.store import FeatureStore, StepCounter, Steps

__all__ = [
    "CROSS",
    "RESNETS",
    "SPATIAL_SELF",
    "TEMPORAL",
    "AttentionCall",
    "AttentionHook",
    "Capture",
    "ExtendedAttention",
    "FeatureStore",
    "HookedAttnProcessor",
    "Hooks",
    "Inject",
    "MaskFn",
    "RecordedKV",
    "ReferenceAttention",
    "ReferenceAttentionWeights",
    "ReferenceWeights",
    "StepCounter",
    "Steps",
    "Window",
    "attention_layers",
    "capture",
    "extended_attention",
    "inject",
    "is_temporal",
    "reference_kv",
    "resnet_layers",
    "select",
]
