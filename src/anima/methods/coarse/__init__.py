"""The weight-free ``coarse`` method: the 3D-aware render itself is the video.

The image is lifted to 3D (`anima.scene`), objects and camera move as the spec says
(`anima.animation`), and the z-buffer point renderer (`anima.render`) draws every frame with
correct perspective scaling and occlusion, the background filled from an inpainted plate. It is
the geometric truth the learned methods are guided by, and the default when no weights are set.
The LeviTor control points of the render are computed too (cheap), so a dump and the studio can
show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from anima.animation import build_animation
from anima.control_points import ControlPoints, compute_control_points
from anima.methods.base import Controls, Method
from anima.methods.registry import register
from anima.render import render
from anima.scene import Scene
from anima.spec import MotionSpec


class CoarseOptions(BaseModel):
    """Options of the coarse method (``spec.options``)."""

    model_config = ConfigDict(extra="forbid")
    points_scale: float = Field(
        default=1.0,
        gt=0.0,
        le=8.0,
        description="LeviTor points scale for the shown control points.",
    )


@dataclass
class CoarseControls(Controls):
    points: ControlPoints | None = None

    def to_json(self) -> dict[str, Any]:
        return {"levitor_points": self.points.to_json() if self.points is not None else None}


@register
class CoarseMethod(Method):
    name = "coarse"
    summary = "weight-free 3D-aware point render (the embedded default)"
    options_model = CoarseOptions

    def prepare(self, spec: MotionSpec, scene: Scene) -> CoarseControls:
        animation = build_animation(spec, scene)
        result = render(scene, animation)
        points = compute_control_points(
            result.instance,
            result.distance,
            spec.moved_ids,
            points_scale=self.options.points_scale,
            seed=spec.seed,
        )
        return CoarseControls(spec, scene, result, points)

    def generate(self, controls: Controls) -> torch.Tensor:
        assert controls.render is not None
        return controls.render.rgb
