"""Recording features per denoising step: attention Q/K/V and outputs, resnet outputs and
residual branches.

The inversion half of feature injection (AnyI2V appendix A.1, I2V3D §3.2.2 and §3.3): run the
model over the inverted trajectory inside ``capture`` and tick the step; the store then holds
what `anima.attention.inject` replays. Capturing never changes the model's output (a hooked
stock layer records the q/k/v its exact reproduction computes, other layers delegate to their
original processor; resnets and residual branches are read by forward hooks). ``branches`` /
``targets`` record only some branches of each call (`anima.attention.branches`), e.g. the
conditional half; `anima.attention.early_exit.capture_until` records only as far as a block.

    store, counter = FeatureStore(), StepCounter()
    with capture(unet, store, layers="up_blocks.*attn1", kinds=("q", "k"),
                 resnets="up_blocks.*", counter=counter):
        for i, t in enumerate(timesteps):
            counter.step = i
            unet(latents, t, text)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from anima.attention.layers import Patterns, attention_layers, residual_layers, resnet_layers
from anima.attention.processor import AttentionCall, AttentionHook, Hooks
from anima.attention.residual import ResidualFn
from anima.attention.store import (
    ATTENTION_KINDS,
    RESIDUAL_KIND,
    RESNET_KIND,
    FeatureStore,
    StepCounter,
    Steps,
)


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    unknown = set(kinds) - set(ATTENTION_KINDS)
    if unknown:
        raise ValueError(f"unknown feature kinds {sorted(unknown)}; use {ATTENTION_KINDS}")
    return tuple(kinds)


class _CaptureAttention(AttentionHook):
    def __init__(self, owner: Capture, layer: str) -> None:
        self.owner = owner
        self.layer = layer
        self.qkv_kinds = [kind for kind in "qkv" if kind in owner.kinds]

    def wants_qkv(self, call: AttentionCall) -> bool:
        return bool(self.qkv_kinds) and self.owner.active()

    def qkv(
        self, call: AttentionCall, query: Tensor, key: Tensor, value: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        if self.owner.active():
            features = {"q": query, "k": key, "v": value}
            for kind in self.qkv_kinds:
                self.owner.record(self.layer, kind, features[kind])
        return query, key, value

    def output(self, call: AttentionCall, hidden_states: Tensor) -> Tensor:
        if "out" in self.owner.kinds and self.owner.active():
            self.owner.record(self.layer, "out", hidden_states)
        return hidden_states


class Capture(Hooks):
    """Record, at each model call, ``kinds`` (of ``q``, ``k``, ``v``, ``out``) of the attention
    layers matched by ``layers``, the output of the resnet blocks matched by ``resnets`` (kind
    ``resnet``) and the residual branch of the res blocks matched by ``residuals`` (kind
    ``residual``, see `anima.attention.residual`), less those matched by ``exclude``, under
    ``(counter.step, layer, kind)`` in ``store``, on the ``steps`` given (all by default), of
    the ``targets`` among the batch's ``branches`` (the whole batch by default, see
    `anima.attention.branches`). Use as a context manager."""

    def __init__(
        self,
        model: nn.Module,
        store: FeatureStore,
        layers: Patterns | None = None,
        kinds: Sequence[str] = ("q", "k", "v"),
        resnets: Patterns | None = None,
        *,
        residuals: Patterns | None = None,
        exclude: Patterns | None = None,
        steps: Steps = None,
        counter: StepCounter | None = None,
        branches: Sequence[str] | None = None,
        targets: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(model, counter, steps, branches, targets)
        self.store = store
        self.layers = layers
        self.kinds = check_kinds(kinds)
        self.resnets = resnets
        self.residuals = residuals
        self.exclude = exclude

    def record(self, layer: str, kind: str, value: Tensor) -> None:
        self.store.add(self.counter.step, layer, kind, self.targeted_rows(value))

    def _install(self) -> None:
        attention = (
            {} if self.layers is None else attention_layers(self.model, self.layers, self.exclude)
        )
        blocks = (
            {} if self.resnets is None else resnet_layers(self.model, self.resnets, self.exclude)
        )
        residuals = (
            {}
            if self.residuals is None
            else residual_layers(self.model, self.residuals, self.exclude)
        )
        if not attention and not blocks and not residuals:
            raise ValueError(
                f"capture selects no layers (layers={self.layers!r}, resnets={self.resnets!r}, "
                f"residuals={self.residuals!r}, exclude={self.exclude!r})"
            )
        if attention and not self.kinds:
            raise ValueError("capture of attention layers needs at least one kind")
        for name, attn in attention.items():
            self._attach(name, attn, _CaptureAttention(self, name))
        for name, block in blocks.items():
            self._forward_hook(block, self._resnet_hook(name))
        for name, block in residuals.items():
            self._residual_hook(block, self._residual_fn(name))

    def _residual_fn(self, layer: str) -> ResidualFn:
        def record(features: Tensor, frames: int | None) -> None:
            if self.active():
                self.record(layer, RESIDUAL_KIND, features)

        return record

    def _resnet_hook(self, layer: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            if self.active():
                self.record(layer, RESNET_KIND, output)

        return hook


#: The context-manager spelling of `Capture` (``with capture(model, ...):``).
capture = Capture
