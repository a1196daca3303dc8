"""Where captured features live, and which denoising step the hooks are at.

Feature injection (AnyI2V, I2V3D §3.2.2 and §3.3) records features in one run (an inversion)
and replays them, step by step, in another (the sampling). Both runs tick a `StepCounter`; a
`FeatureStore` keeps what was recorded, keyed by ``(step, layer, kind)``. The step is whatever
integer the caller ticks: a step index (``0..N-1``) or, when an inversion and a sampling visit
the same timesteps in opposite orders, the timestep itself.

Two patterns need more than one tensor per key:

- windowed passes (a long video denoised, or inverted, in sliding windows of frames): inside
  ``with store.frames(indices):`` the passes hold the frames ``indices`` (absolute indices in
  the whole video), and features are kept per frame, so that a pass over another window (I2V3D
  §3.3's interpolation windows, or an inversion windowed differently from the sampling) reads
  exactly its frames;
- iterations at one step (AnyI2V's latent optimisation, appendix A.1: several forwards at the
  same step, each reading its own features): ``overwrite=True`` keeps each call's features in
  place of the last, `clear` empties the store (or one step of it).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias

import torch
from torch import Tensor

from anima.attention.layers import is_temporal

#: Which steps a hook is active on: ``None`` (all), a container (``range(0, 4)``, a set) or a
#: predicate on the step.
Steps: TypeAlias = Container[int] | Callable[[int], bool] | None

#: What the hooks record or replace: ``q``/``k``/``v`` are an attention layer's projections
#: (``to_q``/``to_k``/``to_v`` outputs, (batch, tokens, inner_dim), before the split into
#: heads), ``out`` its output (what the layer returns), ``resnet`` a resnet block's output,
#: ``residual`` a res block's residual branch (its ``conv2`` output, before the shortcut is
#: added; an SVD ``TemporalResnetBlock``'s (videos, C, F, H, W) kept frame-major as
#: (videos * F, C, H, W), like every spatial layer's).
ATTENTION_KINDS = ("q", "k", "v", "out")
RESNET_KIND = "resnet"
RESIDUAL_KIND = "residual"

Key: TypeAlias = tuple[int, str, str]


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
    CFG, several windows) are stacked along the batch in call order, or, with ``overwrite``,
    the last call's replaces the earlier ones; `clear` empties the store or one step of it.

    Inside `frames` the features are kept per frame, by absolute index (see the module
    docstring): the frames of a layer's batch are ``videos x frames`` (frame-major, as in
    `anima.attention.frames`) in spatial layers and residual branches, its tokens in temporal
    attention layers (`anima.attention.layers.TEMPORAL`; their cross-attention keys and values,
    of one token, have no frames: record those outside `frames`). A frame recorded again at the
    same key (windows that overlap) is replaced: the latest pass that held it wins. Reading
    inside `frames` returns the window's frames in its order; outside, every recorded frame in
    increasing order.
    """

    def __init__(
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        detach: bool = True,
        overwrite: bool = False,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.detach = detach
        self.overwrite = overwrite
        self._features: dict[Key, Tensor] = {}
        self._per_frame: dict[Key, dict[int, Tensor]] = {}
        self._window: list[int] | None = None

    # windows of frames

    @property
    def window(self) -> list[int] | None:
        """The absolute frame indices of the current passes (inside `frames`), else None."""
        return None if self._window is None else list(self._window)

    @contextmanager
    def frames(self, indices: Iterable[int]) -> Iterator[FeatureStore]:
        """Within the block, model passes hold the frames ``indices`` of the whole video (in
        their batch order); features are recorded and read per frame. Nests (the inner
        window applies) and restores the previous window on exit."""
        window = [int(i) for i in indices]
        if not window or len(set(window)) != len(window) or min(window) < 0:
            raise ValueError(f"a window needs distinct non-negative frame indices, got {window}")
        previous, self._window = self._window, window
        try:
            yield self
        finally:
            self._window = previous

    @staticmethod
    def _frame_axis(layer: str) -> int:
        return 1 if is_temporal(layer) else 0

    def _split(self, layer: str, value: Tensor, frames: int) -> list[Tensor]:
        """``value`` as one tensor per frame of a pass of ``frames`` frames."""
        axis = self._frame_axis(layer)
        if axis == 1:
            if value.ndim < 2 or value.shape[1] != frames:
                raise ValueError(
                    f"{layer}: {tuple(value.shape)} has no axis of {frames} frames to window"
                )
            return list(value.unbind(1))
        if value.shape[0] % frames:
            raise ValueError(f"{layer}: a batch of {value.shape[0]} is not videos x {frames}")
        return list(value.reshape(-1, frames, *value.shape[1:]).unbind(1))

    def _join(self, layer: str, parts: list[Tensor]) -> Tensor:
        stacked = torch.stack(parts, dim=1)
        if self._frame_axis(layer) == 1:
            return stacked
        return stacked.reshape(-1, *stacked.shape[2:])

    # recording and reading

    def add(self, step: int, layer: str, kind: str, value: Tensor) -> None:
        """Record ``value``; a second value at the same key is concatenated along the batch
        (replaces it with ``overwrite``; inside `frames`, replaces the frames it holds)."""
        if self.detach:
            value = value.detach()
        value = value.to(device=self.device, dtype=self.dtype)
        key = (step, layer, kind)
        if self._window is not None:
            parts = self._split(layer, value, len(self._window))
            per_frame = self._per_frame.setdefault(key, {})
            for frame, part in zip(self._window, parts, strict=True):
                per_frame[frame] = part
            return
        if key in self._features and not self.overwrite:
            value = torch.cat([self._features[key], value])
        self._features[key] = value

    def at(self, step: int, layer: str, kind: str) -> Tensor:
        """The feature recorded at ``step`` for ``layer``'s ``kind`` (the window's frames
        inside `frames`)."""
        value = self.get(step, layer, kind)
        if value is None:
            raise KeyError(self._missing(step, layer, kind))
        return value

    def get(self, step: int, layer: str, kind: str) -> Tensor | None:
        """Like `at`, None when it is not recorded."""
        key = (step, layer, kind)
        per_frame = self._per_frame.get(key)
        if per_frame is None:
            if self._window is not None:
                return None
            return self._features.get(key)
        frames = self._window if self._window is not None else sorted(per_frame)
        if any(frame not in per_frame for frame in frames):
            return None
        return self._join(layer, [per_frame[frame] for frame in frames])

    def _missing(self, step: int, layer: str, kind: str) -> str:
        key = (step, layer, kind)
        where = f"{kind!r} feature of layer {layer!r} at step {step}"
        if key in self._per_frame and self._window is not None:
            missing = [f for f in self._window if f not in self._per_frame[key]]
            return f"frames {missing} of the {where} are not in the store"
        if key in self._features:
            return f"the {where} was recorded outside a window of frames: read it outside one"
        return f"no {where} in the store (steps recorded: {self.steps()})"

    def __contains__(self, key: object) -> bool:
        return key in self._features or key in self._per_frame

    def __len__(self) -> int:
        return len(self._keys())

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys())

    def _keys(self) -> list[Key]:
        return list(dict.fromkeys([*self._features, *self._per_frame]))

    def items(self) -> Iterator[tuple[Key, Tensor]]:
        """Every feature (per-frame ones as `get` returns them here)."""
        for key in self._keys():
            value = self.get(*key)
            if value is not None:
                yield key, value

    def recorded_frames(self, step: int, layer: str, kind: str) -> list[int]:
        """The absolute frames recorded per frame at the key (empty if none)."""
        return sorted(self._per_frame.get((step, layer, kind), {}))

    def steps(self) -> list[int]:
        return sorted({step for step, _, _ in self._keys()})

    def layers(self) -> list[str]:
        return list(dict.fromkeys(layer for _, layer, _ in self._keys()))

    def kinds(self) -> list[str]:
        return list(dict.fromkeys(kind for _, _, kind in self._keys()))

    def nbytes(self) -> int:
        tensors = [*self._features.values()]
        tensors += [t for frames in self._per_frame.values() for t in frames.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def clear(self, step: int | None = None) -> None:
        """Forget everything, or only what was recorded at ``step`` (e.g. once it is used)."""
        if step is None:
            self._features.clear()
            self._per_frame.clear()
            return
        for features in (self._features, self._per_frame):
            for key in [key for key in features if key[0] == step]:
                del features[key]

    def map(self, fn: Callable[[Tensor], Tensor]) -> FeatureStore:
        """A new store with ``fn`` applied to every feature, e.g. ``lambda t: t.chunk(2)[1]``
        keeps the conditional half of features captured under batched CFG (per-frame
        features: ``fn`` on each frame's)."""
        out = FeatureStore(self.device, self.dtype, self.detach, self.overwrite)
        out._features = {key: fn(value) for key, value in self._features.items()}
        out._per_frame = {
            key: {frame: fn(value) for frame, value in frames.items()}
            for key, frames in self._per_frame.items()
        }
        return out

    def __repr__(self) -> str:
        return (
            f"FeatureStore({len(self)} features, steps={self.steps()}, "
            f"kinds={self.kinds()}, {self.nbytes() / 2**20:.1f} MiB)"
        )
