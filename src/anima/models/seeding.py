"""Module weights drawn from a seed without touching the caller's random stream: tiny models
and the fresh modules a trainer adds (e.g. X-Dyna's ControlNet stems) use it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw from torch's global generator seeded with ``seed``, restoring the caller's state
    afterwards (building a model never changes the user's random stream)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
