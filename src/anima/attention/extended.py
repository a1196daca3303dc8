"""Extended (cross-frame) self-attention: each frame's queries attend to other frames' K/V.

I2V3D §3.2.3 (Eq. 2): ``ExtAttn(q_i; k_1..n, v_1..n) = softmax(q_i k_1..n^T / sqrt(d)) v_1..n``,
the keys and values of several keyframes concatenated, so that keyframes generated jointly share
their appearance; AnyI2V lets every frame use frame 0's K/V (a window ``[0]``). Which frames each
frame sees is a `anima.attention.frames.Window`; frames are grouped per video as described in
`anima.attention.frames` (CFG halves stay apart).

Masks restrict which keys a query may see (True = visible), on top of the window:

- ``shared``: (H, W) or (F, H, W), which tokens of a frame the OTHER frames may see (a frame
  always sees all of its own), e.g. I2V3D's "background shares across frames, foreground within
  its frame" with ``shared = background``; resized to each layer's grid, visible where >= 0.5;
- ``mask_fn(frame, window_frames, (h, w))``: any boolean mask broadcastable to
  (h*w queries, len(window_frames) * h*w keys) for the queries of ``frame`` (called once per
  frame count and grid size; the masks are cached for the manager's lifetime).

With neither, when every frame has the same window, the queries of all frames of a video attend
in one call to the window's keys, without copying them per frame.

``foreground`` (H, W) or (F, H, W) builds in I2V3D's rule for keyframes generated jointly
(I2V3D §3.2.3 with the release's masks): background queries attend to their own frame plus the
other frames' background tokens (``shared`` = the background), foreground queries to their own
frame only. It is computed as two attention calls combined per query, never with a dense
(F*N x F*N) mask: the masked extended attention (each frame's window of keys with a boolean mask
over keys only, (F, L*N), broadcast over queries and heads) for background queries, the plain
attention of the frame for foreground ones.

``branches``/``targets`` (`anima.attention.branches`) limit it to some branches of the batch,
e.g. the target branches of I2V3D's ``[source; uncond; cond]`` pass; the others get their plain
attention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from anima.attention.frames import MaskCache, Window, frame_count, groups, token_grid, windows
from anima.attention.layers import SPATIAL_SELF, Patterns, attention_layers, is_temporal
from anima.attention.processor import AttentionCall, AttentionHook, Hooks, plain_attention
from anima.attention.store import StepCounter, Steps

#: ``mask_fn(frame, window_frames, (h, w)) -> bool mask (h*w or 1, len(window_frames) * h*w)``.
MaskFn = Callable[[int, list[int], tuple[int, int]], Tensor]


@dataclass
class _Plan:
    windows: list[list[int]]
    index: Tensor  # (F, L) frame of each window slot, padded
    valid: Tensor  # (F, L) whether the slot is a real frame (windows may differ in length)
    fixed: list[int] | None  # the window, when every frame has the same one


def _plan(window: Window, num_frames: int) -> _Plan:
    frames = windows(window, num_frames)
    length = max(len(w) for w in frames)
    index = torch.tensor([w + [w[0]] * (length - len(w)) for w in frames])
    valid = torch.tensor([[True] * len(w) + [False] * (length - len(w)) for w in frames])
    fixed = frames[0] if all(w == frames[0] for w in frames) else None
    return _Plan(frames, index, valid, fixed)


def check_spatial_self(layers: dict[str, nn.Module]) -> None:
    """Frame-wise hooks need spatial self-attention (batch = videos x frames)."""
    wrong = [name for name, attn in layers.items() if is_temporal(name) or attn.is_cross_attention]
    if wrong:
        raise ValueError(
            f"{wrong} are temporal or cross-attention layers; frame-wise attention hooks "
            "work on spatial self-attention (e.g. layers=SPATIAL_SELF or exclude=TEMPORAL)"
        )


class OwnerAttention(AttentionHook):
    """A layer's hook that hands the attention itself to its owner's ``attend(call, query,
    key, value)`` while the owner is active, on the rows of the owner's target branches (the
    others attend plainly); ``what`` names the owner in errors (these owners take no
    ``attention_mask``)."""

    may_edit = True
    attends = True

    def __init__(self, owner: Any, what: str) -> None:
        self.owner = owner
        self.what = what

    def edits(self, call: AttentionCall) -> bool:
        return self.owner.active()

    def attend(
        self, call: AttentionCall, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None
    ) -> Tensor | None:
        if not self.owner.active():
            return None
        if mask is not None:
            raise ValueError(f"{call.layer}: {self.what} takes no attention_mask")
        return self.owner.attend_targets(call, query, key, value, self.owner.attend)


class ExtendedAttention(Hooks):
    """Within the block, the spatial self-attention layers matched by ``layers`` (less
    ``exclude``) let each frame attend to the K/V of its ``window`` of frames (``"all"``, a
    sliding size, fixed indices or a function), restricted by ``shared`` / ``mask_fn``, or by
    the ``foreground`` rule, on the ``steps`` given and the ``targets`` among ``branches``.
    ``num_frames`` as in `anima.attention.frames`. Use as a context manager."""

    def __init__(
        self,
        model: nn.Module,
        layers: Patterns = SPATIAL_SELF,
        *,
        window: Window = "all",
        num_frames: int | None = None,
        shared: Tensor | None = None,
        mask_fn: MaskFn | None = None,
        foreground: Tensor | None = None,
        exclude: Patterns | None = None,
        steps: Steps = None,
        counter: StepCounter | None = None,
        branches: Sequence[str] | None = None,
        targets: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(model, counter, steps, branches, targets)
        if foreground is not None and shared is not None:
            raise ValueError("foreground implies shared (its background): give one of them")
        self.layers = layers
        self.exclude = exclude
        self.window = window
        self.num_frames = num_frames
        self.foreground = foreground is not None
        # the mask of what other frames may see: shared, or the foreground (whose complement)
        mask = foreground if foreground is not None else shared
        self.shared = None if mask is None else MaskCache(mask)
        self.mask_fn = mask_fn
        self._plans: dict[int, _Plan] = {}
        self._masks: dict[tuple[int, int, tuple[int, int] | None], Tensor | None] = {}
        self._queries: dict[tuple[int, int, tuple[int, int] | None], Tensor] = {}

    def _install(self) -> None:
        layers = attention_layers(self.model, self.layers, self.exclude)
        if not layers:
            raise ValueError(f"no attention layer matches {self.layers!r}")
        check_spatial_self(layers)
        self._watch_inputs()
        for name, attn in layers.items():
            self._attach(name, attn, OwnerAttention(self, "extended attention"))

    def plan(self, num_frames: int) -> _Plan:
        if num_frames not in self._plans:
            self._plans[num_frames] = _plan(self.window, num_frames)
        return self._plans[num_frames]

    def attend(self, call: AttentionCall, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """Attention of each frame's queries over its window's keys/values; with
        ``foreground``, the plain attention for the foreground queries."""
        extended = self._extended(call, query, key, value)
        if not self.foreground:
            return extended
        batch, _, tokens, _ = query.shape
        num_frames = frame_count(self.num_frames, self.watcher)
        inside = self._foreground_queries(num_frames, tokens, call.size).to(query.device)
        inside = inside.expand(groups(batch, num_frames), -1, -1).reshape(batch, 1, tokens, 1)
        return torch.where(inside, plain_attention(query, key, value), extended)

    def _grid(self, tokens: int, size: tuple[int, int] | None) -> tuple[int, int]:
        if size is not None:
            return size
        hint = self.watcher.size if self.watcher is not None else None
        aspect = self.shared.aspect if self.shared is not None else None
        return token_grid(tokens, hint, aspect)

    def _shared_tokens(self, grid: tuple[int, int], tokens: int) -> Tensor:
        """(mask frames, tokens) bool: the tokens a frame lets other frames see."""
        assert self.shared is not None
        masks = self.shared.at(grid, torch.empty(0)) >= 0.5
        masks = masks.reshape(masks.shape[0], tokens)
        return ~masks if self.foreground else masks

    def _foreground_queries(
        self, num_frames: int, tokens: int, size: tuple[int, int] | None
    ) -> Tensor:
        """(1, F, tokens) bool: the queries of each frame inside its foreground."""
        cache_key = (num_frames, tokens, size)
        if cache_key not in self._queries:
            assert self.shared is not None
            background = self._shared_tokens(self._grid(tokens, size), tokens)
            which = self.shared.for_frames(torch.arange(num_frames), num_frames)
            self._queries[cache_key] = ~background[which][None]
        return self._queries[cache_key]

    def _extended(self, call: AttentionCall, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        batch, heads, tokens, dim = key.shape
        num_frames = frame_count(self.num_frames, self.watcher)
        videos = groups(batch, num_frames)
        plan = self.plan(num_frames)
        mask = self._key_mask(plan, num_frames, tokens, call.size)

        def per_video(x: Tensor) -> Tensor:  # (B, heads, N, d) -> (videos, frames, heads, N, d)
            return x.reshape(videos, num_frames, heads, x.shape[2], dim)

        if plan.fixed is not None and mask is None:
            # one window for all frames: every frame's queries attend at once per video
            q = per_video(query).transpose(1, 2).reshape(videos, heads, -1, dim)
            k = per_video(key)[:, plan.fixed].transpose(1, 2).reshape(videos, heads, -1, dim)
            v = per_video(value)[:, plan.fixed].transpose(1, 2).reshape(videos, heads, -1, dim)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
            out = out.reshape(videos, heads, num_frames, -1, dim).transpose(1, 2)
            return out.reshape(batch, heads, -1, dim)
        index = plan.index.to(key.device)
        k = per_video(key)[:, index].transpose(2, 3).reshape(batch, heads, -1, dim)
        v = per_video(value)[:, index].transpose(2, 3).reshape(batch, heads, -1, dim)
        if mask is not None:
            mask = mask.to(key.device)[None].expand(videos, -1, -1, -1)
            mask = mask.reshape(batch, 1, mask.shape[-2], mask.shape[-1])
        return F.scaled_dot_product_attention(
            query, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False
        )

    def _key_mask(
        self, plan: _Plan, num_frames: int, tokens: int, size: tuple[int, int] | None
    ) -> Tensor | None:
        """(F, queries or 1, L * tokens) bool: which keys each frame's queries may see."""
        cache_key = (num_frames, tokens, size)
        if cache_key not in self._masks:
            self._masks[cache_key] = self._build_mask(plan, num_frames, tokens, size)
        return self._masks[cache_key]

    def _build_mask(
        self, plan: _Plan, num_frames: int, tokens: int, size: tuple[int, int] | None
    ) -> Tensor | None:
        if self.shared is None and self.mask_fn is None and bool(plan.valid.all()):
            return None
        length = plan.index.shape[1]
        visible = plan.valid[:, :, None].expand(num_frames, length, tokens)
        grid = size
        if grid is None and (self.shared is not None or self.mask_fn is not None):
            grid = self._grid(tokens, size)
        if self.shared is not None:
            assert grid is not None
            masks = self._shared_tokens(grid, tokens)
            which = self.shared.for_frames(plan.index, num_frames)
            own = plan.index == torch.arange(num_frames)[:, None]
            visible = visible & (own[..., None] | masks[which])
        visible = visible.reshape(num_frames, 1, length * tokens)
        if self.mask_fn is not None:
            rows = []
            for frame, frames in enumerate(plan.windows):
                extra = torch.as_tensor(self.mask_fn(frame, list(frames), grid), dtype=torch.bool)
                extra = extra.reshape(-1, len(frames) * tokens)
                rows.append(F.pad(extra, (0, (length - len(frames)) * tokens), value=False))
            queries = max(row.shape[0] for row in rows)
            extra = torch.stack([row.expand(queries, -1) for row in rows])
            visible = visible & extra
        return visible


#: The context-manager spelling of `ExtendedAttention` (``with extended_attention(model, ...):``).
extended_attention = ExtendedAttention
