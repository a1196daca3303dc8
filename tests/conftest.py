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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two spinning
    threads per op are many times slower than one: a module of them asks for this with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def examples_dir() -> Path:
    return EXAMPLES


def acting_adapter(unet: torch.nn.Module, query_noise: float = 0.0, seed: int = 6):
    """A Dynamics-Adapter of ``unet`` that does something: W'_O ~ N(0, 0.3^2), and W'_Q = W_Q
    plus ``query_noise`` times standard noise (``0``: W'_Q = W_Q)."""
    from anima.methods.xdyna.adapter import DynamicsAdapter

    adapter = DynamicsAdapter.from_unet(unet)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in adapter.weights:
            weights = adapter.weights[name]
            weights.to_out.weight.normal_(std=0.3, generator=generator)
            if query_noise:
                noise = torch.randn(weights.to_q.weight.shape, generator=generator)
                weights.to_q.weight.add_(noise, alpha=query_noise)
    return adapter
