"""Attention to a reference frame's keys/values (X-Dyna §3.2 Eq. 1-3; AnyI2V's frame-0 K/V).

X-Dyna's reference image enters the UNet as a clean extra frame of the same pass (frame 0 by
default), so at every spatial self-attention its hidden states, and the frozen ``to_k``/``to_v``
of them, ``K_R``/``V_R``, are at hand. The Dynamics-Adapter adds to each frame's own attention
(Eq. 1, ``A_i``) an attention of a trainable query copy over the reference (Eq. 2,
``A'_i = softmax(Q'_i K_R^T / sqrt(d)) V_R``), through a trainable, zero-initialised output
projection (Eq. 3, ``Out_i = A_i W_O + A'_i W'_O``). ``Q'`` starts as a copy of ``to_q``; with
``W'_O = 0`` the model starts exactly as the frozen UNet. The trainable parts of one layer are a
`ReferenceAttentionWeights`; `ReferenceWeights` holds them for a whole UNet, keyed by layer name,
for an adapter model to own and save.

The reference frame's own attention is left plain (``apply_to_reference=False``): it is the
frozen UNet on the reference image, X-Dyna's shared-weight parallel branch. Frames are grouped
per video as described in `anima.attention.frames`; under CFG each half's reference is its own.

Without weights, `reference_kv` makes every frame attend to the reference's K/V instead of its
own (AnyI2V: all frames use frame 0's K/V), or to both (``keep_self=True``): extended attention
with a window of the reference frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn
from torch.nn import functional as F

from anima.attention.extended import ExtendedAttention, check_spatial_self
from anima.attention.frames import frame_count, frame_index, groups
from anima.attention.layers import SPATIAL_SELF, Patterns, all_attention_layers, attention_layers
from anima.attention.processor import AttentionCall, AttentionHook, Hooks
from anima.attention.store import StepCounter, Steps


class ReferenceAttentionWeights(nn.Module):
    """The trainable parts of one layer's reference attention (X-Dyna §3.2): the query copy
    ``to_q`` (``W'_Q``) and the output projection ``to_out`` (``W'_O``, zero-initialised)."""

    def __init__(
        self,
        query_dim: int,
        inner_dim: int,
        out_dim: int,
        query_bias: bool = False,
        out_bias: bool = True,
    ) -> None:
        super().__init__()
        self.to_q = nn.Linear(query_dim, inner_dim, bias=query_bias)
        self.to_out = nn.Linear(inner_dim, out_dim, bias=out_bias)
        nn.init.zeros_(self.to_out.weight)
        if self.to_out.bias is not None:
            nn.init.zeros_(self.to_out.bias)

    @classmethod
    def from_attention(cls, attn: Attention) -> ReferenceAttentionWeights:
        """Weights for ``attn``: ``to_q`` copied from the layer's, ``to_out`` zero, on the
        layer's device and dtype."""
        to_q, to_out = attn.to_q, attn.to_out[0]
        weights = cls(
            to_q.in_features,
            to_q.out_features,
            to_out.out_features,
            query_bias=to_q.bias is not None,
            out_bias=to_out.bias is not None,
        )
        weights.to(device=to_q.weight.device, dtype=to_q.weight.dtype)
        with torch.no_grad():
            weights.to_q.weight.copy_(to_q.weight)
            if to_q.bias is not None:
                weights.to_q.bias.copy_(to_q.bias)
        return weights


def _escape(layer: str) -> str:
    return layer.replace(".", "-")


def _unescape(key: str) -> str:
    return key.replace("-", ".")


class ReferenceWeights(nn.Module):
    """`ReferenceAttentionWeights` by layer name, as a module (its state dict keys are
    ``layers.<layer with '.' as '-'>.to_q.weight``, ...) and a read-only mapping."""

    def __init__(self, weights: Mapping[str, ReferenceAttentionWeights]) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({_escape(name): w for name, w in weights.items()})

    @classmethod
    def from_model(
        cls, model: nn.Module, layers: Patterns = SPATIAL_SELF, exclude: Patterns | None = None
    ) -> ReferenceWeights:
        """Fresh weights (query copies, zero outputs) for the selected layers of ``model``."""
        selected = attention_layers(model, layers, exclude)
        if not selected:
            raise ValueError(f"no attention layer matches {layers!r}")
        check_spatial_self(selected)
        return cls(
            {name: ReferenceAttentionWeights.from_attention(a) for name, a in selected.items()}
        )

    def __getitem__(self, layer: str) -> ReferenceAttentionWeights:
        return self.layers[_escape(layer)]

    def __contains__(self, layer: object) -> bool:
        return isinstance(layer, str) and _escape(layer) in self.layers

    def __iter__(self) -> Iterator[str]:
        return (_unescape(key) for key in self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def keys(self) -> list[str]:
        return list(self)

    def items(self) -> list[tuple[str, ReferenceAttentionWeights]]:
        return [(_unescape(key), module) for key, module in self.layers.items()]


class _ReferenceHook(AttentionHook):
    may_edit = True

    def __init__(self, owner: ReferenceAttention, layer: str, weights: nn.Module) -> None:
        self.owner = owner
        self.layer = layer
        self.weights = weights

    def edits(self, call: AttentionCall) -> bool:
        return self.owner.active()

    def projected(self, call: AttentionCall, hidden_states: Tensor) -> Tensor:
        if not self.owner.active():
            return hidden_states
        return hidden_states + self.owner.branch(call, self.weights, hidden_states)


class ReferenceAttention(Hooks):
    """X-Dyna's Dynamics-Adapter branch on the layers ``weights`` names (see `reference_kv`)."""

    def __init__(
        self,
        model: nn.Module,
        weights: Mapping[str, nn.Module],
        layers: Patterns | None = None,
        *,
        reference: int = 0,
        num_frames: int | None = None,
        apply_to_reference: bool = False,
        exclude: Patterns | None = None,
        steps: Steps = None,
        counter: StepCounter | None = None,
    ) -> None:
        super().__init__(model, counter, steps)
        self.weights = weights
        self.layers = layers
        self.exclude = exclude
        self.reference = reference
        self.num_frames = num_frames
        self.apply_to_reference = apply_to_reference

    def _install(self) -> None:
        if self.layers is None:
            every = all_attention_layers(self.model)
            missing = [name for name in self.weights if name not in every]
            if missing:
                raise KeyError(f"the model has no attention layers {missing}")
            layers = {name: every[name] for name in self.weights}
        else:
            layers = attention_layers(self.model, self.layers, self.exclude)
            unweighted = [name for name in layers if name not in self.weights]
            if unweighted:
                raise KeyError(f"no reference weights for layers {unweighted}")
        if not layers:
            raise ValueError("reference attention selects no layers")
        check_spatial_self(layers)
        self._watch_inputs()
        for name, attn in layers.items():
            self._attach(name, attn, _ReferenceHook(self, name, self.weights[name]))

    def branch(self, call: AttentionCall, weights: nn.Module, hidden_states: Tensor) -> Tensor:
        """``A'_i W'_O`` (Eq. 2-3) for every frame but the reference, zero for the reference."""
        assert call.key is not None and call.value is not None and call.hidden_states is not None
        batch, heads, _, dim = call.key.shape
        num_frames = frame_count(self.num_frames, self.watcher)
        videos = groups(batch, num_frames)
        reference = frame_index(self.reference, num_frames)
        targets = [f for f in range(num_frames) if self.apply_to_reference or f != reference]
        if not targets:
            return torch.zeros_like(hidden_states)
        inputs = call.hidden_states
        tokens = inputs.shape[1]
        inputs = inputs.reshape(videos, num_frames, tokens, -1)[:, targets]
        dtype = weights.to_q.weight.dtype
        query = weights.to_q(inputs.to(dtype))  # (videos, T, N, inner): Q'_i
        query = query.reshape(videos, -1, heads, dim).transpose(1, 2)
        if call.attn.norm_q is not None:
            query = call.attn.norm_q(query)
        key = call.key.reshape(videos, num_frames, heads, -1, dim)[:, reference]  # K_R
        value = call.value.reshape(videos, num_frames, heads, -1, dim)[:, reference]  # V_R
        attended = F.scaled_dot_product_attention(
            query, key.to(query.dtype), value.to(query.dtype), dropout_p=0.0, is_causal=False
        )  # A'_i, all target frames of a video at once: they share K_R, V_R
        attended = attended.transpose(1, 2).reshape(videos, len(targets), tokens, heads * dim)
        delta = weights.to_out(attended).to(hidden_states.dtype)  # A'_i W'_O
        if len(targets) < num_frames:
            index = torch.tensor(targets, device=delta.device)
            full = delta.new_zeros(videos, num_frames, *delta.shape[2:])
            delta = full.index_copy(1, index, delta)
        return delta.reshape(hidden_states.shape)


def _self_and(reference: int) -> Callable[[int, int], list[int]]:
    """The window of a frame and the reference frame."""

    def window(frame: int, num_frames: int) -> list[int]:
        return sorted({frame, frame_index(reference, num_frames)})

    return window


def reference_kv(
    model: nn.Module,
    layers: Patterns | None = None,
    *,
    weights: Mapping[str, nn.Module] | None = None,
    reference: int = 0,
    keep_self: bool = False,
    num_frames: int | None = None,
    apply_to_reference: bool = False,
    exclude: Patterns | None = None,
    steps: Steps = None,
    counter: StepCounter | None = None,
) -> Hooks:
    """Let each frame attend to the K/V of frame ``reference`` (of each video).

    With ``weights`` (layer name -> `ReferenceAttentionWeights`, e.g. a `ReferenceWeights`):
    X-Dyna's adapter branch added to the plain attention on those layers (or on the ``layers``
    selected, all of which need weights); the reference frame itself is left plain unless
    ``apply_to_reference``. Without: the reference's K/V replace each frame's own (or join them,
    ``keep_self``) on the spatial self-attention ``layers`` (`SPATIAL_SELF` by default). Use as a
    context manager; ``num_frames`` as in `anima.attention.frames`."""
    if weights is None:
        return ExtendedAttention(
            model,
            SPATIAL_SELF if layers is None else layers,
            window=_self_and(reference) if keep_self else [reference],
            num_frames=num_frames,
            exclude=exclude,
            steps=steps,
            counter=counter,
        )
    return ReferenceAttention(
        model,
        weights,
        layers,
        reference=reference,
        num_frames=num_frames,
        apply_to_reference=apply_to_reference,
        exclude=exclude,
        steps=steps,
        counter=counter,
    )
