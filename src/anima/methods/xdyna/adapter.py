"""X-Dyna's Dynamics-Adapter (X-Dyna §3.2, Eq. 1-3) as a diffusers model.

In every spatial self-attention of the UNet a trainable query projection ``W'_Q`` (initialised
from the layer's ``to_q``) reads each frame's hidden states and attends to the keys and values
the FROZEN ``to_k``/``to_v`` make of the reference frame's hidden states; a trainable,
zero-initialised output projection ``W'_O`` adds the result to the layer's own attention
output. The reference image is a clean frame 0 of the same UNet pass (`XDynaPipeline`), so the
adapter is a pure attention hook (`anima.attention.reference_kv`) and the UNet stays stock.

The adapter also acts on the reference frame itself, as the authors' release does (its branch
runs for all frames, frame 0 included); with ``W'_O = 0`` it changes nothing at all.

Since the reference frame's path depends on nothing else in the pass, it can also go through
the UNet alone: `DynamicsAdapter.record` records, at every adapter layer, the frozen ``to_k``/
``to_v`` of its hidden states (``K_R``, ``V_R``), and `DynamicsAdapter.attach` with
``recorded`` lets passes of generated frames only read them (the sampler's default: one
reference pass per denoising step instead of a reference frame in every window).

The config also records how the UNet the adapter was trained with normalises
(``motion_norm``, ``resnet_norm``: `anima.models.frame_norms`): diffusers' `UNetMotionModel`
as it is by default (motion modules pooled over frames, resnets per frame), the authors' release
the other way round (`anima.methods.xdyna.convert` records that). `XDynaPipeline` runs the UNet
with the recorded norms.

Saved with ``save_pretrained`` (safetensors); parameters are named
``weights.layers.<layer, '.' as '-'>.{to_q,to_out}.*``. The release names them
``<layer>.to_q_ff.weight`` and ``<layer>.to_out_ff.{weight,bias}`` inside its UNet checkpoint
(`anima.methods.xdyna.convert` maps one to the other).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from anima.attention import (
    SPATIAL_SELF,
    TEMPORAL,
    FeatureStore,
    ReferenceAttentionWeights,
    ReferenceWeights,
    attention_layers,
    capture,
    reference_kv,
)
from anima.models.frame_norms import DIFFUSERS_NORMS, FrameNorms

#: The frame of each video (in the UNet pass) that holds the reference image.
REFERENCE_FRAME = 0


class DynamicsAdapter(ModelMixin, ConfigMixin):
    """The trainable query copies and zero-initialised output projections of every spatial
    self-attention layer (``layers``, named as in ``unet.attn_processors``), and the norms of
    the UNet they go with (``motion_norm``, ``resnet_norm``: `FrameNorms`)."""

    @register_to_config
    def __init__(
        self,
        layers: list[str],
        query_dims: list[int],
        inner_dims: list[int],
        out_dims: list[int],
        query_bias: bool = False,
        out_bias: bool = True,
        motion_norm: str = DIFFUSERS_NORMS.motion,
        resnet_norm: str = DIFFUSERS_NORMS.resnet,
    ) -> None:
        super().__init__()
        if not len(layers) == len(query_dims) == len(inner_dims) == len(out_dims):
            raise ValueError("layers, query_dims, inner_dims and out_dims differ in length")
        FrameNorms(motion_norm, resnet_norm)  # type: ignore[arg-type]  # checks both
        self.weights = ReferenceWeights(
            {
                name: ReferenceAttentionWeights(q, inner, out, query_bias, out_bias)
                for name, q, inner, out in zip(
                    layers, query_dims, inner_dims, out_dims, strict=True
                )
            }
        )

    @property
    def norms(self) -> FrameNorms:
        """How the UNet normalises when it runs with this adapter (`anima.models.frame_norms`)."""
        return FrameNorms(self.config.motion_norm, self.config.resnet_norm)

    @classmethod
    def from_unet(cls, unet: nn.Module, norms: FrameNorms = DIFFUSERS_NORMS) -> DynamicsAdapter:
        """An adapter for ``unet``'s spatial self-attentions (the motion modules' temporal
        attentions excluded): query copies of each ``to_q``, output projections zero (§3.2);
        ``norms`` is recorded in its config."""
        selected = attention_layers(unet, SPATIAL_SELF, exclude=TEMPORAL)
        if not selected:
            raise ValueError("the UNet has no spatial self-attention layers")
        first = next(iter(selected.values()))
        adapter = cls(
            layers=list(selected),
            query_dims=[a.to_q.in_features for a in selected.values()],
            inner_dims=[a.to_q.out_features for a in selected.values()],
            out_dims=[a.to_out[0].out_features for a in selected.values()],
            query_bias=first.to_q.bias is not None,
            out_bias=first.to_out[0].bias is not None,
            motion_norm=norms.motion,
            resnet_norm=norms.resnet,
        )
        fresh = ReferenceWeights(
            {n: ReferenceAttentionWeights.from_attention(a) for n, a in selected.items()}
        )
        adapter.weights.load_state_dict(fresh.state_dict())
        device, dtype = first.to_q.weight.device, first.to_q.weight.dtype
        if adapter.dtype != dtype or adapter.device != device:  # diffusers warns on any cast
            adapter.to(device=device, dtype=dtype)
        return adapter

    def attach(
        self,
        unet: nn.Module,
        num_frames: int | None = None,
        recorded: FeatureStore | None = None,
    ) -> AbstractContextManager:
        """Context manager that runs the adapter inside ``unet``'s forward passes; the reference
        is frame `REFERENCE_FRAME` of each video (``num_frames`` frames, read from the UNet's
        input when None) or, given ``recorded`` (from `record`), no frame of the pass: every
        frame reads the recorded ``K_R``/``V_R`` (§3.2, Eq. 2)."""
        if recorded is not None:
            return reference_kv(
                unet, weights=self.weights, recorded=recorded, num_frames=num_frames
            )
        return reference_kv(
            unet,
            weights=self.weights,
            reference=REFERENCE_FRAME,
            num_frames=num_frames,
            apply_to_reference=True,
        )

    @contextmanager
    def record(self, unet: nn.Module, store: FeatureStore) -> Iterator[None]:
        """Inside the block, ``unet`` passes of one-frame videos, each a reference, run the
        adapter on it as the in-pass layout does (its branch over itself) and record in
        ``store`` what `attach` with ``recorded=store`` reads: the ``k``/``v`` (frozen ``to_k``/
        ``to_v`` of its hidden states) of every adapter layer (§3.2)."""
        with (
            self.attach(unet, num_frames=1),
            capture(unet, store, list(self.weights), kinds=("k", "v")),
        ):
            yield
