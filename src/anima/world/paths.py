"""3D paths of objects and camera moves, in the stage frame (x right, y down, z forward).

Object paths (``centre`` (F, 3) of the object's centre; sizes are chosen so that the motion is
clearly visible at 64x64: 10-40 % of the width laterally, or a 2-3x change of distance):

- ``approach`` / ``recede``: distance changes by a factor 2-3 (with some lateral drift);
- ``pass_behind`` / ``pass_front``: a lateral pass just behind / in front of an occluder, so that
  the object is hidden / hides it for part of the clip;
- ``pass``: a lateral pass (no occluder);
- ``orbit``: a half circle around a vertical axis (around the occluder when there is one), so the
  object goes behind and comes in front of it.

Camera moves (``CameraPath``: per-frame centre and camera-to-stage rotation): ``static``,
``pan`` (sideways truck), ``dolly`` (forward/back) and ``orbit`` (yaw around a pivot on the
ground in front), on top of a fixed downward tilt. Object motion is linear in time; the clip's
spec carries a keyframe per frame, so the shape of the timing is free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OBJECT_PATHS = ("approach", "recede", "pass_behind", "pass_front", "pass", "orbit")
CAMERA_MOVES = ("static", "pan", "dolly", "orbit")


def rot_x(deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass
class CameraPath:
    kind: str
    centre: np.ndarray  # (F, 3) stage
    rotation: np.ndarray  # (F, 3, 3) camera-to-stage

    def world_to_camera(self) -> np.ndarray:
        """(F, 4, 4) maps world points (= the first camera's coordinates) into camera f."""
        frames = len(self.centre)
        c0, r0 = self.centre[0], self.rotation[0]
        out = np.zeros((frames, 4, 4))
        for f in range(frames):
            rel_rot = self.rotation[f].T @ r0  # world (cam 0) -> cam f
            out[f, :3, :3] = rel_rot
            out[f, :3, 3] = self.rotation[f].T @ (c0 - self.centre[f])
            out[f, 3, 3] = 1.0
        return out

    def stage_to_world(self, p: np.ndarray) -> np.ndarray:
        return (p - self.centre[0]) @ self.rotation[0]

    def stage_to_camera(self, p: np.ndarray, f: int) -> np.ndarray:
        return (p - self.centre[f]) @ self.rotation[f]


def camera_path(
    rng: np.random.Generator, kind: str, frames: int, tilt: float, pivot_z: float
) -> CameraPath:
    t = np.linspace(0.0, 1.0, frames)
    base = rot_x(-tilt)  # looking down by `tilt` degrees (y is down)
    centre = np.zeros((frames, 3))
    yaw = np.zeros(frames)
    sign = rng.choice([-1.0, 1.0])
    if kind == "pan":
        centre[:, 0] = sign * rng.uniform(0.3, 0.7) * t
    elif kind == "dolly":
        centre[:, 2] = rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2) * t
    elif kind == "orbit":
        yaw = sign * rng.uniform(4.0, 10.0) * t
        for f in range(frames):
            centre[f] = np.array([0.0, 0.0, pivot_z]) - rot_y(yaw[f]) @ np.array([0, 0, pivot_z])
    elif kind != "static":
        raise ValueError(f"unknown camera move {kind!r}")
    rotation = np.stack([rot_y(a) @ base for a in yaw])
    return CameraPath(kind, centre, rotation)


def object_path(
    rng: np.random.Generator,
    kind: str,
    frames: int,
    focal: float,
    width: int,
    size: float,
    ground_y: float,
    lift: float,
    occluder: tuple[float, float, float] | None,
) -> np.ndarray:
    """(F, 3) centre of an object of half-size ``size`` resting ``lift`` above the ground.

    ``occluder`` is (x, z, half-diagonal) of the occluder's footprint, or None."""
    t = np.linspace(0.0, 1.0, frames)
    y = np.full(frames, ground_y - size - lift)
    half_view = 0.5 * width / focal  # visible half-width per unit distance

    def lateral(z_mid: float, x_mid: float) -> tuple[np.ndarray, np.ndarray]:
        travel = rng.uniform(0.15, 0.4) * width * z_mid / focal * rng.choice([-1.0, 1.0])
        x = x_mid + travel * (t - 0.5)
        z = np.full(frames, z_mid) + rng.uniform(-0.3, 0.3) * (t - 0.5)
        return x, z

    if kind in ("approach", "recede"):
        far = rng.uniform(5.5, 8.0)
        near = max(far / rng.uniform(2.0, 3.0), 2.2 + size)
        z = far + (near - far) * t
        u0, u1 = rng.uniform(-0.45, 0.45, size=2)
        x = (u0 + (u1 - u0) * t) * half_view * z
        if kind == "recede":
            x, z = x[::-1], z[::-1]
    elif kind in ("pass_behind", "pass_front") and occluder is not None:
        ox, oz, reach = occluder
        if kind == "pass_behind":
            z_mid = oz + reach + size + rng.uniform(0.5, 2.0)
        else:
            z_mid = max(oz - reach - size - rng.uniform(0.4, 1.2), 2.0 + size)
        x, z = lateral(z_mid, ox)
    elif kind == "orbit":
        if occluder is not None:
            cx, cz, reach = occluder
            radius = reach + size + rng.uniform(0.3, 0.8)
        else:
            cx, cz = rng.uniform(-0.5, 0.5), rng.uniform(4.5, 6.0)
            radius = rng.uniform(0.8, 1.4)
        start = rng.uniform(0.0, 2 * np.pi)
        angle = start + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.1) * np.pi * t
        x, z = cx + radius * np.sin(angle), cz - radius * np.cos(angle)
    else:  # "pass", or a pass without an occluder
        z_mid = rng.uniform(3.0, 7.0)
        x, z = lateral(z_mid, rng.uniform(-0.2, 0.2) * half_view * z_mid)
    return np.stack([x, y, z], axis=1)
