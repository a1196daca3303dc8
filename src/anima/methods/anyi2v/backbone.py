"""What differs between AnyI2V's two video backbones at call time.

(AnyI2V, appendix: the method runs on several text-to-video UNets; docs/architecture.md, "A
method folder".) ``animatediff`` is the release's: a `UNetMotionModel` (SD1.5 + AnimateDiff
motion modules); ``modelscope`` is ModelScope / Zeroscope's `UNet3DConditionModel`
(`anima.models.modelscope`). Both take latents (B, C, F, h, w) and run their spatial layers on
a (B * F) batch of frames, each video's frames contiguous, so the hook layer, the inversion,
the injection and the optimisation are the same on either. One thing differs: the text
embedding each takes. `UNetMotionModel` wants one row a frame (B * F, 77, D), while
`UNet3DConditionModel` repeats each video's row over its frames itself and wants (B, 77, D).
"""

from __future__ import annotations

from typing import Literal

from diffusers import UNet3DConditionModel
from torch import Tensor, nn

Backbone = Literal["animatediff", "modelscope"]
BACKBONES: tuple[Backbone, ...] = ("animatediff", "modelscope")


def text_for_frames(unet: nn.Module, text: Tensor, num_frames: int) -> Tensor:
    """The ``encoder_hidden_states`` of a ``num_frames``-frame call of ``unet`` for the
    per-video embedding ``text`` (B, 77, D): repeated per frame for a `UNetMotionModel`, as it
    is for a `UNet3DConditionModel` (module docstring)."""
    if isinstance(unet, UNet3DConditionModel):
        return text
    return text.repeat_interleave(num_frames, dim=0)
