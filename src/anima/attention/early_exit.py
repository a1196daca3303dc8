"""Forward passes that stop after a named block.

AnyI2V's latent optimisation (appendix A.1; the release exits after ``up_blocks[2]``) needs only
the queries of a few decoder layers: each of its iterations runs the UNet as far as the last
block that holds them, takes the loss on the recorded features and back-propagates to the
latent. `stop_after` ends the forward there: a forward hook on the block raises a private
exception, which the context manager catches (the block's output is kept as ``output``);
`capture_until` combines it with `anima.attention.capture` and returns the features the blocks
that ran recorded (none of a later block). Gradients flow as usual through what was recorded
(use a ``FeatureStore(detach=False)``).

    store = capture_until(unet, "up_blocks.2", (latents, t), {"encoder_hidden_states": text},
                          layers=OPTIMISED, kinds="q", store=FeatureStore(detach=False))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from torch import nn

from anima.attention.capture import Capture
from anima.attention.layers import Patterns
from anima.attention.processor import Hooks
from anima.attention.store import FeatureStore, StepCounter


class _StopForward(Exception):
    """Raised by `StopAfter`'s hook to leave the model's forward; never escapes its manager."""

    def __init__(self, owner: StopAfter) -> None:
        super().__init__(f"forward stopped after {owner.block!r}")
        self.owner = owner


class StopAfter(Hooks):
    """Within the block, a forward of ``model`` stops right after its submodule ``block``
    (named as in ``model.named_modules()``, e.g. ``"up_blocks.2"``): the model call does not
    return, the ``with`` block ends there, and ``output`` holds the block's output (``stopped``
    says whether it was reached). Put the model call last in the ``with`` block."""

    def __init__(self, model: nn.Module, block: str) -> None:
        super().__init__(model)
        self.block = block
        self.output: Any = None
        self.stopped = False

    def _install(self) -> None:
        modules = dict(self.model.named_modules())
        if self.block not in modules:
            raise ValueError(f"the model has no block {self.block!r}")
        self.output, self.stopped = None, False
        self._forward_hook(modules[self.block], self._stop)

    def _stop(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.output, self.stopped = output, True
        raise _StopForward(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self.remove()
        return isinstance(exc, _StopForward) and exc.owner is self


#: The context-manager spelling of `StopAfter` (``with stop_after(model, "up_blocks.2"):``).
stop_after = StopAfter


def run_until(
    model: nn.Module, block: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
) -> Any:
    """``model(*args, **kwargs)`` as far as ``block``: that block's output (the model's own
    output if the forward never reaches it)."""
    with stop_after(model, block) as stop:
        result = model(*args, **dict(kwargs or {}))
    return stop.output if stop.stopped else result


def capture_until(
    model: nn.Module,
    block: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    store: FeatureStore | None = None,
    layers: Patterns | None = None,
    kinds: Sequence[str] = ("q", "k", "v"),
    resnets: Patterns | None = None,
    residuals: Patterns | None = None,
    exclude: Patterns | None = None,
    counter: StepCounter | None = None,
    branches: Sequence[str] | None = None,
    targets: str | Sequence[str] | None = None,
) -> FeatureStore:
    """Run ``model(*args, **kwargs)`` as far as ``block`` while capturing (the options of
    `anima.attention.capture`) and return the store: ``store`` emptied first (one optimisation
    iteration's features, AnyI2V appendix A.1), or a new one; they are recorded at
    ``counter.step`` (0 without a counter). Features of layers after ``block`` are never
    computed, so never recorded."""
    store = FeatureStore() if store is None else store
    store.clear()
    recording = Capture(
        model,
        store,
        layers,
        kinds,
        resnets,
        residuals=residuals,
        exclude=exclude,
        counter=counter,
        branches=branches,
        targets=targets,
    )
    with recording:
        run_until(model, block, args, kwargs)
    return store
