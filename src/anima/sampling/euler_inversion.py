"""Inverting an Euler (EDM) sampler: clean latents back up its noise levels (I2V3D §3.3).

I2V3D inverts each rendered segment with SVD before interpolating it, so that sampling can start
from, and inject features of, the render's own noisy latents. The sampler's Euler step from noise
level sigma_i to sigma_(i+1) is

    x_(i+1) = x_i + (sigma_(i+1) - sigma_i) (x_i - D(x_i; sigma_i)) / sigma_i

with D the model's denoised estimate. Its inversion runs the same update backwards, evaluating D
at the lower level it starts from (the usual approximation: the exact inverse would need D at the
level it is solving for):

    x_i = x_(i+1) + (sigma_i - sigma_(i+1)) (x_(i+1) - D(x_(i+1); sigma_(i+1))) / sigma_(i+1)

The clean latents stand for the smallest nonzero level (a model is not evaluated at sigma 0).

``refinements`` > 0 solves each step's implicit equation instead, by fixed-point iteration from
that first guess,

    x_i <- x_(i+1) - (sigma_(i+1) - sigma_i) (x_i - D(x_i; sigma_i)) / sigma_i

so that the sampler's step from x_i lands on x_(i+1) exactly when it converges (one more model
evaluation an iteration). I2V3D's release inverts without it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

#: ``denoise(x, i)``: the model's denoised estimate D(x; sigma_i) at sampling step ``i``.
Denoiser = Callable[[Tensor, int], Tensor]


def euler_inversion(
    denoise: Denoiser, latents: Tensor, sigmas: Tensor, refinements: int = 0
) -> list[Tensor]:
    """The latents at each sampling step's noise level, from the clean ``latents``.

    Args:
        denoise: the model's denoised estimate at step ``i`` (module docstring).
        latents: clean latents, standing for the last nonzero level sigma_(n-1).
        sigmas: the sampler's n + 1 levels, decreasing, the last 0 (diffusers' Euler
            scheduler's ``sigmas`` after ``set_timesteps(n)``).
        refinements: fixed-point iterations a step (module docstring); 0 is the plain
            inversion.

    Returns:
        n tensors: entry ``i`` is what sampling step ``i`` starts from (entry 0 the most noisy,
        entry n - 1 the clean latents).
    """
    steps = len(sigmas) - 1
    if steps < 1:
        raise ValueError("need at least one step")
    trajectory: list[Tensor] = [latents] * steps
    x = latents
    for i in range(steps - 1, 0, -1):
        sigma, higher = float(sigmas[i]), float(sigmas[i - 1])
        above = x + (higher - sigma) * (x - denoise(x, i)) / sigma
        for _ in range(refinements):
            above = x - (sigma - higher) * (above - denoise(above, i - 1)) / higher
        x = above
        trajectory[i - 1] = x
    return trajectory
