"""One attention processor that hosts every hook, and the context managers that install them.

The mechanisms of three papers are edits of the same self-attention computation: AnyI2V and
I2V3D (§3.2.2) replace its Q/K with features from an inversion, X-Dyna (§3.2, Eq. 1-3) adds an
attention to a reference frame's K/V, I2V3D (§3.2.3, Eq. 2) and AnyI2V let each frame attend to
other frames' K/V. Instead of patching forwards, each hooked layer gets one
`HookedAttnProcessor` (through diffusers' ``Attention.set_processor``) holding the processor
that was there before (``base``) and an ordered list of `AttentionHook` objects:

- while no hook edits the current call (nothing installed edits, or its steps are not now) the
  call is delegated to ``base``, so the output is bit-identical to the unhooked model. Hooks that
  only read Q/K/V (a capture) get the projections the processor computes anyway: on a stock
  ``AttnProcessor2_0`` layer the call takes the hooked path below, which reproduces it exactly
  (bit for bit) and computes ``to_q``/``to_k``/``to_v`` once; on any other base they are
  recomputed from the same inputs beside it (the base's own computation stays untouched);
- otherwise the processor computes attention itself with diffusers' ``AttnProcessor2_0``
  semantics (spatial_norm, 4-D inputs, group_norm, norm_cross, norm_q/norm_k, attention mask,
  ``to_out``, residual_connection, rescale_output_factor; the SDPA scale is 1/sqrt(head_dim)),
  giving the hooks their say at four points: the projections (`AttentionHook.qkv`), the
  attention itself (`AttentionHook.attend`, at most one hook a layer), the projected output
  before dropout (`AttentionHook.projected`) and the layer's output (`AttentionHook.output`).
  Hooks act in the order they were installed: a capture installed after an injection records
  the injected features.

`Hooks` is the base of the context managers (`capture`, `inject`, `extended_attention`,
`reference_kv`, `stop_after`): entering installs, leaving removes (also on error); each may be
limited to some branches of the batch (``branches``/``targets``, `anima.attention.branches`).
Several may be active on one model, on the same layers or not; removing one takes only its
hooks off, and when a layer's last hook goes its original processor object is put back, so
``model.attn_processors`` is exactly as before. Resnet hooks (on a block's output, or on its
residual branch: its ``conv2``) are ``register_forward_hook`` handles, removed the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeVar

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import Tensor, nn
from torch.nn import functional as F

from anima.attention.branches import Branches, Span
from anima.attention.frames import InputWatcher
from anima.attention.residual import ResidualFn, residual_hook
from anima.attention.store import StepCounter, Steps, in_steps

_H = TypeVar("_H", bound="Hooks")

#: Processors whose computation `HookedAttnProcessor` reproduces, so that hooks may edit it
#: (exact types: a subclass may compute something else). Hooked, ``AttnProcessor`` layers
#: compute with SDPA too: the same attention, up to float rounding.
EDITABLE_BASES = (AttnProcessor2_0, AttnProcessor)
#: The processor `HookedAttnProcessor` reproduces bit for bit.
EXACT_BASE = AttnProcessor2_0


@dataclass
class AttentionCall:
    """One call of one hooked attention layer, as the hooks see it. ``hidden_states`` is the
    query input after the layer's own normalisations, (batch, tokens, channels); ``size`` its
    (h, w) when the layer's input was 4-D; ``query``/``key``/``value`` are set (split into heads,
    (batch, heads, tokens, head_dim)) before `AttentionHook.attend`."""

    layer: str
    attn: Attention
    hidden_states: Tensor | None = None
    size: tuple[int, int] | None = None
    is_self: bool = True
    query: Tensor | None = None
    key: Tensor | None = None
    value: Tensor | None = None

    def narrow(self, start: int, size: int) -> AttentionCall:
        """The same call restricted to batch rows ``start:start + size`` (one branch)."""
        if start == 0 and self.hidden_states is not None and size == self.hidden_states.shape[0]:
            return self

        def rows(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor.narrow(0, start, size)

        return replace(
            self,
            hidden_states=rows(self.hidden_states),
            query=rows(self.query),
            key=rows(self.key),
            value=rows(self.value),
        )


class AttentionHook:
    """One edit or reading of one attention layer; every method defaults to doing nothing."""

    #: Whether the hook can change the computation (then the base must be `EDITABLE_BASES`).
    may_edit: ClassVar[bool] = False
    #: Whether the hook implements `attend` (at most one such hook per layer).
    attends: ClassVar[bool] = False

    def edits(self, call: AttentionCall) -> bool:
        """Whether this call must take the hooked path (e.g. the step is in range)."""
        return False

    def wants_qkv(self, call: AttentionCall) -> bool:
        """Whether `qkv` must be called even when nothing edits (a capture)."""
        return False

    def qkv(
        self, call: AttentionCall, query: Tensor, key: Tensor, value: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The projections ``to_q``/``to_k``/``to_v``, (batch, tokens, inner_dim)."""
        return query, key, value

    def attend(
        self, call: AttentionCall, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None
    ) -> Tensor | None:
        """The attention output (batch, heads, tokens, head_dim), or None for the plain one."""
        return None

    def projected(self, call: AttentionCall, hidden_states: Tensor) -> Tensor:
        """The output after ``to_out[0]`` (before dropout and the residual), (batch, tokens, C)."""
        return hidden_states

    def output(self, call: AttentionCall, hidden_states: Tensor) -> Tensor:
        """What the layer returns."""
        return hidden_states


def _inputs(
    attn: Attention,
    hidden_states: Tensor,
    encoder_hidden_states: Tensor | None,
    temb: Tensor | None,
) -> tuple[Tensor, Tensor, tuple[int, int] | None]:
    """The query and key/value inputs as ``AttnProcessor2_0`` prepares them. A diffusers
    IP-Adapter layer receives ``(text, [image tokens])``: hooks read the text's (the keys and
    values of ``to_k``/``to_v``; the image tokens' own projections are the base's business)."""
    if isinstance(encoder_hidden_states, tuple):
        encoder_hidden_states = encoder_hidden_states[0]
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    size = None
    if hidden_states.ndim == 4:
        batch, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        size = (height, width)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    return hidden_states, encoder_hidden_states, size


class HookedAttnProcessor:
    """The processor of a hooked layer: ``base`` (the processor it replaced) plus ``hooks``.

    Not an ``nn.Module``: the hooks' trainable parts (e.g. `ReferenceAttentionWeights`) belong
    to whoever owns them, never to the UNet's state dict. (A base that is a module, such as an
    IP-Adapter processor, still runs, but is out of the UNet's state dict while hooked; hooks
    that read its Q/K/V get the text's, see `_inputs`.) Diffusers passes a processor only the
    keyword arguments its signature names: ``temb`` and ``ip_adapter_masks`` are forwarded to
    the base, other ``cross_attention_kwargs`` are not."""

    def __init__(self, layer: str, base: Any) -> None:
        self.layer = layer
        self.base = base
        self.hooks: list[AttentionHook] = []

    def __repr__(self) -> str:
        names = ", ".join(type(hook).__name__ for hook in self.hooks)
        return f"HookedAttnProcessor({self.layer!r}, base={type(self.base).__name__}, [{names}])"

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        ip_adapter_masks: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        hooks = list(self.hooks)
        call = AttentionCall(self.layer, attn, is_self=encoder_hidden_states is None)
        reads = any(hook.wants_qkv(call) for hook in hooks)
        if any(hook.edits(call) for hook in hooks) or (reads and type(self.base) is EXACT_BASE):
            # an edit, or a reading of q/k/v that the exact reproduction computes only once
            out = self._hooked(
                call, hooks, hidden_states, encoder_hidden_states, attention_mask, temb
            )
        else:
            if reads:  # another base: its q/k/v are not at hand, recompute them beside it
                inputs = _inputs(attn, hidden_states, encoder_hidden_states, temb)
                call.hidden_states, context, call.size = inputs
                q, k, v = attn.to_q(call.hidden_states), attn.to_k(context), attn.to_v(context)
                for hook in hooks:
                    hook.qkv(call, q, k, v)
            if temb is not None:
                kwargs["temb"] = temb
            if ip_adapter_masks is not None:
                kwargs["ip_adapter_masks"] = ip_adapter_masks
            out = self.base(
                attn,
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=attention_mask,
                **kwargs,
            )
        for hook in hooks:
            out = hook.output(call, out)
        return out

    def _hooked(
        self,
        call: AttentionCall,
        hooks: list[AttentionHook],
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None,
        attention_mask: Tensor | None,
        temb: Tensor | None,
    ) -> Tensor:
        """``AttnProcessor2_0.__call__`` with the hooks' edits."""
        attn = call.attn
        residual = hidden_states
        input_shape = hidden_states.shape
        hidden_states, context, call.size = _inputs(
            attn, hidden_states, encoder_hidden_states, temb
        )
        call.hidden_states = hidden_states
        batch_size = context.shape[0]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(
                attention_mask, context.shape[1], batch_size
            )
            attention_mask = attention_mask.view(
                batch_size, attn.heads, -1, attention_mask.shape[-1]
            )

        query = attn.to_q(hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)
        for hook in hooks:
            query, key, value = hook.qkv(call, query, key, value)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        call.query, call.key, call.value = query, key, value

        attended = None
        for hook in hooks:
            attended = hook.attend(call, query, key, value, attention_mask)
            if attended is not None:
                break
        if attended is None:
            attended = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )
        hidden_states = attended.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        for hook in hooks:
            hidden_states = hook.projected(call, hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if len(input_shape) == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(input_shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def attach(attn: Attention, layer: str, hook: AttentionHook) -> Callable[[], None]:
    """Add ``hook`` to the layer (installing a `HookedAttnProcessor` if it has none); returns
    the function that takes it off again and, with the last hook, restores the processor."""
    current = attn.processor
    processor = current if isinstance(current, HookedAttnProcessor) else None
    base = processor.base if processor is not None else current
    if hook.may_edit and type(base) not in EDITABLE_BASES:
        raise TypeError(
            f"layer {layer!r} uses {type(base).__name__}; hooks that change attention "
            f"reproduce {' / '.join(cls.__name__ for cls in EDITABLE_BASES)} only"
        )
    if hook.attends and processor is not None and any(h.attends for h in processor.hooks):
        raise ValueError(f"layer {layer!r} already has a hook that replaces its keys/values")
    if processor is None:
        processor = HookedAttnProcessor(layer, current)
        attn.set_processor(processor)
    processor.hooks.append(hook)

    def detach() -> None:
        if any(h is hook for h in processor.hooks):
            processor.hooks.remove(hook)
        if not processor.hooks and attn.processor is processor:
            attn.set_processor(processor.base)

    return detach


def plain_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """The unedited attention of the hooked path (as ``AttnProcessor2_0`` computes it)."""
    return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)


class Hooks(ABC):
    """Base of the context managers: ``with hooks:`` (or `install` / `remove`) puts hooks on a
    model and takes them off, also when the block raises. ``counter`` is the `StepCounter` the
    hooks read (share one between a capture and an injection; ``hooks.step = i`` ticks it),
    ``steps`` the steps they are active on (`anima.attention.store.Steps`), ``branches`` the
    branches of the batch and ``targets`` those the hooks act on (`anima.attention.branches`:
    by default one branch, the whole batch; with ``branches``, every branch but ``"source"``)."""

    def __init__(
        self,
        model: nn.Module,
        counter: StepCounter | None = None,
        steps: Steps = None,
        branches: Sequence[str] | None = None,
        targets: str | Sequence[str] | None = None,
    ) -> None:
        self.model = model
        self.counter = counter if counter is not None else StepCounter()
        self.steps = steps
        self.branches = Branches.of(branches, targets)
        self.watcher: InputWatcher | None = None
        self.installed = False
        self._undo: list[Callable[[], None]] = []

    @property
    def step(self) -> int:
        return self.counter.step

    @step.setter
    def step(self, value: int) -> None:
        self.counter.step = value

    def active(self) -> bool:
        """Whether the current step is one of ``steps``."""
        return in_steps(self.counter.step, self.steps)

    def runs(self, batch: int) -> list[Span]:
        """The batch as runs of targeted and untargeted branches (one run: all targeted)."""
        if self.branches.everything:
            return [Span(0, batch, True)]
        return self.branches.runs(batch)

    def targeted_rows(self, value: Tensor) -> Tensor:
        """The rows of ``value`` (batch first) in the targeted branches."""
        runs = [run for run in self.runs(value.shape[0]) if run.targeted]
        if len(runs) == 1:
            return value.narrow(0, runs[0].start, runs[0].size)
        return torch.cat([value.narrow(0, run.start, run.size) for run in runs])

    def attend_targets(
        self,
        call: AttentionCall,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attend: Callable[[AttentionCall, Tensor, Tensor, Tensor], Tensor],
    ) -> Tensor:
        """``attend`` on the targeted branches' rows, plain attention on the others."""
        runs = self.runs(query.shape[0])
        if len(runs) == 1:
            return attend(call, query, key, value)
        outs = []
        for run in runs:
            q, k, v = (x.narrow(0, run.start, run.size) for x in (query, key, value))
            if run.targeted:
                outs.append(attend(call.narrow(run.start, run.size), q, k, v))
            else:
                outs.append(plain_attention(q, k, v))
        return torch.cat(outs)

    def install(self: _H) -> _H:
        if self.installed:
            raise RuntimeError(f"{type(self).__name__} is already installed")
        self.installed = True
        try:
            self._install()
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Take every hook off (in reverse order); safe to call twice."""
        errors = []
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception as error:  # keep restoring the rest, then report
                errors.append(error)
        self.installed = False
        if errors:
            raise errors[0]

    def __enter__(self: _H) -> _H:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    @abstractmethod
    def _install(self) -> None:
        """Select the layers and attach this manager's hooks (each with its undo)."""

    # helpers for subclasses: every change registers its undo

    def _attach(self, layer: str, attn: Attention, hook: AttentionHook) -> None:
        self._undo.append(attach(attn, layer, hook))

    def _forward_hook(self, module: nn.Module, hook: Callable[..., Any]) -> None:
        self._undo.append(module.register_forward_hook(hook).remove)

    def _residual_hook(self, block: nn.Module, fn: ResidualFn) -> None:
        """``fn`` on the residual branch of ``block`` (its ``conv2`` output, frame-major)."""
        self._forward_hook(block.conv2, residual_hook(fn))

    def _watch_inputs(self) -> InputWatcher:
        self.watcher = InputWatcher(self.model)
        self._undo.append(self.watcher.remove)
        return self.watcher
