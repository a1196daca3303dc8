"""Where anima keeps what it can make again but would rather not: LoRAs trained on the fly
(I2V3D §3.2.1, one per image and settings).

The folder is ``$ANIMA_CACHE`` when set, else ``$XDG_CACHE_HOME/anima``, else
``~/.cache/anima``. Nothing outside it is written, and nothing in it is ever deleted by anima:
removing it only costs the time to make its contents again.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "ANIMA_CACHE"


def cache_root() -> Path:
    """The cache folder (module docstring); not created here."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "anima"


def cache_dir(*parts: str) -> Path:
    """``cache_root() / parts...`` (not created here)."""
    return cache_root().joinpath(*parts)
