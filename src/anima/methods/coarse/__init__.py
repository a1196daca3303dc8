"""The weight-free ``coarse`` method: the 3D-aware render itself is the video.

The image is lifted to 3D (`anima.scene`), objects and camera move as the spec says
(`anima.animation`), and the z-buffer point renderer (`anima.render`) draws every frame with
correct perspective scaling and occlusion, the background filled from an inpainted plate. It is
the geometric truth the learned methods are guided by, and the default when no weights are set.
Frames are made one at a time as the outputs take them (`anima.stream`), so memory does not grow
with the clip. The LeviTor control points of the clip are computed on a small render when asked
for, so a dump and the studio can show them. An object with a 3D model (``mesh``) is drawn from
it (`anima.mesh`), so it can turn and show its back (I2V3D §3.1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from anima.animation import Animation, build_animation
from anima.control_points import POINTS_RENDER_MAX_SIDE, ControlPoints, compute_control_points
from anima.mesh import PlacedMesh, scene_meshes
from anima.methods.base import Controls, Method
from anima.methods.registry import register
from anima.render import Renderer, render
from anima.scene import Scene, pixel_mapping
from anima.spec import MotionSpec
from anima.stream import FrameStream, OutputFrame


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
    """The renderer, which makes the frames as they are asked for, and the animation; the
    LeviTor control points of the clip are computed when first asked for (`points`)."""

    renderer: Renderer | None = None
    animation: Animation | None = None
    points_scale: float = 1.0
    meshes: dict[int, PlacedMesh] = field(default_factory=dict)

    @functools.cached_property
    def points(self) -> ControlPoints:
        """LeviTor's K-means control points (`anima.control_points`) of a render of the clip
        at most `POINTS_RENDER_MAX_SIDE` pixels a side, in the output's pixels."""
        assert self.animation is not None
        size = self.scene.size
        scale = min(1.0, POINTS_RENDER_MAX_SIDE / max(size))
        small = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        clip = render(self.scene.resized(small), self.animation.resized(small), meshes=self.meshes)
        points = compute_control_points(
            clip.instance,
            clip.distance,
            self.spec.moved_ids,
            points_scale=self.points_scale,
            seed=self.spec.seed,
        )
        mapping = pixel_mapping(small, size).float()
        xy = points.xy @ mapping[:2, :2].T + mapping[:2, 2]
        return replace(points, xy=xy)

    def to_json(self) -> dict[str, Any]:
        return {"levitor_points": self.points.to_json()}


@register
class CoarseMethod(Method):
    name = "coarse"
    summary = "weight-free 3D-aware point render (the embedded default)"
    options_model = CoarseOptions
    streams = True

    def prepare(self, spec: MotionSpec, scene: Scene) -> CoarseControls:
        animation = build_animation(spec, scene)
        meshes = scene_meshes(spec, scene)
        renderer = Renderer(scene, animation, meshes=meshes)
        scale = self.options.points_scale
        return CoarseControls(spec, scene, None, renderer, animation, scale, meshes)

    def stream(self, controls: Controls) -> FrameStream:
        """The render's frames as the renderer makes them, at the output size."""
        assert isinstance(controls, CoarseControls) and controls.renderer is not None
        renderer = controls.renderer
        frames = (OutputFrame(frame.rgb, frame) for frame in renderer)
        return FrameStream(frames, renderer.num_frames, renderer.size)

    def generate(self, controls: Controls) -> torch.Tensor:
        return self.stream(controls).tensor()
