"""Stable Diffusion's noise schedule, which several priors share (SD1.5, SDXL, Zero-1-to-3,
ModelScope / Zeroscope): the configs the methods build their schedulers from when a model folder
carries none, and for the tiny models.
"""

from __future__ import annotations

from typing import Any

#: Scaled-linear betas 0.00085-0.012 over 1000 steps, epsilon prediction (the
#: ``scheduler_config.json`` of those releases, without the sampler's settings).
SD_NOISE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
#: DDIM as those releases sample: no clipping, no final alpha of one, steps offset 1.
SD_DDIM_CONFIG: dict[str, Any] = SD_NOISE_SCHEDULE | {
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
