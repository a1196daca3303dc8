"""LeviTor: 3D trajectory control of SVD with K-means control points.

``prepare`` renders the spec's 3D motion (`anima.render`), or takes the spec's ``render`` folder
instead (`anima.render_import.guidance_render`), and turns the rendered instance and distance
maps into control points and control maps (`controls.control_signal`, the same function
training uses on ground-truth masks), in the control variant and the convention
(ours or the release's, LeviTor §3.2) the loaded ControlNet records; the ``control_convention``
option, when given, wins over the ControlNet's record. ``generate`` runs `LeviTorPipeline` on
the first frame and the maps. The video is generated at the scene size rounded down to a
multiple of 8 (at least 64) and resized back when that differs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch.nn import functional as F

from anima.animation import build_animation
from anima.errors import InputError
from anima.methods.base import Controls, Method
from anima.methods.levitor.controls import ControlPoints, control_signal
from anima.methods.levitor.loading import (
    LEVITOR_CONTROLNET,
    load_components,
    recorded_convention,
)
from anima.methods.registry import register
from anima.render_import import guidance_render
from anima.sampling.steps import step_reporter
from anima.scene import Scene, check_generation_size, generation_size
from anima.spec import MotionSpec
from anima.weights import SVD, Weights

#: Shortest generation side the ``size`` option and the default allow.
MIN_SIDE = 64


class LeviTorOptions(BaseModel):
    """Options of the levitor method (``spec.options``); defaults are the release's."""

    model_config = ConfigDict(extra="forbid")
    num_inference_steps: int = Field(25, ge=1, le=1000, description="Euler steps.")
    min_guidance_scale: float = Field(1.0, ge=0.0, le=30.0, description="CFG on frame 0.")
    max_guidance_scale: float = Field(3.0, ge=0.0, le=30.0, description="CFG on the last frame.")
    fps: int = Field(6, ge=1, le=240, description="Conditioning fps (the model gets fps-1).")
    motion_bucket_id: int = Field(100, ge=0, le=1023, description="SVD motion amount.")
    noise_aug_strength: float = Field(0.02, ge=0.0, le=1.0)
    controlnet_scale: float = Field(1.0, ge=0.0, le=10.0, description="ControlNet strength.")
    points_scale: float = Field(1.0, gt=0.0, le=8.0, description="Multiplies k (Eq. 4-5).")
    decode_chunk_size: int | None = Field(None, ge=1, description="Frames decoded at a time.")
    sequential_cfg: bool = Field(False, description="CFG branches one at a time (less memory).")
    cpu_offload: bool = Field(False, description="Model CPU offload (CUDA/MPS only).")
    size: tuple[int, int] | None = Field(
        None,
        description="Generation [H, W], multiples of 8 (the release's demo runs --width 288 "
        "--height 512, i.e. [512, 288]); default: the scene size scaled to a longest side of at "
        "most 512 (what LeviTor was trained at), rounded down to multiples of 8. Frames are "
        "resized back.",
    )
    control_convention: Literal["release", "anima"] | None = Field(
        None,
        description="How control points are placed and drawn: 'release' (as LeviTor's release "
        "draws them, what its checkpoint was trained on) or 'anima' (ours). Default: what the "
        "loaded ControlNet's config records; this option, when given, wins.",
    )

    release_cfg_order: bool = Field(
        False,
        description="Pair the temporal cross-attention with the image embedding as the "
        "release's batched CFG call does (a bug of the diffusers version it copied): only to "
        "reproduce the official demo exactly. Needs batched CFG (not sequential_cfg).",
    )

    @model_validator(mode="after")
    def _batched_for_release_order(self) -> LeviTorOptions:
        if self.release_cfg_order and self.sequential_cfg:
            raise ValueError("release_cfg_order needs batched CFG: turn sequential_cfg off")
        return self

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, size: tuple[int, int] | None) -> tuple[int, int] | None:
        return check_generation_size(size, MIN_SIDE)


@dataclass
class LeviTorControls(Controls):
    points: ControlPoints | None = None
    maps: torch.Tensor | None = None  # (F, 3, h, w) raw 0..255 at the generation size
    size: tuple[int, int] = (0, 0)  # generation size (h, w)
    convention: str = "anima"  # how the maps were placed and drawn (controls.CONTROL_CONVENTIONS)

    def to_json(self) -> dict[str, Any]:
        assert self.points is not None
        return {
            "levitor_points": self.points.to_json(),
            "generation_size": list(self.size),
            "control_convention": self.convention,
        }


#: Longest side generated by default with ``--weights tiny`` (a smoke test, not a model).
TINY_MAX_SIDE = 128
#: Longest side generated by default with real weights: LeviTor's ControlNet was trained on
#: 288x512 clips (LeviTor §4.1) and its demo runs at 512x288 (H x W).
TRAINED_MAX_SIDE = 512
#: Longest side generated by default with ``--weights toy`` (trained on 64x64 toy clips).
TOY_MAX_SIDE = 64


@functools.lru_cache(maxsize=1)
def load_pipeline(weights: Weights, device: torch.device, dtype: torch.dtype):
    """`LeviTorPipeline` from `loading.load_components` (``DIR/svd`` + ``DIR/levitor``, or tiny
    random models). The last one loaded is kept, so many specs in one run load the models once."""
    from anima.methods.levitor.pipeline import LeviTorPipeline

    return LeviTorPipeline(**load_components(weights, dtype))


@register
class LeviTorMethod(Method):
    name = "levitor"
    summary = "LeviTor: SVD + ControlNet on K-means control points with depth"
    components = (SVD, LEVITOR_CONTROLNET)
    builtin_weights = ("tiny",)
    options_model = LeviTorOptions

    def load(self):
        """The pipeline (cached: loading again with the same weights is free)."""
        if self.options.cpu_offload and self.device.type == "cpu":
            raise InputError("cpu_offload needs a cuda or mps device", "options.cpu_offload")
        return load_pipeline(self.weights, self.device, self.dtype)

    def control_convention(self) -> str:
        """The ``control_convention`` option when given, else the loaded ControlNet's record."""
        if self.options.control_convention is not None:
            return self.options.control_convention
        return self.load().controlnet.config.control_convention

    @classmethod
    def describe_weights(cls, weights: Weights) -> str:
        """What ``anima weights check levitor`` adds: the recorded control-map convention."""
        return f"control maps: {recorded_convention(weights)} convention"

    def prepare(self, spec: MotionSpec, scene: Scene) -> LeviTorControls:
        builtin = {"tiny": TINY_MAX_SIDE, "toy": TOY_MAX_SIDE}
        max_side = builtin.get(self.weights.builtin or "", TRAINED_MAX_SIDE)
        size = self.options.size or generation_size(scene.size, max_side, MIN_SIDE)
        # The motion is built where the spec's pixels live (the scene size), then the scene and
        # the motion are seen at the generation size and rendered there (issue "Photos as people
        # take them", part 2): a 12-megapixel photo is never rendered at its own size. A spec's
        # ``render`` folder, when given, is the guidance instead.
        result = guidance_render(spec, scene, build_animation(spec, scene), size)
        convention = self.control_convention()
        points, maps = control_signal(
            result.instance,
            result.distance,
            spec.moved_ids,
            size=size,
            points_scale=self.options.points_scale,
            seed=spec.seed,
            variant=self.load().controlnet.config.control_variant,  # what it was trained on
            convention=convention,
        )
        return LeviTorControls(spec, scene, result, points, maps, size, convention)

    def generate(self, controls: Controls) -> torch.Tensor:
        assert isinstance(controls, LeviTorControls) and controls.maps is not None
        options = self.options
        pipe = self.load()
        pipe.set_progress_bar_config(disable=True)  # progress goes through self.report
        steps = options.num_inference_steps

        if options.cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        image = controls.scene.image[None].float()
        if tuple(image.shape[-2:]) != controls.size:
            image = F.interpolate(image, size=controls.size, mode="area")
        frames = pipe(
            image[0],
            controls.maps,
            num_inference_steps=options.num_inference_steps,
            min_guidance_scale=options.min_guidance_scale,
            max_guidance_scale=options.max_guidance_scale,
            fps=options.fps,
            motion_bucket_id=options.motion_bucket_id,
            noise_aug_strength=options.noise_aug_strength,
            controlnet_conditioning_scale=options.controlnet_scale,
            decode_chunk_size=options.decode_chunk_size,
            sequential_cfg=options.sequential_cfg,
            release_cfg_order=options.release_cfg_order,
            generator=torch.Generator(device="cpu").manual_seed(controls.spec.seed),
            callback_on_step_end=step_reporter(self.report, self.name, steps),
        )
        return frames.float().cpu()  # generation size; `stream` resizes to the scene
