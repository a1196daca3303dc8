"""The machine a benchmark ran on, as the scripts report it beside their figures. Imported by
the scripts beside it (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def machine() -> dict[str, Any]:
    """Platform, processor, CPU count, torch threads and the torch and Python versions."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
