"""Output paths checked before any work: a run that cannot write its outputs fails at once.

The rule the CLI keeps (README, "Outputs"): an output file is replaced; an output folder (frames
or a dump) that exists is written into, never replaced (`anima.io.Staging.folder`); a file is
never turned into a folder; the video and the dump are different places. Each check raises an
`InputError` naming the path and the option it came from.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from anima.errors import InputError

DEFAULT_NAME_MAX = 255
"""The longest file name (bytes) most file systems take, when the system does not say."""


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return DEFAULT_NAME_MAX


def _exists(path: Path) -> bool:
    """Like `Path.exists`, but a name too long for the file system simply does not exist."""
    try:
        os.stat(path)
    except (OSError, ValueError):
        return False
    return True


def _nearest_existing(path: Path) -> Path:
    while not _exists(path) and path != path.parent:
        path = path.parent
    return path


def _check_names(path: Path, existing: Path, where: str) -> None:
    """Every name still to be created under `existing` fits the file system."""
    limit = _name_max(existing if existing.is_dir() else existing.parent)
    for part in path.relative_to(existing).parts:
        size = len(os.fsencode(part))
        if size > limit:
            raise InputError(
                f"cannot write the file name '{part[:24]}...': it is {size} bytes long, the "
                f"file system in '{existing}' takes at most {limit}",
                where,
            )


def _check_writable(folder: Path, path: Path, where: str) -> None:
    """Write and remove a probe file in `folder` (permission bits do not tell the whole
    truth: read-only mounts, ACLs)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".anima-probe-", dir=folder)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"cannot write '{path}': {reason} in '{folder}'", where) from None
    os.close(handle)
    os.unlink(probe)


def check_output(path: Path, folder: bool, where: str) -> Path:
    """Check that `path` can be written as a file (``folder=False``) or a folder, before any
    work; returns it absolute. An existing folder is fine for a folder output (it is written
    into) and for nothing else."""
    path = Path(os.path.abspath(path))
    if _exists(path):
        if folder and not path.is_dir():
            raise InputError(f"'{path}' is a file; a folder is needed here", where)
        if not folder and path.is_dir():
            raise InputError(f"'{path}' is a folder; name a file (.mp4 or .gif)", where)
        _check_writable(path if folder else path.parent, path, where)
        return path
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise InputError(f"cannot write '{path}': '{existing}' is a file, not a folder", where)
    _check_names(path, existing, where)
    _check_writable(existing, path, where)
    return path


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def check_apart(video: Path, video_is_folder: bool, dump: Path | None) -> None:
    """The video and the dump must not write into one another: the same folder for both, or a
    folder of frames inside the dump (or the dump inside it), is refused."""
    if dump is None:
        return
    video, dump = Path(os.path.abspath(video)), Path(os.path.abspath(dump))
    if video == dump:
        raise InputError(f"-o and --dump both name '{video}'; give them different places", "-o")
    if video_is_folder and (_contains(video, dump) or _contains(dump, video)):
        raise InputError(
            f"the frames folder '{video}' and the dump '{dump}' lie inside one another", "-o"
        )
