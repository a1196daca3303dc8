"""The process's peak memory, as the benchmark scripts report it (Linux ``/proc``; elsewhere
``ru_maxrss``). Imported by the scripts beside it (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import resource
import sys

GIB = 1024**3


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (``VmHWM``) to its current RSS (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    """Peak RSS since the last `reset_peak_rss` (``VmHWM``), else of the whole process
    (``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / GIB
