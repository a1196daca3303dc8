"""Replacing features with captured ones: self-attention Q/K, resnet outputs, residual branches.

The sampling half of feature injection: I2V3D §3.2.2 injects the inversion's self-attention
``q``/``k`` and residual-branch features into keyframe generation (masked where the render is
invalid, foreground and background on different step ranges: two ``inject`` managers composed)
and §3.3 does the same in SVD; AnyI2V replaces frame 0's query and residual-branch features
(after a patch-wise AdaIN, the ``transform`` `anima.attention.residual.patch_adain`) on the
first steps, in the conditional half only.

Where the features come from:

- a `FeatureStore` (``store``), read at ``source_step(counter.step)`` (the same step by
  default; an ``int`` for features captured at one step only); or
- a branch of the same call (``store`` the branch's name, e.g. ``"source"`` with
  ``branches=SOURCE_CFG_BRANCHES``): I2V3D's ``[source; uncond; cond]`` pass, whose source
  branch denoises the inversion's latent in the same forward pass; its features, as the layer
  computes them, go into the target branches.

Which batch entries receive which source features is explicit:

- ``branches`` names the equal blocks of the layer's batch and ``targets`` those that receive
  features (`anima.attention.branches`; by default every branch but ``"source"``). The older
  switch ``cfg`` is the same: ``"none"`` one branch; ``"both"``, ``"cond"``, ``"uncond"`` the
  batch is ``[uncond; cond]`` (diffusers' order) and both halves, or one, receive features.
- Within each target branch, ``frames`` (indices within each video, see
  `anima.attention.frames`) selects the frames that receive features (all by default). The
  source's batch is either the whole call's (same layout: the same rows are taken), one branch
  (the selected frames are taken from it), one entry per selected frame per video, or one entry
  per selected frame shared by every video (e.g. AnyI2V's single inverted image going to frame
  0 of each video: ``frames=[0]``, a source of batch 1).
- ``mask`` (H, W) or (F, H, W), bool or in [0, 1] at any resolution, blends per frame:
  ``mask * source + (1 - mask) * current`` (area-resized to each layer's grid; a zero mask
  leaves the features exactly unchanged).
- ``transform(source, current) -> replacement`` is applied to the receiving rows before the
  mask (e.g. `anima.attention.residual.patch_adain`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor, nn

from anima.attention.branches import Branches, cfg_branches
from anima.attention.capture import check_kinds
from anima.attention.frames import MaskCache, frame_index, groups, token_grid
from anima.attention.layers import (
    Patterns,
    attention_layers,
    is_temporal,
    residual_layers,
    resnet_layers,
)
from anima.attention.processor import AttentionCall, AttentionHook, Hooks
from anima.attention.residual import ResidualFn
from anima.attention.store import RESIDUAL_KIND, RESNET_KIND, FeatureStore, StepCounter, Steps

CFG: TypeAlias = Literal["none", "both", "cond", "uncond"]
#: ``transform(source, current) -> replacement`` on the rows that receive features.
Transform: TypeAlias = Callable[[Tensor, Tensor], Tensor]


class _InjectAttention(AttentionHook):
    may_edit = True

    def __init__(self, owner: Inject, layer: str, temporal: bool) -> None:
        self.owner = owner
        self.layer = layer
        self.temporal = temporal
        self.qkv_kinds = [kind for kind in "qkv" if kind in owner.kinds]

    def edits(self, call: AttentionCall) -> bool:
        return bool(self.qkv_kinds) and self.owner.active()

    def qkv(
        self, call: AttentionCall, query: Tensor, key: Tensor, value: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        if not self.owner.active():
            return query, key, value
        features = {"q": query, "k": key, "v": value}
        for kind in self.qkv_kinds:
            features[kind] = self.owner.place(
                self.layer, kind, features[kind], call.size, self.temporal
            )
        return features["q"], features["k"], features["v"]

    def output(self, call: AttentionCall, hidden_states: Tensor) -> Tensor:
        if "out" in self.owner.kinds and self.owner.active():
            return self.owner.place(self.layer, "out", hidden_states, call.size, self.temporal)
        return hidden_states


class Inject(Hooks):
    """Replace ``kinds`` (of ``q``, ``k``, ``v``, ``out``) of the attention layers matched by
    ``layers``, the outputs of the resnets matched by ``resnets`` and the residual branches of
    the res blocks matched by ``residuals`` (see `anima.attention.residual`) with those of
    ``store`` (a `FeatureStore`, or the name of a branch of the same call), on the ``steps``
    given; ``branches``/``targets`` (or ``cfg``), ``frames``, ``num_frames``, ``mask``,
    ``transform`` and ``source_step`` as in this module's docstring. Use as a context
    manager."""

    def __init__(
        self,
        model: nn.Module,
        store: FeatureStore | str,
        layers: Patterns | None = None,
        kinds: Sequence[str] = ("q", "k"),
        resnets: Patterns | None = None,
        *,
        residuals: Patterns | None = None,
        exclude: Patterns | None = None,
        steps: Steps = None,
        counter: StepCounter | None = None,
        source_step: int | Callable[[int], int] | None = None,
        num_frames: int | None = None,
        frames: Sequence[int] | None = None,
        cfg: CFG = "none",
        branches: Sequence[str] | None = None,
        targets: str | Sequence[str] | None = None,
        mask: Tensor | None = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(model, counter, steps)
        if branches is not None:
            if cfg != "none":
                raise ValueError("give the batch layout as branches/targets or as cfg, not both")
            self.branches = Branches.of(branches, targets)
        elif targets is not None:
            raise ValueError("targets name branches: give branches too")
        else:
            self.branches = cfg_branches(cfg)
        if isinstance(store, str):
            source = self.branches.span(store, len(self.branches.names))
            if source.targeted:
                raise ValueError(f"the source branch {store!r} cannot also be a target")
        if frames is not None and not frames:
            raise ValueError("frames must name at least one frame (or be None for all)")
        self.store = store
        self.layers = layers
        self.kinds = check_kinds(kinds)
        self.resnets = resnets
        self.residuals = residuals
        self.exclude = exclude
        self.source_step = source_step
        self.num_frames = num_frames
        self.frames = None if frames is None else list(frames)
        self.cfg = cfg
        self.mask = None if mask is None else MaskCache(mask)
        self.transform = transform
        self._rows: dict[tuple[int, int, int | None], tuple[Tensor, Tensor, Tensor, bool]] = {}

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
                f"inject selects no layers (layers={self.layers!r}, resnets={self.resnets!r}, "
                f"residuals={self.residuals!r}, exclude={self.exclude!r})"
            )
        per_frame = self.frames is not None or self.mask is not None
        temporal = [name for name in attention if is_temporal(name)]
        if per_frame and temporal:
            raise ValueError(f"frames/mask need spatial layers; exclude the temporal {temporal}")
        self._watch_inputs()
        for name, attn in attention.items():
            self._attach(name, attn, _InjectAttention(self, name, is_temporal(name)))
        for name, block in blocks.items():
            self._forward_hook(block, self._resnet_hook(name))
        for name, block in residuals.items():
            self._residual_hook(block, self._residual_fn(name))

    def _resnet_hook(self, layer: str) -> Callable[..., Tensor | None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
            if not self.active():
                return None
            return self.place(layer, RESNET_KIND, output, None, False)

        return hook

    def _residual_fn(self, layer: str) -> ResidualFn:
        def replace(features: Tensor, frames: int | None) -> Tensor | None:
            if not self.active():
                return None
            return self.place(layer, RESIDUAL_KIND, features, None, False, frames)

        return replace

    def _source_step(self) -> int:
        step = self.counter.step
        if self.source_step is None:
            return step
        if callable(self.source_step):
            return self.source_step(step)
        return self.source_step

    def _frame_count(self, temporal: bool) -> int | None:
        """Frames per video of a spatial layer, when known (needed for frames or masks)."""
        if temporal:
            return None
        if self.num_frames is not None:
            return self.num_frames
        frames = self.watcher.frames if self.watcher is not None else None
        per_frame_mask = self.mask is not None and self.mask.frames > 1
        if frames is None and (self.frames is not None or per_frame_mask):
            raise ValueError("inject with frames or per-frame masks needs num_frames")
        return frames

    def rows(
        self, batch: int, source_batch: int, num_frames: int | None
    ) -> tuple[Tensor, Tensor, Tensor, bool]:
        """(target rows, source rows, frame of each row, whether it is the identity)."""
        key = (batch, source_batch, num_frames)
        if key in self._rows:
            return self._rows[key]
        target: list[int] = []
        source: list[int] = []
        frame: list[int] = []
        for span in self.branches.target_spans(batch):
            start, size = span.start, span.size
            offset = start if source_batch == batch else 0  # the whole call's layout
            if num_frames is None:
                if source_batch not in (size, batch):
                    raise ValueError(f"source batch {source_batch} != layer batch part {size}")
                target += range(start, start + size)
                source += range(offset, offset + size)
                frame += [0] * size
                continue
            videos = groups(size, num_frames)
            chosen = [frame_index(f, num_frames) for f in (self.frames or range(num_frames))]
            target += [start + v * num_frames + f for v in range(videos) for f in chosen]
            frame += chosen * videos
            if source_batch in (size, batch):
                source += [offset + v * num_frames + f for v in range(videos) for f in chosen]
            elif source_batch == videos * len(chosen):
                source += range(videos * len(chosen))
            elif source_batch == len(chosen):
                source += list(range(len(chosen))) * videos
            else:
                raise ValueError(
                    f"source batch {source_batch} fits neither the layer's {size} entries, nor "
                    f"{len(chosen)} frames x {videos} videos, nor {len(chosen)} frames"
                )
        identity = target == source == list(range(batch))
        out = (torch.tensor(target), torch.tensor(source), torch.tensor(frame), identity)
        self._rows[key] = out
        return out

    def source(self, layer: str, kind: str, current: Tensor) -> Tensor:
        """The source features for ``current``: the store's, or the source branch's rows."""
        if isinstance(self.store, str):
            span = self.branches.span(self.store, current.shape[0])
            return current.narrow(0, span.start, span.size)
        source = self.store.at(self._source_step(), layer, kind)
        return source.to(device=current.device, dtype=current.dtype)

    def place(
        self,
        layer: str,
        kind: str,
        current: Tensor,
        size: tuple[int, int] | None,
        temporal: bool,
        num_frames: int | None = None,
    ) -> Tensor:
        """``current`` with the source features put in (see the module docstring);
        ``num_frames`` overrides the frames per video (a temporal res block's own)."""
        source = self.source(layer, kind, current)
        if num_frames is None:
            num_frames = self._frame_count(temporal)
        target_rows, source_rows, frames, identity = self.rows(
            current.shape[0], source.shape[0], num_frames
        )
        if identity and self.mask is None and self.transform is None:
            if source.shape != current.shape:
                raise ValueError(
                    f"{layer} {kind}: source {tuple(source.shape)} != {tuple(current.shape)}"
                )
            return source
        device = current.device
        target_rows, source_rows = target_rows.to(device), source_rows.to(device)
        now = current.index_select(0, target_rows)
        new = source.index_select(0, source_rows)
        if new.shape != now.shape:
            raise ValueError(
                f"{layer} {kind}: source {tuple(new.shape[1:])} != {tuple(now.shape[1:])}"
            )
        if self.transform is not None:
            new = self.transform(new, now)
        if self.mask is not None:
            new = torch.lerp(now, new, self._mask_rows(now, frames, size, num_frames))
        return current.index_copy(0, target_rows, new)

    def _mask_rows(
        self, rows: Tensor, frames: Tensor, size: tuple[int, int] | None, num_frames: int | None
    ) -> Tensor:
        """Each row's mask, shaped to broadcast against ``rows``."""
        assert self.mask is not None
        if rows.ndim == 4:
            grid = (rows.shape[-2], rows.shape[-1])
        elif rows.ndim == 3:
            hint = self.watcher.size if self.watcher is not None else None
            grid = size or token_grid(rows.shape[1], hint, self.mask.aspect)
        else:
            raise ValueError(f"cannot mask features of shape {tuple(rows.shape)}")
        masks = self.mask.at(grid, rows)
        which = self.mask.for_frames(frames, num_frames).to(rows.device)
        chosen = masks.index_select(0, which)
        if rows.ndim == 4:
            return chosen[:, None]
        return chosen.reshape(rows.shape[0], -1, 1)


#: The context-manager spelling of `Inject` (``with inject(model, ...):``).
inject = Inject
