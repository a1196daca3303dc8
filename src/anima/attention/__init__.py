"""One hook layer on diffusers' attention processors, for every method that edits attention.

Feature injection (AnyI2V, I2V3D §3.2.2/§3.3), attention to a reference frame's keys/values
(X-Dyna §3.2 Eq. 1-3, AnyI2V's frame-0 K/V) and extended cross-frame attention (I2V3D §3.2.3
Eq. 2) are all edits of a UNet's self-attention. Each is a context manager over a stock
diffusers UNet (`UNet2DConditionModel`, `UNetMotionModel`, `UNetSpatioTemporalConditionModel`)
that installs hooks on the layers selected by name and takes them off on exit, restoring the
original processors exactly; managers nest and compose on the same layers.

- `capture` records q/k/v, attention outputs, resnet outputs and residual branches (a res
  block's ``conv2`` output, AnyI2V and I2V3D §3.2.2) per step into a `FeatureStore` (which
  also keeps features per absolute frame across sliding windows, `FeatureStore.frames`);
- `inject` replays them, or a source branch's of the same pass (I2V3D's ``[source; uncond;
  cond]``), masked, transformed (`patch_adain`, AnyI2V), on a step range, with an explicit
  branch/frame batch mapping;
- `extended_attention` lets each frame attend to a window of frames' K/V, optionally with
  I2V3D's foreground/background rule (§3.2.3);
- `reference_kv` attends to a reference frame's K/V (AnyI2V: frame 0's, replacing the other
  frames' own), optionally through X-Dyna's trainable `ReferenceAttentionWeights` (owned by
  the caller, e.g. as a `ReferenceWeights` module); the reference is a frame of the same pass
  or its K/V recorded by `capture` in a pass of its own;
- `stop_after` / `run_until` / `capture_until` end a forward after a named block (AnyI2V's
  latent optimisation, appendix A.1);
- `skip_motion_modules` runs a `UNetMotionModel` without its motion modules, i.e. as the
  image UNet it was made from (AnyI2V's one-frame inversion, appendix A.1).

Every manager can be limited to branches of the batch (`anima.attention.branches`:
``branches=CFG_BRANCHES, targets="cond"``, or `SOURCE_CFG_BRANCHES`).

Layers are named as in ``model.attn_processors`` (without ``.processor``) and selected with
`anima.attention.layers` patterns (`SPATIAL_SELF`, `CROSS`, `TEMPORAL`; res blocks by module
path, `resnet_layers`, `residual_layers`); the frame layout and
``num_frames`` are described in `anima.attention.frames`; the processor and hook protocol in
`anima.attention.processor`.
"""

from __future__ import annotations

from anima.attention.branches import (
    CFG_BRANCHES,
    SOURCE_CFG_BRANCHES,
    Branches,
)
from anima.attention.capture import Capture, capture
from anima.attention.early_exit import StopAfter, capture_until, run_until, stop_after
from anima.attention.extended import ExtendedAttention, MaskFn, extended_attention
from anima.attention.frames import Window
from anima.attention.inject import Inject, Transform, inject
from anima.attention.layers import (
    CROSS,
    RESNETS,
    SPATIAL_SELF,
    TEMPORAL,
    TEMPORAL_RESIDUALS,
    attention_layers,
    is_temporal,
    residual_layers,
    resnet_layers,
    select,
)
from anima.attention.motion import (
    MOTION_MODULES,
    SkipMotionModules,
    skip_motion_modules,
    skip_temporal_layers,
)
from anima.attention.processor import AttentionCall, AttentionHook, HookedAttnProcessor, Hooks
from anima.attention.reference import (
    RecordedKV,
    ReferenceAttention,
    ReferenceAttentionWeights,
    ReferenceWeights,
    reference_kv,
)
from anima.attention.residual import patch_adain
from anima.attention.store import FeatureStore, StepCounter, Steps

__all__ = [
    "CFG_BRANCHES",
    "CROSS",
    "MOTION_MODULES",
    "RESNETS",
    "SOURCE_CFG_BRANCHES",
    "SPATIAL_SELF",
    "TEMPORAL",
    "TEMPORAL_RESIDUALS",
    "AttentionCall",
    "AttentionHook",
    "Branches",
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
    "SkipMotionModules",
    "StepCounter",
    "Steps",
    "StopAfter",
    "Transform",
    "Window",
    "attention_layers",
    "capture",
    "capture_until",
    "extended_attention",
    "inject",
    "is_temporal",
    "patch_adain",
    "reference_kv",
    "residual_layers",
    "resnet_layers",
    "run_until",
    "select",
    "skip_motion_modules",
    "skip_temporal_layers",
    "stop_after",
]
