"""Animate124's cameras and temporal balanced sampling (Animate124 §3.2-3.3, as the release).

Axis convention (the release's, stable-dreamfusion's): world y is up; a camera at polar angle
theta (degrees from +y) and azimuth phi (degrees from +z towards +x) sits at

    c = r (sin theta sin phi, cos theta, sin theta cos phi)

and looks at the origin. Its camera-to-world pose has columns (right, up, back, c) with
back = c / |c| (the camera looks along -back, OpenGL style), right = normalise(back x y) =
(-cos phi, 0, sin phi) for 0 < theta < 180 and up = right x back. The reference view (polar 90,
azimuth 0) is at (0, 0, r) looking along -z with image right = world -x: the release's frame is
a mirror (determinant -1). It is kept so that a render at (polar, azimuth) is the release's
render at the same angles, which Zero-1-to-3's relative pose (and its azimuth sign) assumes.
`anima.methods.animate124.volume.camera_rays` turns a pose into rays in this convention.

Every draw comes from an explicit CPU ``torch.Generator`` (docs/architecture.md, Conventions);
nothing reads the global RNG. Results are CPU tensors; the renderer moves poses to the field.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

RADIUS = 1.8
FOV = 40.0
"""The release's camera radius and vertical field of view (degrees)."""


@dataclass(frozen=True)
class Cameras:
    """F cameras on the orbit: poses (F, 4, 4) camera-to-world, angles in degrees.

    ``azimuth`` is wrapped to [-180, 180); ``fov`` is the vertical field of view (degrees)."""

    poses: Tensor
    polar: Tensor
    azimuth: Tensor
    radius: Tensor
    fov: float = FOV

    def __len__(self) -> int:
        return self.poses.shape[0]

    def __getitem__(self, index: int | slice) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(
            self.poses[index], self.polar[index], self.azimuth[index], self.radius[index], self.fov
        )


def wrap_degrees(angle: Tensor) -> Tensor:
    """Angles in degrees wrapped to [-180, 180)."""
    return torch.remainder(angle + 180.0, 360.0) - 180.0


def orbit_poses(polar: Tensor, azimuth: Tensor, radius: Tensor | float = RADIUS) -> Tensor:
    """Camera-to-world poses (..., 4, 4) looking at the origin (the module's convention)."""
    polar = torch.as_tensor(polar, dtype=torch.float32)
    azimuth = torch.as_tensor(azimuth, dtype=polar.dtype)
    radius = torch.as_tensor(radius, dtype=polar.dtype)
    polar, azimuth, radius = torch.broadcast_tensors(polar, azimuth, radius)
    theta, phi = torch.deg2rad(polar), torch.deg2rad(azimuth)
    back = torch.stack(
        [torch.sin(theta) * torch.sin(phi), torch.cos(theta), torch.sin(theta) * torch.cos(phi)], -1
    )
    # back x (0, 1, 0) normalised, written out so that the poles (where the cross product
    # vanishes) still get the limit of their neighbourhood
    side = torch.where(torch.sin(theta) < 0, -1.0, 1.0).to(polar.dtype)
    right = torch.stack([-torch.cos(phi), torch.zeros_like(phi), torch.sin(phi)], -1)
    right = right * side[..., None]
    up = torch.linalg.cross(right, back)
    pose = torch.zeros(*polar.shape, 4, 4, dtype=polar.dtype)
    pose[..., :3, 0] = right
    pose[..., :3, 1] = up
    pose[..., :3, 2] = back
    pose[..., :3, 3] = back * radius[..., None]
    pose[..., 3, 3] = 1.0
    return pose


def make_cameras(
    polar: Tensor | float,
    azimuth: Tensor | float,
    radius: Tensor | float = RADIUS,
    fov: float = FOV,
) -> Cameras:
    """Cameras at these angles (degrees; broadcast to 1-D)."""
    polar = torch.atleast_1d(torch.as_tensor(polar, dtype=torch.float32))
    azimuth = torch.atleast_1d(torch.as_tensor(azimuth, dtype=torch.float32))
    radius = torch.atleast_1d(torch.as_tensor(radius, dtype=torch.float32))
    polar, azimuth, radius = torch.broadcast_tensors(polar, azimuth, radius)
    poses = orbit_poses(polar, azimuth, radius)
    return Cameras(poses, polar.clone(), wrap_degrees(azimuth), radius.clone(), fov)


def reference_camera(
    radius: float = RADIUS, fov: float = FOV, polar: float = 90.0, azimuth: float = 0.0
) -> Cameras:
    """The reference view (the release: polar 90, azimuth 0, radius 1.8, fov 40)."""
    return make_cameras(polar, azimuth, radius, fov)


def orbit_cameras(
    num_views: int = 10,
    polar: float = 90.0,
    radius: float = RADIUS,
    fov: float = FOV,
    start_azimuth: float = 0.0,
) -> Cameras:
    """The release's export orbit: ``num_views`` views at ``polar``, 360 / num_views apart."""
    azimuth = start_azimuth + torch.arange(num_views, dtype=torch.float32) * (360.0 / num_views)
    return make_cameras(polar, azimuth, radius, fov)


def _uniform(generator: torch.Generator, low: float, high: float, count: int = 1) -> Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def _sample_angles(
    generator: torch.Generator,
    polar_range: tuple[float, float],
    azimuth_range: tuple[float, float],
    upper_hemisphere_rate: float,
) -> tuple[Tensor, Tensor]:
    if torch.rand((), generator=generator) < upper_hemisphere_rate:
        # the release's "uniform sphere" branch: a normalised point of [-1,1] x [0,1] x [-1,1]
        u = torch.rand(3, generator=generator)
        unit = torch.stack([u[0] * 2 - 1, u[1], u[2] * 2 - 1])
        unit = unit / unit.norm().clamp(min=1e-12)
        polar = torch.rad2deg(torch.acos(unit[1].clamp(-1.0, 1.0)))
        azimuth = torch.rad2deg(torch.atan2(unit[0], unit[2]))
        return polar[None], azimuth[None]
    polar = _uniform(generator, *polar_range)
    azimuth = _uniform(generator, *azimuth_range)
    return polar, azimuth


def sample_camera(
    generator: torch.Generator,
    *,
    radius: float = RADIUS,
    fov: float = FOV,
    polar_range: tuple[float, float] = (45.0, 135.0),
    azimuth_range: tuple[float, float] = (-180.0, 180.0),
    upper_hemisphere_rate: float = 0.5,
) -> Cameras:
    """One random training camera (Animate124 §3.2, the release's ``rand_poses``): polar and
    azimuth uniform in their ranges or, with probability ``upper_hemisphere_rate``, a point of
    the upper hemisphere (polar 0-90, any azimuth)."""
    polar, azimuth = _sample_angles(generator, polar_range, azimuth_range, upper_hemisphere_rate)
    return make_cameras(polar, azimuth, radius, fov)


def sample_dynamic_camera(
    generator: torch.Generator,
    num_frames: int = 16,
    *,
    max_polar_change: float = 45.0,
    max_azimuth_change: float = 90.0,
    radius: float = RADIUS,
    fov: float = FOV,
    polar_range: tuple[float, float] = (45.0, 135.0),
    azimuth_range: tuple[float, float] = (-180.0, 180.0),
    upper_hemisphere_rate: float = 0.5,
) -> Cameras:
    """A camera moving over a clip (Animate124 §3.3, the release's ``rand_poses_trajectory``):
    a start pose drawn as `sample_camera`, then changes d_polar ~ U(+-max_polar_change) and
    d_azimuth ~ U(+-max_azimuth_change); frame k is at start + (k / num_frames) x change, so
    the last frame reaches (F - 1) / F of it, as the release."""
    polar, azimuth = _sample_angles(generator, polar_range, azimuth_range, upper_hemisphere_rate)
    change = torch.rand(2, generator=generator) * 2 - 1
    d_polar, d_azimuth = change[0] * max_polar_change, change[1] * max_azimuth_change
    scale = torch.arange(num_frames, dtype=torch.float32) / num_frames
    return make_cameras(polar + scale * d_polar, azimuth + scale * d_azimuth, radius, fov)


def pose_deltas(
    cameras: Cameras, reference: Cameras | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(d_polar, d_azimuth in [-180, 180), d_radius) in degrees of ``cameras`` from the
    reference view (default `reference_camera`), as the release feeds Zero-1-to-3."""
    reference = reference if reference is not None else reference_camera()
    d_polar = cameras.polar - reference.polar
    d_azimuth = wrap_degrees(cameras.azimuth - reference.azimuth)
    return d_polar, d_azimuth, cameras.radius - reference.radius


@dataclass(frozen=True)
class ClipTimes:
    """Frame times (B, F) in [0, 1] of B clips, and whether each starts at 0 / ends at 1."""

    times: Tensor
    starts_at_zero: Tensor
    ends_at_one: Tensor


def sample_clip_times(
    generator: torch.Generator,
    num_clips: int = 1,
    num_frames: int = 16,
    *,
    precision: int = 256,
    zero_rate: float = 0.2,
    mirror_rate: float = 0.5,
) -> ClipTimes:
    """Temporal balanced sampling (Animate124 §3.3, the release's sampler).

    Time is ``precision`` units. A clip spans ``num_frames`` x i units, i = floor(U{F..P} / F)
    (16 to 256 units for F = 16, P = 256); it starts at 0 with probability ``zero_rate``, else
    at a uniform integer in [0, P - span]; frame k is at (start + k i) / P. With probability
    ``mirror_rate`` the clip is mirrored (t -> 1 - t, reversed), so a clip that started at 0 ends
    at 1. Hence P(first time 0) = (1 - mirror_rate) q and P(last time 1) = mirror_rate q with
    q = zero_rate + (1 - zero_rate) E[1 / (P - span + 1)] (a random start can be 0 too)."""
    if num_frames < 1 or precision < num_frames:
        raise ValueError(f"need 1 <= num_frames <= precision, got {num_frames}, {precision}")
    draws = torch.rand(num_clips, 4, generator=generator)
    units = torch.randint(num_frames, precision + 1, (num_clips,), generator=generator)
    interval = units // num_frames
    span = interval * num_frames
    random_start = torch.floor(draws[:, 0] * (precision - span + 1).to(draws.dtype)).long()
    random_start = torch.minimum(random_start, precision - span)
    start = torch.where(draws[:, 1] < zero_rate, torch.zeros_like(random_start), random_start)
    frames = torch.arange(num_frames)
    times = (start[:, None] + frames[None] * interval[:, None]).to(torch.float32) / precision
    mirrored = draws[:, 2] < mirror_rate
    times = torch.where(mirrored[:, None], 1.0 - times.flip(-1), times)
    return ClipTimes(times, times[:, 0] == 0, times[:, -1] == 1)


__all__ = [
    "FOV",
    "RADIUS",
    "Cameras",
    "ClipTimes",
    "make_cameras",
    "orbit_cameras",
    "orbit_poses",
    "pose_deltas",
    "reference_camera",
    "sample_camera",
    "sample_clip_times",
    "sample_dynamic_camera",
    "wrap_degrees",
]
