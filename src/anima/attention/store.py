"""Where captured features live, and which denoising step the hooks are at.

Feature injection (AnyI2V, I2V3D §3.2.2 and §3.3) records features in one run (an inversion)
and replays them, step by step, in another (the sampling). Both runs tick a `StepCounter`; a
`FeatureStore` keeps what was recorded, keyed by ``(step, layer, kind)``. The step is whatever
integer the caller ticks: a step index (``0..N-1``) or, when an inversion and a sampling visit
the same timesteps in opposite orders, the timestep itself.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator
from typing import Any, TypeAlias

import torch
from torch import Tensor

#: Which steps a hook is active on: ``None`` (all), a container (``range(0, 4)``, a set) or a
#: predicate on the step.
Steps: TypeAlias = Container[int] | Callable[[int], bool] | None

#: What the hooks record or replace: ``q``/``k``/``v`` are an attention layer's projections
#: (``to_q``/``to_k``/``to_v`` outputs, (batch, tokens, inner_dim), before the split into
#: heads), ``out`` its output (what the layer returns), ``resnet`` a resnet block's output.
ATTENTION_KINDS = ("q", "k", "v", "out")
RESNET_KIND = "resnet"


def in_steps(step: int, steps: Steps) -> bool:
    """Whether ``step`` is one of ``steps`` (``None`` is every step)."""
    if steps is None:
        return True
    if callable(steps):
        return bool(steps(step))
    return step in steps


class StepCounter:
    """The current denoising step, shared by every hook that reads it.

    Tick it in the sampling loop (``counter.step = i``) or hand it to a diffusers pipeline as
    ``callback_on_step_end``, which calls it after step ``i`` (it then moves to ``i + 1``)."""

    def __init__(self, step: int = 0) -> None:
        self.step = step

    def __call__(
        self, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        self.step = step + 1
        return callback_kwargs

    def __repr__(self) -> str:
        return f"StepCounter(step={self.step})"


class FeatureStore:
    """Captured features in memory, keyed by ``(step, layer, kind)``.

    Tensors are detached (unless ``detach=False``, e.g. to optimise a latent through captured
    queries, AnyI2V appendix A.1) and moved to ``device``/``dtype`` if given (``"cpu"`` keeps
    a long inversion off the accelerator). Several model calls at the same step (sequential
    CFG, several windows) are stacked along the batch in call order; `clear` empties the store.
    """

    def __init__(
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        detach: bool = True,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.detach = detach
        self._features: dict[tuple[int, str, str], Tensor] = {}

    def add(self, step: int, layer: str, kind: str, value: Tensor) -> None:
        """Record ``value``; a second value at the same key is concatenated along the batch."""
        if self.detach:
            value = value.detach()
        value = value.to(device=self.device, dtype=self.dtype)
        key = (step, layer, kind)
        if key in self._features:
            value = torch.cat([self._features[key], value])
        self._features[key] = value

    def at(self, step: int, layer: str, kind: str) -> Tensor:
        """The feature recorded at ``step`` for ``layer``'s ``kind``."""
        try:
            return self._features[(step, layer, kind)]
        except KeyError:
            raise KeyError(
                f"no {kind!r} feature of layer {layer!r} at step {step} in the store "
                f"(steps recorded: {self.steps()})"
            ) from None

    def get(self, step: int, layer: str, kind: str) -> Tensor | None:
        return self._features.get((step, layer, kind))

    def __contains__(self, key: object) -> bool:
        return key in self._features

    def __len__(self) -> int:
        return len(self._features)

    def __iter__(self) -> Iterator[tuple[int, str, str]]:
        return iter(self._features)

    def items(self) -> Iterator[tuple[tuple[int, str, str], Tensor]]:
        return iter(self._features.items())

    def steps(self) -> list[int]:
        return sorted({step for step, _, _ in self._features})

    def layers(self) -> list[str]:
        return list(dict.fromkeys(layer for _, layer, _ in self._features))

    def kinds(self) -> list[str]:
        return list(dict.fromkeys(kind for _, _, kind in self._features))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._features.values())

    def clear(self) -> None:
        self._features.clear()

    def map(self, fn: Callable[[Tensor], Tensor]) -> FeatureStore:
        """A new store with ``fn`` applied to every feature, e.g. ``lambda t: t.chunk(2)[1]``
        keeps the conditional half of features captured under batched CFG."""
        out = FeatureStore(self.device, self.dtype, self.detach)
        out._features = {key: fn(value) for key, value in self._features.items()}
        return out

    def __repr__(self) -> str:
        return (
            f"FeatureStore({len(self)} features, steps={self.steps()}, "
            f"kinds={self.kinds()}, {self.nbytes() / 2**20:.1f} MiB)"
        )
