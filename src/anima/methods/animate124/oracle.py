"""A 4D scene with exact ground truth, and the oracle prior it gives (Animate124 §3 with its
learned priors replaced, to measure what the optimisation itself recovers).

`ToyScene4D` is an object-centric dynamic scene built from the toy world's surfaces
(`anima.world.objects`: spheres and boxes with their noise textures and fixed Lambertian light)
moving inside Animate124's box [-1, 1]^3 along smooth periodic paths. `ToyScene4D.render` ray-casts
it exactly from any camera of `anima.methods.animate124.cameras` (y up, the release's frame) at any
time t in [0, 1] over a white background, as the field's renders are composited: RGB, opacity and
planar depth.

`OracleEpsilon` is an `anima.methods.animate124.guidance.EpsilonPredictor` in pixel space: given
the noisy image x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps and, as its condition, the scene's true
render x_0* at the same camera and time, it returns the exact epsilon of x_t for x_0*:
(x_t - sqrt(a_t) x_0*) / sqrt(1 - a_t). Score distillation through it (with `PixelEncoder` as
the guidance's encoder, images in [-1, 1]) gives w(t) sqrt(a_t / (1 - a_t)) (x_0 - x_0*): a pull of
each render towards the truth, as a perfect prior of that scene would give.

`oracle_priors` puts the oracle in place of Animate124's learned priors (Animate124 §3.2-3.3;
the stage's ``priors`` mapping, `anima.methods.animate124.stages.STAGE_PRIORS`): each call
renders the scene's truth at the call's ``views`` (the same cameras, times and size, the truth
composited over the view's background colour by its opacity) and scores the renders with the
very guidance classes the learned priors use (`StableDiffusionSDS` for "sd15" and "zero123",
`VideoSDS` for "video"), their predictor `OracleEpsilon` and their encoder `PixelEncoder`,
CFG 1. The truth carries its own fixed Lambertian light, so the experiment trains with the
stages' ``shading="albedo"`` (the field's albedo then is the truth's shaded colour, which does
not depend on the view). `reference_from_scene` is the reference view (image, mask, depth) at
the reference camera at t = 0. The experiment itself: ``benchmarks/animate124.py``
(docs/architecture.md, "The toy world").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from anima.methods.animate124.cameras import RADIUS, reference_camera
from anima.methods.animate124.guidance import (
    DEFAULT_SCHEDULE,
    StableDiffusionSDS,
    StableDiffusionSDSOptions,
    VideoSDS,
    VideoSDSOptions,
    alphas_cumprod_from_config,
    encode_video,
)
from anima.methods.animate124.stages import Reference, Views
from anima.methods.animate124.volume import camera_rays
from anima.world.clip import cast
from anima.world.objects import Box, RigidObject, Sphere
from anima.world.textures import SolidTexture

#: The toy world's stage frame is y down, z forward; Animate124's is y up, z towards the
#: reference camera: a half turn about x maps one to the other.
TO_STAGE = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class MovingObject:
    """One object: its surface at the origin and its path, centre(t) = base + amplitude *
    sin(2 pi t + phase) per axis (Animate124's coordinates)."""

    surface: RigidObject
    base: np.ndarray
    amplitude: np.ndarray
    phase: np.ndarray

    def centre(self, t: float) -> np.ndarray:
        return self.base + self.amplitude * np.sin(2 * math.pi * t + self.phase)


@dataclass(frozen=True)
class TruthRender:
    """A view of the scene: ``rgb`` (3, H, W) in [0, 1] on white, ``opacity`` (H, W) 1 on the
    objects, ``depth`` (H, W) planar distance (0 off the objects)."""

    rgb: Tensor
    opacity: Tensor
    depth: Tensor


class ToyScene4D:
    """Objects moving in the box (module docstring)."""

    def __init__(self, objects: list[MovingObject]) -> None:
        self.objects = objects

    def surfaces(self, t: float) -> list[RigidObject]:
        """The objects placed at time ``t``, in the stage frame (one frame each)."""
        placed = []
        for obj in self.objects:
            centre = (TO_STAGE @ obj.centre(t))[None]
            placed.append(_moved(obj.surface, centre))
        return placed

    def render(self, pose: Tensor, fov: float, size: tuple[int, int], t: float) -> TruthRender:
        """The exact view from ``pose`` (4, 4 camera to world) with vertical ``fov`` at ``t``."""
        origins, directions = camera_rays(pose.double(), fov, size)
        o = TO_STAGE @ origins[0].numpy()
        d = directions.numpy() @ TO_STAGE.T
        surfaces = self.surfaces(t)
        hit, which = cast(list(surfaces), o, d, 0)
        height, width = size
        rgb = np.ones((height * width, 3))
        found = np.isfinite(hit)
        for index, surface in enumerate(surfaces):
            rows = found & (which == index)
            if rows.any():
                points = o + hit[rows, None] * d[rows]
                rgb[rows] = surface.shade(points, 0, t, np.zeros(int(rows.sum())))
        depth = np.where(found, hit, 0.0)
        return TruthRender(
            torch.from_numpy(rgb.T.reshape(3, height, width)).float(),
            torch.from_numpy(found.reshape(height, width)).float(),
            torch.from_numpy(depth.reshape(height, width)).float(),
        )


def _moved(surface: RigidObject, centre: np.ndarray) -> RigidObject:
    if isinstance(surface, Sphere):
        return Sphere(surface.instance, centre, surface.texture, radius=surface.radius)
    assert isinstance(surface, Box)
    return Box(surface.instance, centre, surface.texture, half=surface.half, axes=surface.axes)


def toy_scene_4d(seed: int = 0, count: int = 2) -> ToyScene4D:
    """``count`` objects (spheres and boxes alternately, 0.25-0.35 in size) on periodic paths
    that stay inside a ball of radius 0.75, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    objects = []
    for index in range(count):
        size = float(rng.uniform(0.25, 0.35))
        texture = SolidTexture(rng, size)
        if index % 2 == 0:
            surface: RigidObject = Sphere(index + 1, np.zeros((1, 3)), texture, radius=size)
        else:
            yaw = float(rng.uniform(0, math.pi))
            c, s = math.cos(yaw), math.sin(yaw)
            axes = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
            half = np.full(3, size * 0.8)
            surface = Box(index + 1, np.zeros((1, 3)), texture, half=half, axes=axes)
        angle = 2 * math.pi * index / count
        base = 0.35 * np.array([math.cos(angle), 0.0, math.sin(angle)])
        amplitude = rng.uniform(0.1, 0.25, size=3)
        phase = rng.uniform(0, 2 * math.pi, size=3)
        objects.append(MovingObject(surface, base, amplitude, phase))
    return ToyScene4D(objects)


class OracleEpsilon:
    """The exact epsilon of a noisy image for the true clean one (module docstring); the
    condition is the true image x_0* in the same space as the noisy one."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        self.alphas_cumprod = alphas_cumprod

    def __call__(self, noisy: Tensor, timesteps: Tensor, condition: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (noisy.dim() - 1)
        alpha = self.alphas_cumprod.to(noisy.device, noisy.dtype)[timesteps].reshape(shape)
        truth = condition.to(noisy.device, noisy.dtype)
        return (noisy - alpha.sqrt() * truth) / (1 - alpha).sqrt()


class PixelEncoder:
    """Images in [0, 1] to the oracle's pixel "latents" in [-1, 1] (no VAE)."""

    def __call__(self, images: Tensor) -> Tensor:
        return images * 2 - 1


# ------------------------------------------------------------------------------------------
# The oracle in place of the learned priors
# ------------------------------------------------------------------------------------------


def truth_views(scene: ToyScene4D, views: Views, size: tuple[int, int]) -> Tensor:
    """The scene's truth at each of ``views`` (a `anima.methods.animate124.stages.Views`: its
    cameras and times) at ``size``, composited over ``views.background``: (N, 3, H, W)."""
    background = torch.as_tensor(views.background, dtype=torch.float32).reshape(3, 1, 1)
    images = []
    for k in range(len(views)):
        truth = scene.render(views.cameras.poses[k], views.cameras.fov, size, float(views.times[k]))
        alpha = truth.opacity[None]
        images.append(truth.rgb * alpha + background * (1 - alpha))
    return torch.stack(images)


class OraclePrior:
    """A stage's `anima.methods.animate124.stages.Prior` scoring renders against the scene's
    truth at the same views (module docstring). ``guidance`` is a `StableDiffusionSDS` (renders
    (N, 3, H, W)) or, with ``video``, a `VideoSDS` (a clip (1, F, 3, H, W)); its loss is
    returned under ``name`` (default the guidance's)."""

    def __init__(
        self,
        scene: ToyScene4D,
        guidance: StableDiffusionSDS | VideoSDS,
        *,
        video: bool = False,
        name: str | None = None,
    ) -> None:
        self.scene = scene
        self.guidance = guidance
        self.video = video
        self.name = name
        self.encoder = PixelEncoder()

    def __call__(
        self,
        images: Tensor,
        views: Views,
        *,
        generator: torch.Generator,
        control: Tensor | None = None,
    ) -> dict[str, Tensor]:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        truth = truth_views(self.scene, views, size).to(images)
        if self.video:
            condition = encode_video(self.encoder, truth[None], self.guidance.options.size)
        else:
            condition = self.encoder(truth)
        losses = self.guidance(images, condition, None, generator=generator)
        if self.name is None:
            return losses
        (value,) = losses.values()
        return {self.name: value}


def oracle_priors(
    scene: ToyScene4D,
    size: int,
    *,
    t_range: tuple[int, int] = (20, 980),
    weight: float = 1.0,
    zero123: bool = False,
    grad_clip: float | None = None,
) -> dict[str, OraclePrior]:
    """The oracle priors of every stage (`STAGE_PRIORS`' names): "sd15" (static) and "video"
    (dynamic, refine), and with ``zero123`` a "zero123" that scores single renders as "sd15"
    does (loss ``sds_zero123``). ``size`` is the render side (pixel space: the guidance's
    input side, nothing resized); CFG 1; timesteps uniform in ``t_range``; each loss times
    ``weight``; gradient values clipped at ``grad_clip`` when given."""
    alphas = alphas_cumprod_from_config(DEFAULT_SCHEDULE)
    predictor, encoder = OracleEpsilon(alphas), PixelEncoder()
    common = {
        "size": size,
        "guidance_scale": 1.0,
        "t_range": t_range,
        "weight": weight,
        "grad_clip": grad_clip,
    }
    image = StableDiffusionSDS(predictor, encoder, alphas, StableDiffusionSDSOptions(**common))
    video = VideoSDS(predictor, encoder, alphas, VideoSDSOptions(**common))
    priors = {
        "sd15": OraclePrior(scene, image),
        "video": OraclePrior(scene, video, video=True),
    }
    if zero123:
        priors["zero123"] = OraclePrior(scene, image, name="sds_zero123")
    return priors


def reference_from_scene(
    scene: ToyScene4D, size: int, *, radius: float = RADIUS, fov: float | None = None
) -> Reference:
    """The reference view of Animate124 §3.2 (Eq. 4) from the truth: the scene at the
    reference camera (polar 90, azimuth 0, ``radius``, ``fov``) at t = 0, ``size`` pixels a
    side: image on white, mask (the opacity) and planar depth (0 off the objects)."""
    camera = reference_camera(radius) if fov is None else reference_camera(radius, fov)
    truth = scene.render(camera.poses[0], camera.fov, (size, size), 0.0)
    return Reference(truth.rgb, truth.opacity, truth.depth)
