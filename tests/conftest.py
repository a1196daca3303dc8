"""Shared fixtures: small scenes built in memory, and the example photos."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from anima.camera import intrinsics_from_fov
from anima.scene import Scene

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def make_scene(
    size: tuple[int, int] = (96, 160),
    background: float = 10.0,
    objects: dict[int, tuple[tuple[int, int, int, int], float]] | None = None,
    seed: int = 0,
) -> Scene:
    """A textured image over a constant-distance background with rectangular objects.

    ``objects`` maps id -> ((x0, y0, x1, y1) pixel box, distance)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    image = torch.rand(3, height, width, generator=generator)
    distance = torch.full(size, background)
    instance = torch.zeros(size, dtype=torch.int64)
    for object_id, ((x0, y0, x1, y1), depth) in (objects or {}).items():
        instance[y0:y1, x0:x1] = object_id
        distance[y0:y1, x0:x1] = depth
    ids = sorted((objects or {}).keys())
    return Scene(image, distance, instance, intrinsics_from_fov(size, 60.0), ids)


@pytest.fixture
def examples_dir() -> Path:
    return EXAMPLES
