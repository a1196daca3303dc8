"""Animate124's score-distillation guidances, each a plain object returning named losses.

(Animate124 §3.2-3.4; README, "Animate124"; docs/architecture.md, "A method folder".)

| class | prior | paper | loss name |
| --- | --- | --- | --- |
| `StableDiffusionSDS` | SD1.5, text | Eq. 3, 2D term | ``sds_sd15`` |
| `Zero123SDS` | Zero-1-to-3 XL, reference image + pose | Eq. 3 3D term, Eq. 7 | ``sds_zero123`` |
| `VideoSDS` | ModelScope text-to-video | Eq. 6 | ``sds_video`` |
| `ControlNetTileSDS` | SD1.5 + ControlNet Tile | Eq. 9 | ``sds_tile`` |

Each reads its prior through an `EpsilonPredictor` (``predict(noisy_latents, timesteps,
condition) -> eps``), so any prior plugs in; ``from_components`` builds the diffusers-backed
one from `anima.methods.animate124.loading`'s components. Nothing here imports diffusers.
"""

from anima.methods.animate124.guidance.sds import (
    DEFAULT_SCHEDULE,
    EpsilonPredictor,
    LatentEncoder,
    SDSStep,
    StableDiffusionSDS,
    StableDiffusionSDSOptions,
    UNetEpsilon,
    VaeEncoder,
    alphas_cumprod_from_config,
    draw_timesteps,
    encode_text,
    guided_epsilon,
    score_distillation,
    sds_loss,
    sds_weight,
)
from anima.methods.animate124.guidance.tile import (
    ControlNetEpsilon,
    ControlNetTileSDS,
    TileCondition,
    TileOptions,
)
from anima.methods.animate124.guidance.video import VideoSDS, VideoSDSOptions, encode_video
from anima.methods.animate124.guidance.zero123 import (
    Zero123Condition,
    Zero123Epsilon,
    Zero123Options,
    Zero123Reference,
    Zero123SDS,
    encode_reference,
    view_angle,
    zero123_pose,
)

__all__ = [
    "DEFAULT_SCHEDULE",
    "ControlNetEpsilon",
    "ControlNetTileSDS",
    "EpsilonPredictor",
    "LatentEncoder",
    "SDSStep",
    "StableDiffusionSDS",
    "StableDiffusionSDSOptions",
    "TileCondition",
    "TileOptions",
    "UNetEpsilon",
    "VaeEncoder",
    "VideoSDS",
    "VideoSDSOptions",
    "Zero123Condition",
    "Zero123Epsilon",
    "Zero123Options",
    "Zero123Reference",
    "Zero123SDS",
    "alphas_cumprod_from_config",
    "draw_timesteps",
    "encode_reference",
    "encode_text",
    "encode_video",
    "guided_epsilon",
    "score_distillation",
    "sds_loss",
    "sds_weight",
    "view_angle",
    "zero123_pose",
]
