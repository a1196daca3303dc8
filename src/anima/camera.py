"""Pinhole camera geometry shared by the scene, the animation and the renderer.

Pixel convention: integer coordinates are pixel centres, x right, y down; the principal point is
the image centre ((W-1)/2, (H-1)/2). Camera coordinates: x right, y down, z forward; "distance"
is the planar depth z (LeviTor Eq. 7 unprojects with K^-1 [x, y, 1]^T d).
"""

from __future__ import annotations

import math

import torch


def intrinsics_from_fov(size: tuple[int, int], fov_deg: float) -> torch.Tensor:
    """3x3 K for a horizontal field of view ``fov_deg`` and square pixels."""
    height, width = size
    focal = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return torch.tensor(
        [[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )


def pixel_grid(size: tuple[int, int], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(H, W, 2) pixel-centre coordinates (x, y)."""
    height, width = size
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype), indexing="ij"
    )
    return torch.stack([xs, ys], dim=-1)


def unproject(xy: torch.Tensor, distance: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Pixels (..., 2) at planar distances (...) to camera points (..., 3): K^-1 [x, y, 1]^T d."""
    fx, fy = intrinsics[0, 0], intrinsics[1, 1]
    cx, cy = intrinsics[0, 2], intrinsics[1, 2]
    x = (xy[..., 0] - cx) / fx * distance
    y = (xy[..., 1] - cy) / fy * distance
    return torch.stack([x, y, distance], dim=-1)


def project(points: torch.Tensor, intrinsics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera points (..., 3) to pixels (..., 2) and planar distances (...).

    ``intrinsics`` is (3, 3) or broadcastable (..., 3, 3)."""
    z = points[..., 2]
    safe_z = torch.where(z.abs() < 1e-9, torch.full_like(z, 1e-9), z)
    fx, fy = intrinsics[..., 0, 0], intrinsics[..., 1, 1]
    cx, cy = intrinsics[..., 0, 2], intrinsics[..., 1, 2]
    x = points[..., 0] / safe_z * fx + cx
    y = points[..., 1] / safe_z * fy + cy
    return torch.stack([x, y], dim=-1), z


def rotation_matrix(degrees_xyz: torch.Tensor) -> torch.Tensor:
    """(..., 3) Euler angles in degrees -> (..., 3, 3) rotation R = Rz @ Ry @ Rx.

    Applied to a column vector, x is rotated first (tilt), then y (pan), then z (roll)."""
    rx, ry, rz = torch.deg2rad(degrees_xyz).unbind(-1)
    one, zero = torch.ones_like(rx), torch.zeros_like(rx)

    def stack(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    mx = stack([[one, zero, zero], [zero, rx.cos(), -rx.sin()], [zero, rx.sin(), rx.cos()]])
    my = stack([[ry.cos(), zero, ry.sin()], [zero, one, zero], [-ry.sin(), zero, ry.cos()]])
    mz = stack([[rz.cos(), -rz.sin(), zero], [rz.sin(), rz.cos(), zero], [zero, zero, one]])
    return mz @ my @ mx


def rigid(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) and (..., 3) -> (..., 4, 4) homogeneous transform."""
    shape = rotation.shape[:-2]
    out = torch.zeros(*shape, 4, 4, dtype=rotation.dtype)
    out[..., :3, :3] = rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def transform_points(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply (..., 4, 4) transforms to points (..., N, 3)."""
    return points @ matrix[..., :3, :3].transpose(-1, -2) + matrix[..., None, :3, 3]
