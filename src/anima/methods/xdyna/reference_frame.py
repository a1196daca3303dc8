"""The reference image as a clean frame 0 of the UNet pass (X-Dyna §3.2).

X-Dyna feeds the reference latent as an extra frame in front of each video: the spatial layers
see it (the Dynamics-Adapter reads its keys and values), but it is never noised or stepped, the
motion module skips it ("cross_id" in the release: frame 0 is sliced off before the temporal
transformer and put back unchanged after it), and the ControlNets give it zero residuals.

`skip_reference_in_motion_modules` does the motion-module part with forward hooks on each
AnimateDiff temporal transformer of a `UNetMotionModel` (no forward is patched), and
`with_reference_residuals` puts zero residuals in front of ControlNet residuals computed for
the generated frames only.

Since the reference's path through the UNet depends on nothing else in the pass, the sampler
can also run it alone, once per denoising step (`XDynaPipeline.reference_features`): there
the motion modules are switched off (`anima.attention.skip_motion_modules`), which leaves it
unchanged by every motion module, as the skip does in the in-pass layout.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


def motion_modules(unet: nn.Module) -> list[nn.Module]:
    """The temporal transformers of a `UNetMotionModel`, in module order (as
    `anima.attention.motion.motion_modules` finds them; here without importing the hook layer,
    which the CLI must not load at start-up)."""
    found = []
    for name, module in unet.named_modules():
        parent = name.rsplit(".", 2)
        if len(parent) == 3 and parent[1] == "motion_modules":
            found.append(module)
    return found


class _SkipFrameZero:
    """Hooks of one temporal transformer: frame 0 of each video leaves before, returns after."""

    def __init__(self, module: nn.Module) -> None:
        self._held: Tensor | None = None
        self._handles = [
            module.register_forward_pre_hook(self._before, with_kwargs=True),
            module.register_forward_hook(self._after),
        ]

    def _before(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        frames = int(kwargs.get("num_frames", 1))
        if frames < 2:
            raise ValueError("a reference frame needs at least one generated frame after it")
        videos = hidden.shape[0] // frames
        grouped = hidden.reshape(videos, frames, *hidden.shape[1:])
        self._held = grouped[:, :1]
        kwargs["num_frames"] = frames - 1
        generated = grouped[:, 1:].reshape(videos * (frames - 1), *hidden.shape[1:])
        return (generated, *args[1:]), kwargs

    def _after(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        assert self._held is not None
        held, self._held = self._held, None
        videos = held.shape[0]
        grouped = output.reshape(videos, -1, *output.shape[1:])
        return torch.cat([held.to(output.dtype), grouped], dim=1).flatten(0, 1)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextmanager
def skip_reference_in_motion_modules(unet: nn.Module) -> Iterator[None]:
    """Inside the block, every motion module of ``unet`` leaves frame 0 of each video as it is
    and runs on frames 1.. only (positions then start at the first generated frame)."""
    modules = motion_modules(unet)
    if not modules:
        raise ValueError("the UNet has no motion modules (expected a UNetMotionModel)")
    hooks = [_SkipFrameZero(module) for module in modules]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def with_reference_residuals(residuals: Sequence[Tensor], videos: int, frames: int) -> list[Tensor]:
    """ControlNet residuals of ``videos x frames`` generated frames ((videos*frames, C, h, w)
    each) -> residuals of ``videos x (1 + frames)`` frames, zero on each reference frame 0."""
    out = []
    for residual in residuals:
        grouped = residual.reshape(videos, frames, *residual.shape[1:])
        zero = grouped.new_zeros(videos, 1, *residual.shape[1:])
        out.append(torch.cat([zero, grouped], dim=1).flatten(0, 1))
    return out
