"""LeviTor: 3D trajectory control of SVD with K-means control points (paper 003).

``prepare`` renders the spec's 3D motion (`anima.render`), and turns the rendered instance and
distance maps into control points and control maps (`controls.control_signal`, the same
function training uses on ground-truth masks). ``generate`` runs `LeviTorPipeline` on the first
frame and the maps. The video is generated at the scene size rounded down to a multiple of 8
(at least 64) and resized back when that differs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.nn import functional as F

from anima.animation import build_animation
from anima.errors import InputError
from anima.methods.base import Controls, Method
from anima.methods.levitor.controls import ControlPoints, control_signal
from anima.methods.registry import register
from anima.render import render
from anima.scene import Scene
from anima.spec import MotionSpec
from anima.weights import SVD, Component, Weights

LEVITOR_CONTROLNET = Component(
    "LeviTor ControlNet",
    "levitor",
    "LeviTor ControlNet (ours, or the official release's accelerate state dir)",
    required_files=("config.json",),
    layouts=("", "controlnet"),
)


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
        description="Generation [H, W], multiples of 8 (e.g. the release's [288, 512]); "
        "default: the scene size rounded down to multiples of 8. Frames are resized back.",
    )

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, size: tuple[int, int] | None) -> tuple[int, int] | None:
        if size is not None and any(side < 64 or side % 8 for side in size):
            raise ValueError("sides must be multiples of 8, at least 64")
        return size


@dataclass
class LeviTorControls(Controls):
    points: ControlPoints | None = None
    maps: torch.Tensor | None = None  # (F, 3, h, w) raw 0..255 at the generation size
    size: tuple[int, int] = (0, 0)  # generation size (h, w)

    def to_json(self) -> dict[str, Any]:
        assert self.points is not None
        return {"levitor_points": self.points.to_json(), "generation_size": list(self.size)}


def generation_size(size: tuple[int, int]) -> tuple[int, int]:
    """The scene size rounded down to multiples of 8, at least 64."""
    return tuple(max(64, side - side % 8) for side in size)  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def load_pipeline(weights: Weights, device: torch.device, dtype: torch.dtype):
    """`LeviTorPipeline` from ``DIR/svd`` + ``DIR/levitor``, or tiny random models. The last
    one loaded is kept, so many specs in one run load the models once."""
    from anima.methods.levitor.pipeline import LeviTorPipeline
    from anima.models.loading import load_svd_components, load_svd_controlnet
    from anima.models.tiny import tiny_controlnet, tiny_svd_components

    if weights.builtin == "tiny":
        components = tiny_svd_components(seed=0)
        controlnet = tiny_controlnet(components["unet"], seed=0, random_output=True)
        pipe = LeviTorPipeline(**components, controlnet=controlnet)
        if dtype != torch.float32:
            pipe.to(dtype=dtype)
    else:
        svd_dir = weights.require(SVD, "levitor")
        controlnet_dir = weights.require(LEVITOR_CONTROLNET, "levitor")
        components = load_svd_components(svd_dir, weights.allow_pickle, dtype)
        controlnet = load_svd_controlnet(controlnet_dir, weights.allow_pickle, dtype)
        pipe = LeviTorPipeline(**components, controlnet=controlnet)
    return pipe


@register
class LeviTorMethod(Method):
    name = "levitor"
    summary = "LeviTor: SVD + ControlNet on K-means control points with depth (paper 003)"
    components = (SVD, LEVITOR_CONTROLNET)
    builtin_weights = ("tiny",)
    options_model = LeviTorOptions

    def load(self):
        """The pipeline (cached: loading again with the same weights is free)."""
        if self.options.cpu_offload and self.device.type == "cpu":
            raise InputError("cpu_offload needs a cuda or mps device", "options.cpu_offload")
        return load_pipeline(self.weights, self.device, self.dtype)

    def prepare(self, spec: MotionSpec, scene: Scene) -> LeviTorControls:
        size = self.options.size or generation_size(scene.size)
        result = render(scene, build_animation(spec, scene))
        points, maps = control_signal(
            result.instance,
            result.distance,
            spec.moved_ids,
            size=size,
            points_scale=self.options.points_scale,
            seed=spec.seed,
        )
        return LeviTorControls(spec, scene, result, points, maps, size)

    def generate(self, controls: Controls) -> torch.Tensor:
        assert isinstance(controls, LeviTorControls) and controls.maps is not None
        options = self.options
        pipe = self.load()
        pipe.set_progress_bar_config(disable=True)  # progress goes through self.report
        steps = options.num_inference_steps

        def on_step(pipe, step: int, t, tensors: dict) -> dict:
            self.report(f"generating with levitor: step {step + 1}/{steps}")
            return tensors

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
            generator=torch.Generator(device="cpu").manual_seed(controls.spec.seed),
            callback_on_step_end=on_step,
        )
        if tuple(frames.shape[-2:]) != controls.scene.size:
            frames = F.interpolate(frames.float(), size=controls.scene.size, mode="bilinear")
        return frames.float().cpu()
