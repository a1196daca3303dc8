"""I2V3D §3.2's keyframe guidance: which frames are keyframes, what the render gives them, and
the hooks of one window of keyframes (docs/architecture.md, "The hook layer").

Keyframes (README, "I2V3D"): every ``every``-th frame from frame 0 (`keyframe_indices`).
Each keyframe's render gives its depth condition (`depth_condition`: near bright, min-max per
frame to [0, 1], three channels, as depth ControlNets read), its foreground (object ids > 0)
and its visibility (the pixels the reconstruction covers).

In the sampling pass, whose batch is ``[source, uncond, cond]`` (`SOURCE_CFG_BRANCHES`; the
source branch denoises the inversion's latent of the step), `WindowGuidance` puts on the UNet,
for the keyframes of one window:

- the source's residual-branch features (a res block's ``conv2`` output) of `Guidance.residuals`
  into uncond and cond inside the foreground, on the first ``residual_fraction`` of the steps
  (I2V3D §3.2.2, the paper's tau_conv = 1 - 0.6);
- the source's self-attention queries and keys (never values) of `Guidance.attention` on every
  step, masked by visibility for the first ``visibility_fraction`` of the steps, by the
  foreground after (§3.2.2; the paper's tau_sa = 0: all steps);
- extended attention over the window's keyframes on `Guidance.extended` (§3.2.3, Eq. 2) with
  the foreground/background rule (background queries see their own frame plus the other frames'
  background; foreground queries their own frame only), target branches only.

Masks go to the hook layer at the render's resolution and are resized there to each layer's
token grid (`anima.attention.frames.MaskCache`); nothing here knows a layer's shape.

Layers by base (`default_layers`). The release names SDXL's: residual branches of every res
block of ``up_blocks[0..2]``, attention in ``up_blocks[0..1]`` (SDXL's up blocks 0 and 1 are its
two cross-attention levels, block 2 has none). SD1.5 has four up levels, ``up_blocks[0]`` without
attentions and ``up_blocks[1..3]`` with; its level ``i + 1`` works at the relative resolution
(1/4, 1/2, 1 of the latent) of SDXL's ``i``, so the SD1.5 defaults are the same levels shifted by
one: residual branches of ``up_blocks[1..3]``, attention in ``up_blocks[1..2]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

if TYPE_CHECKING:  # the hook layer imports diffusers; the CLI imports this package without it
    from anima.attention import Hooks, StepCounter
    from anima.attention.layers import Patterns

#: Frames between keyframes (the release's).
KEYFRAME_EVERY = 15
#: Keyframes generated jointly with extended attention, and keyframes two windows share.
WINDOW = 4
OVERLAP = 1
#: Fraction of the steps with residual-branch injection (the release's 60 %).
RESIDUAL_FRACTION = 0.6
#: Fraction of the steps whose Q/K injection is masked by visibility (then by the foreground).
VISIBILITY_FRACTION = 0.8
#: The release's negative prompt.
NEGATIVE_PROMPT = "ugly, blurry, low res, unrealistic, unaesthetic"

_SELF = "up_blocks.{levels}.attentions.*.transformer_blocks.*.attn1"
_RES = "up_blocks.{levels}.resnets.*"
#: Per base: (residual-branch res blocks, Q/K injection and extended attention layers).
DEFAULT_LAYERS: dict[str, tuple[str, str]] = {
    "sdxl": (_RES.format(levels="[012]"), _SELF.format(levels="[01]")),
    "sd15": (_RES.format(levels="[123]"), _SELF.format(levels="[12]")),
}


def default_layers(base: str) -> tuple[str, str]:
    """(residual-branch pattern, self-attention pattern) of ``base`` (module docstring)."""
    if base not in DEFAULT_LAYERS:
        raise ValueError(f"unknown base {base!r}")
    return DEFAULT_LAYERS[base]


def keyframe_indices(num_frames: int, every: int = KEYFRAME_EVERY) -> list[int]:
    """Frames 0, ``every``, 2 ``every``, ... below ``num_frames`` (I2V3D §3.2: keyframes,
    then interpolation between them)."""
    if every < 1 or num_frames < 1:
        raise ValueError(f"need every >= 1 and num_frames >= 1, got {every}, {num_frames}")
    return list(range(0, num_frames, every))


def step_count(fraction: float, steps: int) -> int:
    """How many of ``steps`` steps a fraction covers (rounded to the nearest step)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fractions are in [0, 1], got {fraction}")
    return int(round(fraction * steps))


def depth_condition(distance: Tensor) -> Tensor:
    """(K, H, W) distances -> (K, 3, H, W) depth images in [0, 1] as depth ControlNets read
    them (README, "I2V3D": Blender's depth inverted, min-max normalised per frame): each
    frame's nearest point 1, farthest 0; a flat frame is 0."""
    flat = distance.float().flatten(1)
    near, far = flat.min(dim=1).values, flat.max(dim=1).values
    span = (far - near).clamp_min(1e-8)[:, None, None]
    depth = ((far[:, None, None] - distance.float()) / span).clamp(0.0, 1.0)
    return depth[:, None].expand(-1, 3, -1, -1).contiguous()


def latent_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """(K, H, W) bool / [0, 1] mask -> (K, 1, h, w) bool at latent ``size``: a latent cell is
    inside when at least half of its pixels are (area resize, then >= 0.5)."""
    area = F.interpolate(mask[:, None].float(), size=size, mode="area")
    return area >= 0.5


def start_latents(inverted: Tensor, noise: Tensor, visible: Tensor) -> Tensor:
    """The sampling's start (I2V3D §3.2.2): the inverted z_T where the render is visible,
    the fresh ``noise`` elsewhere; ``visible`` (K, 1, h, w) bool (`latent_mask`)."""
    return torch.where(visible.to(inverted.device), inverted, noise.to(inverted.dtype))


@dataclass(frozen=True)
class Guidance:
    """I2V3D §3.2.2-3's keyframe guidance (module docstring); defaults are the release's
    (``None`` layers: `default_layers` of the base). ``enabled`` False: no hook at all (the
    pipeline is then a plain depth-ControlNet sampler with a source branch beside it)."""

    enabled: bool = True
    residual_fraction: float = RESIDUAL_FRACTION
    visibility_fraction: float = VISIBILITY_FRACTION
    residuals: Patterns | None = None
    attention: Patterns | None = None
    extended: Patterns | None = None
    extended_attention: bool = True
    window: int = WINDOW
    overlap: int = OVERLAP

    def __post_init__(self) -> None:
        step_count(self.residual_fraction, 1)
        step_count(self.visibility_fraction, 1)
        if self.window < 1 or not 0 <= self.overlap < self.window:
            raise ValueError(f"need window >= 1 and 0 <= overlap < window, got {self}")

    def layers(self, base: str) -> tuple[Patterns, Patterns, Patterns]:
        """(residual branches, Q/K attention, extended attention) patterns for ``base``."""
        residuals, attention = default_layers(base)
        residuals = self.residuals if self.residuals is not None else residuals
        attention = self.attention if self.attention is not None else attention
        extended = self.extended if self.extended is not None else attention
        return residuals, attention, extended


@dataclass
class WindowGuidance:
    """The hook managers of one window of keyframes (module docstring), made once and entered
    around each of the window's UNet calls; ``counter`` is ticked by the sampling loop.
    ``foreground`` and ``visible`` are (K_w, H, W) at any resolution."""

    unet: nn.Module
    guidance: Guidance
    base: str
    steps: int
    foreground: Tensor
    visible: Tensor
    counter: StepCounter
    hooks: list[Hooks] = field(default_factory=list)

    def __post_init__(self) -> None:
        from anima.attention import SOURCE_CFG_BRANCHES, extended_attention, inject

        if not self.guidance.enabled:
            return
        frames = int(self.foreground.shape[0])
        residuals, attention, extended = self.guidance.layers(self.base)
        residual_steps = step_count(self.guidance.residual_fraction, self.steps)
        visibility_steps = step_count(self.guidance.visibility_fraction, self.steps)
        foreground = self.foreground.float()
        visible = self.visible.float()
        where = {
            "branches": SOURCE_CFG_BRANCHES,
            "num_frames": frames,
            "counter": self.counter,
        }
        if residual_steps:
            self.hooks.append(
                inject(
                    self.unet,
                    "source",
                    residuals=residuals,
                    mask=foreground,
                    steps=range(residual_steps),
                    **where,
                )
            )
        for mask, steps in (
            (visible, range(visibility_steps)),
            (foreground, range(visibility_steps, self.steps)),
        ):
            if len(steps):
                self.hooks.append(
                    inject(
                        self.unet,
                        "source",
                        layers=attention,
                        kinds=("q", "k"),
                        mask=mask,
                        steps=steps,
                        **where,
                    )
                )
        if self.guidance.extended_attention:
            self.hooks.append(
                extended_attention(
                    self.unet, extended, window="all", foreground=foreground, **where
                )
            )

    def __enter__(self) -> WindowGuidance:
        entered: list[Hooks] = []
        try:
            for hook in self.hooks:
                hook.install()
                entered.append(hook)
        except BaseException:
            for hook in reversed(entered):
                hook.remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for hook in reversed(self.hooks):
            hook.remove()
