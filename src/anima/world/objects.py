"""Surfaces of the toy world and their exact ray intersections (numpy, vectorised).

Rays start at the camera centre ``o`` (3,) with directions ``D`` (N, 3) scaled so that their
component along the camera's optical axis is 1: the ray parameter ``t`` of a hit IS the planar
distance of the hit point (the project's "depth"). All geometry lives in the gravity-aligned
*stage* frame (x right, y down, z forward; the ground is the plane y = ``ground_y``).

Surfaces (each a function of the frame index ``f``):

- `Ground`: the ground plane, `GroundTexture` albedo, optional `WaterRegion` (dynamic);
- `Backdrop`: the sky, a vertical plane far away (so the sky has an exact, finite distance and
  moves with correct parallax under camera moves);
- `Sphere`, `Box` (fixed orientation, yaw about the vertical), `Sprite` (a flat, textured cut-out
  in a plane facing the first camera, fixed orientation): rigid objects that only TRANSLATE, so
  a MotionSpec trajectory describes them exactly and their shading (directional light,
  Lambertian, no cast shadows) travels with them;
- `Capsule`: a limb of an articulated figure (`anima.world.figure`), a segment swept by a ball.

``intersect(o, D, f)`` returns the nearest hit ``t`` (N,) (``inf`` for a miss); ``shade(P, f)``
the colour of hit points P (M, 3).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from anima.world.textures import GroundTexture, SkyTexture, SolidTexture, WaterRegion

EPS = 1e-9
LIGHT = np.array([-0.45, -0.8, -0.4]) / np.linalg.norm([-0.45, -0.8, -0.4])  # towards the light
AMBIENT, DIFFUSE = 0.5, 0.55


def lambert(albedo: np.ndarray, normal: np.ndarray) -> np.ndarray:
    shade = AMBIENT + DIFFUSE * np.clip(normal @ LIGHT, 0.0, None)
    return np.clip(albedo * shade[:, None], 0.0, 1.0)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, b)


def sphere_hit(o: np.ndarray, d: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    oc = o - centre
    a = _dot(d, d)
    b = d @ oc
    c = oc @ oc - radius * radius
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    return np.where((disc >= 0) & (t > EPS), t, np.inf)


def capsule_hit(o, d, a, b, radius) -> np.ndarray:
    """Capsule = finite cylinder U two balls; the first hit of a union is the min of the hits."""
    t = np.minimum(sphere_hit(o, d, a, radius), sphere_hit(o, d, b, radius))
    ba, oa = b - a, o - a
    baba, baoa = ba @ ba, ba @ oa
    bard, rdoa, dd = d @ ba, d @ oa, _dot(d, d)
    qa = baba * dd - bard * bard
    qb = baba * rdoa - baoa * bard
    qc = baba * (oa @ oa) - baoa * baoa - radius * radius * baba
    disc = qb * qb - qa * qc
    with np.errstate(invalid="ignore", divide="ignore"):
        tc = (-qb - np.sqrt(disc)) / qa
    y = baoa + tc * bard
    body = (disc >= 0) & (qa > EPS) & (tc > EPS) & (y > 0) & (y < baba)
    return np.minimum(t, np.where(body, tc, np.inf))


class Surface(ABC):
    """Something a ray can hit; subclasses have an ``instance`` id (0 = background)."""

    @abstractmethod
    def intersect(self, o: np.ndarray, d: np.ndarray, f: int) -> np.ndarray:
        """Ray parameter of the first hit of rays ``o + t d`` in frame ``f`` (inf: none)."""

    @abstractmethod
    def shade(self, p: np.ndarray, f: int, t: float, footprint: np.ndarray) -> np.ndarray:
        """RGB of the hit points ``p`` in frame ``f`` (``t``: time in the clip)."""

    def to_frame0(self, p: np.ndarray, f: int) -> np.ndarray | None:
        """Stage points of frame f carried to where the same material points are in frame 0
        (None: not a rigid motion, e.g. figure limbs)."""
        return p


@dataclass
class Ground(Surface):
    y: float
    texture: GroundTexture
    water: WaterRegion | None = None
    kind: str = "ground"
    instance: int = 0

    def intersect(self, o, d, f):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.y - o[1]) / d[:, 1]
        return np.where((d[:, 1] > EPS) & (t > EPS), t, np.inf)

    def water_mask(self, p: np.ndarray) -> np.ndarray:
        if self.water is None:
            return np.zeros(len(p), dtype=bool)
        return self.water.inside(p[:, [0, 2]])

    def shade(self, p, f, t, footprint):
        xz = p[:, [0, 2]]
        colour = self.texture(xz, footprint)
        if self.water is not None:
            wet = self.water.inside(xz)
            if wet.any():
                colour[wet] = self.water(xz[wet], t)
        return colour * 0.95


@dataclass
class Backdrop(Surface):
    z: float
    texture: SkyTexture
    kind: str = "sky"
    instance: int = 0

    def intersect(self, o, d, f):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.z - o[2]) / d[:, 2]
        return np.where((d[:, 2] > EPS) & (t > EPS), t, np.inf)

    def shade(self, p, f, t, footprint):
        return self.texture(p[:, :2])


@dataclass
class RigidObject(Surface):
    """A rigid object translating along ``centre`` (F, 3) (stage coordinates)."""

    instance: int
    centre: np.ndarray
    texture: SolidTexture
    label: str = "object"
    role: str = "mover"  # "mover" or "occluder"
    path: str = "static"

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.label

    def to_frame0(self, p, f):
        return p - self.centre[f] + self.centre[0]

    def surface_points(self, o, d, f):
        """Hit points of rays with this object alone, and a hit mask."""
        t = self.intersect(o, d, f)
        ok = np.isfinite(t)
        return o + np.where(ok, t, 0.0)[:, None] * d, ok


@dataclass
class Sphere(RigidObject):
    radius: float = 0.5
    label: str = "sphere"

    def intersect(self, o, d, f):
        return sphere_hit(o, d, self.centre[f], self.radius)

    def shade(self, p, f, t, footprint):
        local = p - self.centre[f]
        return lambert(self.texture(local), local / self.radius)


@dataclass
class Box(RigidObject):
    half: np.ndarray = field(default_factory=lambda: np.full(3, 0.4))
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))  # columns: box axes in stage
    label: str = "box"

    def intersect(self, o, d, f):
        lo = (o - self.centre[f]) @ self.axes
        ld = d @ self.axes
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-self.half - lo) / ld
            t2 = (self.half - lo) / ld
        t1 = np.where(np.abs(ld) < EPS, np.where(np.abs(lo) <= self.half, -np.inf, np.inf), t1)
        t2 = np.where(np.abs(ld) < EPS, np.where(np.abs(lo) <= self.half, np.inf, -np.inf), t2)
        near = np.minimum(t1, t2).max(axis=1)
        far = np.maximum(t1, t2).min(axis=1)
        return np.where((near <= far) & (near > EPS), near, np.inf)

    def shade(self, p, f, t, footprint):
        local = (p - self.centre[f]) @ self.axes
        ratio = np.abs(local) / self.half
        face = ratio.argmax(axis=1)
        normal_local = np.zeros_like(local)
        normal_local[np.arange(len(p)), face] = np.sign(local[np.arange(len(p)), face])
        return lambert(self.texture(local), normal_local @ self.axes.T)


SPRITE_SHAPES = ("disc", "star", "diamond", "blob")


@dataclass
class Sprite(RigidObject):
    """A flat cut-out in the plane z = centre_z facing the camera (normal -z), shape in
    normalised (u, v) = (x - cx, y - cy) / half_size."""

    half_size: float = 0.5
    shape: str = "disc"
    label: str = "sprite"

    def inside(self, uv: np.ndarray) -> np.ndarray:
        r = np.hypot(uv[:, 0], uv[:, 1])
        angle = np.arctan2(uv[:, 1], uv[:, 0])
        if self.shape == "disc":
            return r <= 1.0
        if self.shape == "star":
            return r <= 0.62 + 0.38 * np.cos(5 * angle + np.pi / 2) ** 2
        if self.shape == "diamond":
            return np.abs(uv).sum(axis=1) <= 1.0
        return r <= 0.8 + 0.2 * np.sin(3 * angle)  # blob

    def intersect(self, o, d, f):
        c = self.centre[f]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (c[2] - o[2]) / d[:, 2]
        ok = (np.abs(d[:, 2]) > EPS) & (t > EPS)
        t = np.where(ok, t, np.inf)
        p = o[:2] + np.where(ok, t, 0.0)[:, None] * d[:, :2]
        uv = (p - c[:2]) / self.half_size
        return np.where(ok & self.inside(uv), t, np.inf)

    def shade(self, p, f, t, footprint):
        local = p - self.centre[f]
        local[:, 2] = 0.0
        ring = 0.5 + 0.5 * np.cos(np.hypot(local[:, 0], local[:, 1]) / self.half_size * 5.0)
        albedo = self.texture(local) * (0.8 + 0.2 * ring)[:, None]
        normal = np.tile(np.array([0.0, 0.0, -1.0]), (len(p), 1))
        return lambert(albedo, normal)


@dataclass
class Capsule(Surface):
    """One limb of figure ``instance``: the segment joints[f, a] - joints[f, b] of radius r."""

    instance: int
    joints: np.ndarray  # (F, J, 3) shared with the figure
    a: int
    b: int
    radius: float
    colour: np.ndarray
    kind: str = "figure"

    def intersect(self, o, d, f):
        return capsule_hit(o, d, self.joints[f, self.a], self.joints[f, self.b], self.radius)

    def shade(self, p, f, t, footprint):
        a, b = self.joints[f, self.a], self.joints[f, self.b]
        ba = b - a
        s = np.clip(((p - a) @ ba) / max(ba @ ba, EPS), 0.0, 1.0)
        normal = p - (a + s[:, None] * ba)
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), EPS)
        return lambert(np.tile(self.colour, (len(p), 1)), normal)

    def to_frame0(self, p, f):
        return None
