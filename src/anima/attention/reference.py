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
own, or to both (``keep_self=True``): extended attention with a window of the reference frame.
AnyI2V's first-frame feature injection into self-attention is this replacement: frames
1..F-1 attend to frame 0's current K and V, frame 0 to its own, in the conditional half only
(``branches=CFG_BRANCHES, targets="cond"``).

Every mode may be limited to some branches of the batch (``branches``/``targets``,
`anima.attention.branches`): the other branches keep their plain attention (and get no adapter
branch). A recorded reference then needs one row per video of the targeted branches, or one.

A recorded reference (``recorded``, either mode): the reference's path through the spatial
layers does not depend on the other frames (the layers are per frame, and the reference attends
only to itself), so instead of riding along as a frame of every pass it can go through the model
once, alone, while `anima.attention.capture` records the ``k``/``v`` (the frozen ``to_k``/
``to_v`` outputs) of the layers; passes that hold only the other frames then read ``K_R``/``V_R``
from that `FeatureStore` (at the hooks' ``counter.step``), and every frame of such a pass is a
target. One recorded row per video of the pass (e.g. per CFG branch), or one row for all::

    store = FeatureStore()
    with capture(unet, store, SPATIAL_SELF, kinds=("k", "v")):
        unet(reference, t, text)  # (videos, C, 1, h, w): the reference alone
    with reference_kv(unet, weights=weights, recorded=store):
        unet(frames, t, text)  # (videos, C, F, h, w): the generated frames only

equals the in-pass layout on ``[reference, frames]`` for the frames, up to float rounding, if
the recording pass treats the reference as the in-pass one does: with ``apply_to_reference``,
record inside ``reference_kv(unet, weights=weights, num_frames=1, apply_to_reference=True)``
(each one-frame video its own reference), and nothing may mix frames (X-Dyna's pipeline
bypasses its motion modules there, as they skip the reference in the in-pass layout). Saves a
frame per pass wherever one reference serves several passes (sliding windows, X-Dyna §3.2 with
`anima.sampling.windows`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn
from torch.nn import functional as F

from anima.attention.extended import ExtendedAttention, OwnerAttention, check_spatial_self
from anima.attention.frames import frame_count, frame_index, groups
from anima.attention.layers import SPATIAL_SELF, Patterns, all_attention_layers, attention_layers
from anima.attention.processor import AttentionCall, AttentionHook, Hooks
from anima.attention.store import FeatureStore, StepCounter, Steps


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
        runs = self.owner.runs(hidden_states.shape[0])
        if len(runs) == 1:
            return hidden_states + self.owner.branch(call, self.weights, hidden_states)
        pieces = []
        for run in runs:
            rows = hidden_states.narrow(0, run.start, run.size)
            if run.targeted:
                sub = call.narrow(run.start, run.size)
                rows = rows + self.owner.branch(sub, self.weights, rows)
            pieces.append(rows)
        return torch.cat(pieces)


def recorded_kv(
    store: FeatureStore, step: int, call: AttentionCall, videos: int
) -> tuple[Tensor, Tensor]:
    """``K_R``, ``V_R`` of ``call``'s layer recorded in ``store`` at ``step`` (the ``k``/``v``
    of a `capture` over the reference alone), split into heads as the layer's own keys and
    values are (``norm_k`` included): (videos, heads, N_R, head_dim) each, one row a video."""
    assert call.key is not None
    heads, dim = call.key.shape[1], call.key.shape[-1]

    def split(kind: str) -> Tensor:
        recorded = store.at(step, call.layer, kind).to(call.key.device, call.key.dtype)
        return recorded.reshape(recorded.shape[0], -1, heads, dim).transpose(1, 2)

    key, value = split("k"), split("v")
    if key.shape[0] not in (1, videos):
        raise ValueError(
            f"{call.layer}: {key.shape[0]} recorded references for a pass of {videos} videos "
            "(record one per video, or one for all)"
        )
    if call.attn.norm_k is not None:
        key = call.attn.norm_k(key)
    return key.expand(videos, -1, -1, -1), value.expand(videos, -1, -1, -1)


class ReferenceAttention(Hooks):
    """X-Dyna's Dynamics-Adapter branch on the layers ``weights`` names (see `reference_kv`);
    the reference is frame ``reference`` of each video, or ``recorded``."""

    def __init__(
        self,
        model: nn.Module,
        weights: Mapping[str, nn.Module],
        layers: Patterns | None = None,
        *,
        reference: int = 0,
        recorded: FeatureStore | None = None,
        num_frames: int | None = None,
        apply_to_reference: bool = False,
        exclude: Patterns | None = None,
        steps: Steps = None,
        counter: StepCounter | None = None,
        branches: Sequence[str] | None = None,
        targets: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(model, counter, steps, branches, targets)
        self.weights = weights
        self.layers = layers
        self.exclude = exclude
        self.reference = reference
        self.recorded = recorded
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

    def targets(self, num_frames: int) -> list[int]:
        """The frames that get the branch: all but an in-pass reference (unless
        ``apply_to_reference``); every frame when the reference is ``recorded``."""
        if self.recorded is not None:
            return list(range(num_frames))
        reference = frame_index(self.reference, num_frames)
        return [f for f in range(num_frames) if self.apply_to_reference or f != reference]

    def reference_key_value(
        self, call: AttentionCall, videos: int, num_frames: int
    ) -> tuple[Tensor, Tensor]:
        """``K_R``, ``V_R`` (videos, heads, N_R, head_dim): the reference frame's own keys and
        values in this pass, or the recorded ones."""
        if self.recorded is not None:
            return recorded_kv(self.recorded, self.counter.step, call, videos)
        assert call.key is not None and call.value is not None
        _, heads, _, dim = call.key.shape
        reference = frame_index(self.reference, num_frames)
        key = call.key.reshape(videos, num_frames, heads, -1, dim)[:, reference]
        value = call.value.reshape(videos, num_frames, heads, -1, dim)[:, reference]
        return key, value

    def branch(self, call: AttentionCall, weights: nn.Module, hidden_states: Tensor) -> Tensor:
        """``A'_i W'_O`` (Eq. 2-3) for the `targets`, zero for an in-pass reference."""
        assert call.key is not None and call.hidden_states is not None
        batch, heads, _, dim = call.key.shape
        num_frames = frame_count(self.num_frames, self.watcher)
        videos = groups(batch, num_frames)
        targets = self.targets(num_frames)
        if not targets:
            return torch.zeros_like(hidden_states)
        inputs = call.hidden_states
        tokens = inputs.shape[1]
        inputs = inputs.reshape(videos, num_frames, tokens, -1)
        if len(targets) < num_frames:
            inputs = inputs[:, targets]
        dtype = weights.to_q.weight.dtype
        query = weights.to_q(inputs.to(dtype))  # (videos, T, N, inner): Q'_i
        query = query.reshape(videos, -1, heads, dim).transpose(1, 2)
        if call.attn.norm_q is not None:
            query = call.attn.norm_q(query)
        key, value = self.reference_key_value(call, videos, num_frames)  # K_R, V_R
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


class RecordedKV(Hooks):
    """Every frame attends to the reference K/V ``recorded`` instead of its own, or to both
    (``keep_self``), on the spatial self-attention ``layers`` (see `reference_kv`)."""

    def __init__(
        self,
        model: nn.Module,
        recorded: FeatureStore,
        layers: Patterns = SPATIAL_SELF,
        *,
        keep_self: bool = False,
        num_frames: int | None = None,
        exclude: Patterns | None = None,
        steps: Steps = None,
        counter: StepCounter | None = None,
        branches: Sequence[str] | None = None,
        targets: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(model, counter, steps, branches, targets)
        self.recorded = recorded
        self.layers = layers
        self.keep_self = keep_self
        self.num_frames = num_frames
        self.exclude = exclude

    def _install(self) -> None:
        layers = attention_layers(self.model, self.layers, self.exclude)
        if not layers:
            raise ValueError(f"no attention layer matches {self.layers!r}")
        check_spatial_self(layers)
        self._watch_inputs()
        for name, attn in layers.items():
            self._attach(name, attn, OwnerAttention(self, "attention to recorded reference K/V"))

    def attend(self, call: AttentionCall, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """Each frame's queries over ``[K_R]`` (or ``[K_R, own K]``) and the values alike."""
        batch, heads, tokens, dim = query.shape
        num_frames = frame_count(self.num_frames, self.watcher)
        videos = groups(batch, num_frames)
        ref_key, ref_value = recorded_kv(self.recorded, self.counter.step, call, videos)
        if self.keep_self:  # the in-pass window [reference, frame]: the reference's keys first
            key = torch.cat([ref_key.repeat_interleave(num_frames, dim=0), key], dim=2)
            value = torch.cat([ref_value.repeat_interleave(num_frames, dim=0), value], dim=2)
            return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0)
        # one reference for all frames of a video: their queries attend at once
        grouped = query.reshape(videos, num_frames, heads, tokens, dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            grouped.reshape(videos, heads, -1, dim), ref_key, ref_value, dropout_p=0.0
        )
        out = out.reshape(videos, heads, num_frames, tokens, dim).transpose(1, 2)
        return out.reshape(batch, heads, tokens, dim)


def reference_kv(
    model: nn.Module,
    layers: Patterns | None = None,
    *,
    weights: Mapping[str, nn.Module] | None = None,
    reference: int = 0,
    recorded: FeatureStore | None = None,
    keep_self: bool = False,
    num_frames: int | None = None,
    apply_to_reference: bool = False,
    exclude: Patterns | None = None,
    steps: Steps = None,
    counter: StepCounter | None = None,
    branches: Sequence[str] | None = None,
    targets: str | Sequence[str] | None = None,
) -> Hooks:
    """Let each frame attend to the K/V of frame ``reference`` (of each video), or to those
    ``recorded`` (a `FeatureStore` of a `capture` of ``k``/``v`` over the reference alone, read
    at ``counter.step``; then the pass holds no reference frame, every frame is a target, and
    ``reference``/``apply_to_reference`` do not apply; see the module docstring).

    With ``weights`` (layer name -> `ReferenceAttentionWeights`, e.g. a `ReferenceWeights`):
    X-Dyna's adapter branch added to the plain attention on those layers (or on the ``layers``
    selected, all of which need weights); the reference frame itself is left plain unless
    ``apply_to_reference``. Without: the reference's K/V replace each frame's own (or join them,
    ``keep_self``) on the spatial self-attention ``layers`` (`SPATIAL_SELF` by default). Use as a
    context manager; ``num_frames`` as in `anima.attention.frames`; ``branches``/``targets``
    limit it to some branches of the batch (e.g. AnyI2V's frame-0 K/V in the conditional half:
    ``reference_kv(unet, layers, branches=CFG_BRANCHES, targets="cond")``)."""
    if recorded is not None and (reference != 0 or apply_to_reference):
        raise ValueError(
            "a recorded reference is no frame of the pass: reference and apply_to_reference "
            "do not apply (record the reference as the in-pass layout treats it)"
        )
    if weights is None and recorded is not None:
        return RecordedKV(
            model,
            recorded,
            SPATIAL_SELF if layers is None else layers,
            keep_self=keep_self,
            num_frames=num_frames,
            exclude=exclude,
            steps=steps,
            counter=counter,
            branches=branches,
            targets=targets,
        )
    if weights is None:
        return ExtendedAttention(
            model,
            SPATIAL_SELF if layers is None else layers,
            window=_self_and(reference) if keep_self else [reference],
            num_frames=num_frames,
            exclude=exclude,
            steps=steps,
            counter=counter,
            branches=branches,
            targets=targets,
        )
    return ReferenceAttention(
        model,
        weights,
        layers,
        reference=reference,
        recorded=recorded,
        num_frames=num_frames,
        apply_to_reference=apply_to_reference,
        exclude=exclude,
        steps=steps,
        counter=counter,
        branches=branches,
        targets=targets,
    )
