"""One step-callback convention for every pipeline: diffusers' ``callback_on_step_end``.

A pipeline calls ``callback(pipe, step, t, {"latents": latents})`` after each denoising step
(step counted from 0) and continues with the latents the callback returns, as diffusers'
pipelines do; `step_reporter` makes the callback a method uses to report progress lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

StepCallback = Callable[[Any, int, Tensor, dict[str, Tensor]], dict[str, Tensor]]
"""``f(pipe, step, t, {"latents": ...}) -> {"latents": ...}``, diffusers' convention."""


def step_reporter(report: Callable[[str], None], method: str, steps: int) -> StepCallback:
    """A callback that reports ``generating with <method>: step i/steps`` and changes nothing."""

    def on_step(_pipe: Any, step: int, _t: Tensor, tensors: dict[str, Tensor]):
        report(f"generating with {method}: step {step + 1}/{steps}")
        return tensors

    return on_step


def guided(noise: Tensor, scale: float | Tensor) -> Tensor:
    """Classifier-free guidance of a batched prediction ``[uncond, cond]``: uncond + scale
    (cond - uncond) (``scale`` may be a tensor broadcasting over the halves, e.g. per frame)."""
    uncond, cond = noise.chunk(2)
    return uncond + scale * (cond - uncond)


def after_step(
    callback: StepCallback | None, pipe: Any, step: int, t: Tensor, latents: Tensor
) -> Tensor:
    """The latents to continue with after step ``step``: the callback's, when it returns any."""
    if callback is None:
        return latents
    return callback(pipe, step, t, {"latents": latents}).get("latents", latents)
