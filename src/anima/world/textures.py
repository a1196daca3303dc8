"""Procedural, seeded textures of the toy world (no image files, no global RNG).

Every texture is a smooth analytic function of a point on a surface, drawn once per clip from a
`numpy.random.Generator`:

- `Waves`: a sum of a few random plane sinusoids, the one noise primitive (smooth, band-limited,
  cheap to evaluate and exactly reproducible);
- `GroundTexture`: a soft checkerboard modulated by noise, blurred analytically by the pixel
  footprint so that it does not alias towards the horizon;
- `SkyTexture`: a vertical gradient with soft clouds, painted on the far backdrop plane;
- `WaterRegion`: an ellipse of the ground whose colour ripples with time (the dynamic texture);
- `SolidTexture`: two-colour solid (3D) texture of an object, a function of the point in the
  object's own frame, so that it moves rigidly with the object.

Textures are deliberately low-frequency at the default 64x64 size: the toy clips must be
re-renderable by a point-splatting renderer (`coarse`) to within ~30 dB.
"""

from __future__ import annotations

import colorsys

import numpy as np

TAU = 2.0 * np.pi


def random_colour(
    rng: np.random.Generator, saturation=(0.45, 0.9), value=(0.55, 0.95)
) -> np.ndarray:
    """A random RGB colour (3,) in [0, 1] from uniform hue and the given S, V ranges."""
    h, s, v = rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value)
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    u = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


class Waves:
    """Sum of ``n`` random sinusoids in ``dims`` dimensions, values roughly in [-1, 1]."""

    def __init__(self, rng: np.random.Generator, dims: int, n: int, freq: tuple[float, float]):
        directions = rng.normal(size=(n, dims))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        self.k = directions * (rng.uniform(*freq, size=n) * TAU)[:, None]
        self.phase = rng.uniform(0.0, TAU, size=n)
        self.amp = np.full(n, np.sqrt(2.0 / n))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return np.sin(p @ self.k.T + self.phase) @ self.amp


def _mix(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    return a * (1.0 - w[..., None]) + b * w[..., None]


class GroundTexture:
    """Soft checkerboard of two colours on the ground plane (x, z), modulated by noise."""

    def __init__(self, rng: np.random.Generator):
        base = random_colour(rng, saturation=(0.25, 0.6), value=(0.45, 0.7))
        self.colour_a = base
        self.colour_b = np.clip(base * rng.uniform(0.55, 0.75), 0, 1)
        self.cell = rng.uniform(0.7, 1.3)
        self.noise = Waves(rng, 2, 6, (0.15, 0.6))

    def __call__(self, xz: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        """Albedo (N, 3) at ground points (N, 2); ``footprint`` is a pixel's size there."""
        s = np.sin(np.pi * xz[:, 0] / self.cell) * np.sin(np.pi * xz[:, 1] / self.cell)
        blur = np.maximum(footprint / self.cell * 4.0, 0.35)  # soft edges, wider when far
        w = 0.5 + 0.5 * np.tanh(s / blur) * np.exp(-footprint / self.cell)
        colour = _mix(self.colour_a, self.colour_b, w)
        return np.clip(colour * (1.0 + 0.12 * self.noise(xz))[:, None], 0.0, 1.0)


class SkyTexture:
    """Gradient from the horizon colour to the zenith colour, with soft white clouds, painted on
    the backdrop plane; arguments are backdrop points (x, y) with y down, the horizon at y_h."""

    def __init__(self, rng: np.random.Generator, horizon_y: float, scale: float):
        self.zenith = np.array(colorsys.hsv_to_rgb(rng.uniform(0.55, 0.65), 0.6, 0.85))
        self.horizon = np.array(colorsys.hsv_to_rgb(rng.uniform(0.5, 0.62), 0.2, 0.97))
        self.horizon_y, self.scale = horizon_y, scale
        self.clouds = Waves(rng, 2, 5, (0.03, 0.08))
        self.cover = rng.uniform(0.1, 0.6)

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        height = np.clip((self.horizon_y - xy[:, 1]) / self.scale, 0.0, 1.0)
        colour = _mix(self.horizon, self.zenith, np.sqrt(height))
        cloud = smoothstep(self.cover, self.cover + 1.0, self.clouds(xy)) * 0.55
        return _mix(colour, np.ones(3), cloud)


class WaterRegion:
    """An ellipse of the ground, centre (x, z) and radii, with time-varying ripples."""

    def __init__(self, rng: np.random.Generator, centre: tuple[float, float], radii):
        self.centre = np.asarray(centre, dtype=np.float64)
        self.radii = np.asarray(radii, dtype=np.float64)
        self.colour = np.array(colorsys.hsv_to_rgb(rng.uniform(0.5, 0.6), 0.7, 0.7))
        self.waves = Waves(rng, 2, 3, (0.6, 1.2))
        self.speed = rng.uniform(1.0, 2.0) * TAU  # ripple phase travelled over the clip

    def inside(self, xz: np.ndarray) -> np.ndarray:
        return (((xz - self.centre) / self.radii) ** 2).sum(-1) <= 1.0

    def __call__(self, xz: np.ndarray, t: float) -> np.ndarray:
        ripple = np.sin(xz @ self.waves.k.T + self.waves.phase - self.speed * t) @ self.waves.amp
        return np.clip(self.colour[None] * (1.0 + 0.25 * ripple)[:, None], 0.0, 1.0)


class SolidTexture:
    """Two colours blended by 3D noise in the object's own frame (units of its size)."""

    def __init__(self, rng: np.random.Generator, size: float):
        self.colour_a = random_colour(rng)
        self.colour_b = np.clip(random_colour(rng) * 0.5 + self.colour_a * 0.5, 0, 1)
        self.size = size
        self.noise = Waves(rng, 3, 3, (0.4, 0.8))

    def __call__(self, local: np.ndarray) -> np.ndarray:
        w = 0.5 + 0.5 * np.tanh(1.2 * self.noise(local / self.size))
        return _mix(self.colour_a, self.colour_b, w)
