"""How a video UNet's GroupNorms treat the frames of a video: each frame alone, or pooled.

A video UNet normalises with GroupNorm in its resnets, its output norm and its motion modules.
Each can take its statistics from one frame (per group over (C/G, H, W)) or from all the frames
of a video in the pass (per group over (C/G, F, H, W)). Diffusers' AnimateDiff `UNetMotionModel`
pools in the motion modules (its ``AnimateDiffTransformer3D`` normalises the (B, C, F, H, W)
tensor) and normalises frame by frame in its 2D resnets. AnimateDiff v1's original UNet, which
X-Dyna builds on (X-Dyna §3.1: temporal modules added to SD; §4.1: initialised from
AnimateDiff v1), does the opposite: its motion modules normalise each frame on its own and its
inflated resnets (``norm1``, ``norm2``) and output norm (``conv_norm_out``) pool over the frames
of the pass. Weights trained one way run differently the other way.

`FrameNorms` names the two choices (``motion`` and ``resnet``, each ``"per_frame"`` or
``"pooled"``; `DIFFUSERS_NORMS` is the stock model's). `frame_norms` is a context manager that
makes a UNet normalise as asked and puts it back on exit, by module replacement: each affected
``nn.GroupNorm`` is swapped for `PerFrameGroupNorm` or `PooledGroupNorm`, which share its
``weight`` and ``bias`` parameters (so state-dict keys, devices, dtypes and trainability are
unchanged) and differ only in which elements a group's mean and variance are taken over.

This is not an attention or feature edit, so it does not go through the hook layer
(`anima.attention`, docs/architecture.md "The hook layer"): no attention processor, query, key,
value or captured feature changes, only the statistics of a normalisation, the way the weights
were trained to be run. The pooled resnet norm needs the frame count of the pass, which a 2D
resnet never sees (its batch is (B * F)): it is read from the UNet's input on every call by
`anima.attention.frames.InputWatcher`, as the hooks do (docs/architecture.md, "Conventions"; the
frames of a video are contiguous in the batch). The motion modules get (B, C, F, H, W), so the
per-frame motion norm needs no count.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import Tensor, nn
from torch.nn import functional as F

from anima.attention.frames import InputWatcher

#: How a GroupNorm treats frames: statistics of each frame alone, or of all a video's frames.
NormMode = Literal["per_frame", "pooled"]
NORM_MODES: tuple[str, ...] = get_args(NormMode)


def check_mode(mode: str, what: str) -> NormMode:
    """``mode`` if it is a `NormMode`, else a ValueError naming ``what``."""
    if mode not in NORM_MODES:
        raise ValueError(f"{what} must be one of {', '.join(NORM_MODES)}, got {mode!r}")
    return mode  # type: ignore[return-value]


@dataclass(frozen=True)
class FrameNorms:
    """The normalisation of a video UNet's motion modules (the GroupNorm at the input of each
    temporal transformer) and of its resnets (``norm1``, ``norm2`` of every resnet and the
    UNet's ``conv_norm_out``)."""

    motion: NormMode = "pooled"
    resnet: NormMode = "per_frame"

    def __post_init__(self) -> None:
        check_mode(self.motion, "motion norm")
        check_mode(self.resnet, "resnet norm")


#: Diffusers' `UNetMotionModel` as it is: motion modules pooled, resnets per frame.
DIFFUSERS_NORMS = FrameNorms()


def _shared_like(cls: type[nn.GroupNorm], norm: nn.GroupNorm, **extra: object) -> nn.GroupNorm:
    """A ``cls`` with ``norm``'s groups, channels and eps that holds ``norm``'s own parameters."""
    swapped = cls(norm.num_groups, norm.num_channels, norm.eps, norm.affine, device="meta", **extra)
    swapped.weight, swapped.bias = norm.weight, norm.bias
    swapped.train(norm.training)
    return swapped


class PerFrameGroupNorm(nn.GroupNorm):
    """GroupNorm of a (B, C, F, H, W) tensor frame by frame: statistics per video, frame and
    group over (C/G, H, W). Other shapes are normalised as `nn.GroupNorm` does (a 4D batch of
    frames is already per frame)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5:
            return super().forward(x)
        b, c, f, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)
        out = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return out.reshape(b, f, c, h, w).transpose(1, 2)


class PooledGroupNorm(nn.GroupNorm):
    """GroupNorm of a (B * F, C, H, W) batch of videos with statistics pooled over each video's
    F frames: per video and group over (C/G, F, H, W). ``F`` is the frame count of the current
    UNet call (``watcher``); with one frame this is `nn.GroupNorm`."""

    def __init__(self, *args: object, watcher: InputWatcher, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.watcher = watcher

    def forward(self, x: Tensor) -> Tensor:
        frames = self.watcher.frames
        if frames is None:
            raise ValueError(
                "a pooled GroupNorm needs the frame count: the UNet's input is not a video"
            )
        if x.ndim != 4 or x.shape[0] % frames:
            raise ValueError(
                f"a pooled GroupNorm takes (videos * {frames}, C, H, W), got {tuple(x.shape)}"
            )
        if frames == 1:
            return super().forward(x)
        bf, c, h, w = x.shape
        video = x.reshape(bf // frames, frames, c, h, w).transpose(1, 2)
        out = F.group_norm(video, self.num_groups, self.weight, self.bias, self.eps)
        return out.transpose(1, 2).reshape(bf, c, h, w)


def motion_norm_slots(unet: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, attribute) of the input GroupNorm of every motion module of ``unet``."""
    return [
        (module, "norm")
        for module in unet.modules()
        if isinstance(module, AnimateDiffTransformer3D)
    ]


def resnet_norm_slots(unet: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, attribute) of ``norm1`` and ``norm2`` of every resnet of ``unet`` and of its
    ``conv_norm_out``: the GroupNorms AnimateDiff v1's UNet applies to whole videos."""
    slots = [
        (module, name)
        for module in unet.modules()
        if isinstance(module, ResnetBlock2D)
        for name in ("norm1", "norm2")
    ]
    if isinstance(getattr(unet, "conv_norm_out", None), nn.GroupNorm):
        slots.append((unet, "conv_norm_out"))
    return slots


def _swap_all(
    slots: list[tuple[nn.Module, str]], make: type[nn.GroupNorm], **extra: object
) -> list[tuple[nn.Module, str, nn.Module]]:
    """Every slot's GroupNorm replaced by a ``make`` sharing its parameters (left as it is when
    it already is one); returns (module, attribute, previous) of the replaced ones."""
    replaced = []
    for module, name in slots:
        norm = getattr(module, name)
        if not isinstance(norm, nn.GroupNorm):
            kind = type(norm).__name__
            raise TypeError(f"{type(module).__name__}.{name} is a {kind}, not a GroupNorm")
        if type(norm) is make:
            continue
        setattr(module, name, _shared_like(make, norm, **extra))
        replaced.append((module, name, norm))
    return replaced


@contextmanager
def frame_norms(unet: nn.Module, norms: FrameNorms) -> Iterator[None]:
    """Inside the block ``unet`` (a `UNetMotionModel`, or any UNet taking (B, C, F, H, W)
    videos) normalises as ``norms`` says; on exit its original norm modules are back in place.
    Nests: norms already of the asked kind are left alone."""
    motion = motion_norm_slots(unet)
    if not motion:
        raise ValueError("the UNet has no motion modules (expected a UNetMotionModel)")
    watcher = InputWatcher(unet) if norms.resnet == "pooled" else None
    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        motion_kind = PerFrameGroupNorm if norms.motion == "per_frame" else nn.GroupNorm
        replaced += _swap_all(motion, motion_kind)
        if watcher is None:
            replaced += _swap_all(resnet_norm_slots(unet), nn.GroupNorm)
        else:
            replaced += _swap_all(resnet_norm_slots(unet), PooledGroupNorm, watcher=watcher)
        yield
    finally:
        for module, name, previous in reversed(replaced):
            setattr(module, name, previous)
        if watcher is not None:
            watcher.remove()
