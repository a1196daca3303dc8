"""Object colours, one per object id, shared by everything that paints objects (the studio's
overlays, segmentation condition maps)."""

from __future__ import annotations

PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
)
"""Object colours (RGB), by id: object n gets ``PALETTE[(n - 1) % len(PALETTE)]``."""


def colour(object_id: int) -> tuple[int, int, int]:
    return PALETTE[(int(object_id) - 1) % len(PALETTE)]
