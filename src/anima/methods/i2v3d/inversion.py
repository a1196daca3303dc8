"""I2V3D §3.2.2's DDIM inversion of the rendered keyframes, every step's latent kept.

(README, "I2V3D": 50 DDIM steps, empty prompt, no classifier-free guidance, with the LoRA UNet
and the depth ControlNet.) The inverse DDIM (`diffusers.DDIMInverseScheduler` of the sampler's
config) visits the sampling's timesteps in reverse: at the inverse step with timestep t_i the
model predicts the noise of the current latent at timestep t_i and the latent moves to noise
level t_i, so the trajectory holds, for each sampling step i, the latent z_{t_i} at the noise
level that step starts from: what the sampling's source branch denoises at step i, and
z_{t_0} = z_T the start of the sampling where the render is visible.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from torch import Tensor

#: ``predict(sample, t) -> noise``: the model (UNet + ControlNet) under the inversion's
#: conditioning.
NoisePredictor = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def ddim_inversion(
    predict: NoisePredictor, scheduler: DDIMScheduler, latents: Tensor, steps: int
) -> Tensor:
    """The inversion trajectory (steps, *latents.shape) of the clean ``latents``: entry ``i``
    is z at the timestep of sampling step ``i`` of ``scheduler`` with ``steps`` steps (module
    docstring), entry 0 the fully inverted z_T. ``scheduler``'s own timesteps are left as
    they were."""
    inverse = DDIMInverseScheduler.from_config(scheduler.config)
    inverse.set_timesteps(steps, device=latents.device)
    sample = latents
    trajectory = []
    for t in inverse.timesteps:
        noise = predict(inverse.scale_model_input(sample, t), t)
        sample = inverse.step(noise, t, sample, return_dict=False)[0]
        trajectory.append(sample)
    return torch.stack(trajectory[::-1])


def check_timesteps(scheduler: DDIMScheduler, steps: int, device: torch.device) -> None:
    """The inverse DDIM's timesteps must be the sampling's, reversed (same spacing and offset),
    else the source branch would denoise latents at the wrong noise levels."""
    inverse = DDIMInverseScheduler.from_config(scheduler.config)
    inverse.set_timesteps(steps, device=device)
    forward = DDIMScheduler.from_config(scheduler.config)
    forward.set_timesteps(steps, device=device)
    if inverse.timesteps.flip(0).tolist() != forward.timesteps.tolist():
        raise ValueError(
            f"the inverse DDIM's timesteps {inverse.timesteps.tolist()[:3]}... are not the "
            f"sampler's reversed ({forward.timesteps.tolist()[:3]}...)"
        )
