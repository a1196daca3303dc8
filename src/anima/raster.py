"""A pure-torch triangle rasteriser: the meshes of a scene drawn with a z-buffer.

I2V3D §3.1 renders its scene's meshes (an InstantMesh foreground, a reconstructed background)
in a 3D engine, unlit, with their baked colours and a depth video. This module is that render's
triangle half in pure torch (no pytorch3d, no CUDA extension), with the scene's pinhole camera
(`anima.camera`: pixel centres at integers, x right, y down, planar depth z) and the point
renderer's conventions (docs/architecture.md, "Conventions"; `anima.render`):

- **Coverage.** A pixel belongs to a triangle when its centre lies inside the projected
  triangle (screen-space barycentrics all >= 0, with a tolerance far below a pixel so that a
  centre exactly on an edge two triangles share is never missed). Both sides of a triangle are
  drawn: meshes from 3D tools do not agree on a winding order.
- **Perspective-correct interpolation.** Barycentrics l_i found on the screen are corrected
  with the corners' depths z_i: b_i = (l_i / z_i) / sum_j (l_j / z_j), and the depth itself is
  1 / sum_j (l_j / z_j) (Heckbert & Moreton, "Interpolation for Polygon Texture Mapping and
  Shading", 1991).
- **z-buffer.** As in `anima.render`, each fragment is a 64-bit key, its positive float32
  depth's bits in the high word and its triangle index in the low word; one
  ``scatter_reduce(amin)`` keeps the nearest fragment of every pixel exactly and
  deterministically (ties go to the lower triangle index).
- **Bounded memory.** (triangle, pixel) pairs are made from each triangle's pixel bounding
  box, clipped to the frame, at most ``PAIR_BUDGET`` at a time, whatever the mesh's size.
- **Near plane.** A triangle with a corner at or before the near plane is not drawn (the point
  renderer drops such points the same way).
- **Colours.** Per-corner colours are interpolated; a triangle with a UV texture takes the
  texture's colour at its interpolated UV (bilinear, the texture repeating outside [0, 1], v up
  as in OBJ and glTF).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anima.camera import project

PAIR_BUDGET = 1 << 20  # (triangle, pixel) pairs tested at once
_EMPTY = torch.iinfo(torch.int64).max
_INSIDE_TOLERANCE = 1e-7  # on normalised barycentrics: a shared edge's centres are never lost


@dataclass
class Fragments:
    """The nearest triangle of every pixel it covers."""

    pixel: torch.Tensor  # (N,) int64 flat pixel index y * W + x
    face: torch.Tensor  # (N,) int64 triangle index
    depth: torch.Tensor  # (N,) float32 planar distance
    barycentric: torch.Tensor  # (N, 3) float32, perspective-correct


def _edge(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Twice the signed area of the triangle (a, b, p); all (..., 2)."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (
        p[..., 0] - a[..., 0]
    )


def _screen_barycentrics(corners: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Screen-space barycentrics (N, 3) of points p (N, 2) in triangles corners (N, 3, 2)."""
    a, b, c = corners.unbind(1)
    area = _edge(a, b, c)
    return torch.stack([_edge(b, c, p), _edge(c, a, p), _edge(a, b, p)], -1) / area[:, None]


def _perspective(screen: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth (N,) and perspective-correct barycentrics (N, 3) from screen barycentrics (N, 3)
    and the corners' depths z (N, 3) (module docstring)."""
    weighted = screen / z
    inverse = weighted.sum(-1)
    return 1.0 / inverse, weighted / inverse[:, None]


def _depth_keys(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return (z.float().contiguous().view(torch.int32).to(torch.int64) << 32) | index


def rasterise(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    intrinsics: torch.Tensor,
    size: tuple[int, int],
    near: float,
) -> Fragments:
    """Draw the triangles ``faces`` (T, 3) of camera-space ``vertices`` (V, 3) seen with
    ``intrinsics`` (3, 3) on a frame of ``size`` (H, W): the nearest triangle of every covered
    pixel (module docstring)."""
    height, width = size
    corners = vertices.double()[faces]  # (T, 3, 3)
    z = corners[..., 2]
    xy, _ = project(corners, intrinsics.double())  # (T, 3, 2)
    area = _edge(xy[:, 0], xy[:, 1], xy[:, 2])
    drawable = (z > near).all(-1) & torch.isfinite(xy).all(-1).all(-1) & (area.abs() > 1e-12)
    # Off-frame corners are pulled in before rounding, so integer bounds cannot overflow.
    low = xy.amin(1).clamp(-1.0, float(max(height, width)))
    high = xy.amax(1).clamp(-1.0, float(max(height, width)))
    lo = torch.ceil(low).clamp_min(0).long()
    hi = torch.minimum(torch.floor(high).long(), torch.tensor([width - 1, height - 1]))
    extent = (hi - lo + 1).clamp_min(0)
    count = torch.where(drawable, extent[:, 0] * extent[:, 1], 0)
    drawn = torch.nonzero(count)[:, 0]
    keys = torch.full((height * width,), _EMPTY, dtype=torch.int64)
    if len(drawn):
        lo, extent, count = lo[drawn], extent[drawn], count[drawn]
        ends = count.cumsum(0)
        first = 0
        while first < len(drawn):
            base = int(ends[first - 1]) if first else 0
            last = max(int(torch.searchsorted(ends, base + PAIR_BUDGET, right=True)), first + 1)
            chunk = torch.arange(first, last)
            owner = torch.repeat_interleave(chunk, count[first:last])
            offset = torch.arange(base, base + len(owner)) - (ends[owner] - count[owner])
            columns = extent[owner, 0]
            px = lo[owner, 0] + offset % columns
            py = lo[owner, 1] + offset // columns
            face = drawn[owner]
            centre = torch.stack([px, py], -1).double()
            screen = _screen_barycentrics(xy[face], centre)
            inside = (screen >= -_INSIDE_TOLERANCE).all(-1)
            depth, _ = _perspective(screen[inside], z[face[inside]])
            target = (py * width + px)[inside]
            keys.scatter_reduce_(0, target, _depth_keys(depth, face[inside]), reduce="amin")
            first = last
    pixel = torch.nonzero(keys != _EMPTY)[:, 0]
    face = keys[pixel] & 0xFFFFFFFF
    centre = torch.stack([pixel % width, pixel // width], -1).double()
    screen = _screen_barycentrics(xy[face], centre)
    depth, barycentric = _perspective(screen, z[face])
    return Fragments(pixel, face, depth.float(), barycentric.float())


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear colours (N, C) of a (C, h, w) texture at UVs (N, 2): u right, v up (OBJ, glTF),
    repeating outside [0, 1]."""
    outside = (uv < 0) | (uv > 1)
    uv = torch.where(outside, uv - uv.floor(), uv)
    grid = torch.stack([uv[:, 0] * 2 - 1, (1 - uv[:, 1]) * 2 - 1], -1).float()
    out = torch.nn.functional.grid_sample(
        texture[None].float(),
        grid[None, None],
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return out[0, :, 0].T


def shade(
    fragments: Fragments,
    corner_colours: torch.Tensor,
    corner_uv: torch.Tensor,
    face_texture: torch.Tensor,
    textures: list[torch.Tensor],
) -> torch.Tensor:
    """Colours (N, 3) of the fragments: per-corner colours (T, 3, 3) interpolated, or, on a
    triangle whose ``face_texture`` (T,) is k >= 0, ``textures[k]`` (3, h, w) sampled at the
    interpolated per-corner UVs (T, 3, 2)."""
    weights = fragments.barycentric[..., None]
    colour = (corner_colours[fragments.face] * weights).sum(1)
    texture_of = face_texture[fragments.face]
    for k, texture in enumerate(textures):
        chosen = torch.nonzero(texture_of == k)[:, 0]
        if len(chosen) == 0:
            continue
        uv = (corner_uv[fragments.face[chosen]] * weights[chosen]).sum(1)
        colour[chosen] = sample_texture(texture, uv)
    return colour.clamp(0, 1)
