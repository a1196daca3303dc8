"""A training run's directory: ``train_config.json``, ``log.jsonl``, ``checkpoint-*/``.

``log.jsonl`` holds one JSON line a logged step. A checkpoint is an accelerate state plus
``training_state.json`` naming the step it holds; it is written under a temporary name and
renamed when complete, so a crash never leaves a half-written one that ``--resume latest``
would pick.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anima.errors import InputError
from anima.io import atomic_path

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"
LOG_FILE = "log.jsonl"
CONFIG_FILE = "train_config.json"

#: ``list_checkpoints(out)``: a run's complete checkpoints, oldest first.
CheckpointLister = Callable[[Path], list[Path]]


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def loss_history(out: Path) -> list[dict[str, Any]]:
    """The lines of ``out/log.jsonl``."""
    path = Path(out) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_log(out: Path, line: dict[str, Any]) -> None:
    """One line at the end of ``out/log.jsonl``."""
    with open(Path(out) / LOG_FILE, "a") as log:
        log.write(json.dumps(line) + "\n")


def trim_log(out: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Keep only the lines of ``out/log.jsonl`` that ``keep`` accepts (atomically)."""
    path = Path(out) / LOG_FILE
    if not path.is_file():
        return
    kept = [
        line for line in path.read_text().splitlines() if line.strip() and keep(json.loads(line))
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


def start_run(out: Path, config: dict[str, Any], fresh: bool) -> None:
    """Create ``out`` and write its ``train_config.json``; a fresh run (not a resume) starts
    its ``log.jsonl`` empty. Call on the main process only."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, config)
    if fresh:
        (out / LOG_FILE).unlink(missing_ok=True)


def checkpoint_step(path: Path, prefix: str = CHECKPOINT_PREFIX) -> int | None:
    """The step of a ``<prefix><step>`` folder, None for anything else."""
    match = re.fullmatch(rf"{re.escape(prefix)}(\d+)", path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def list_checkpoints(out: Path, prefix: str = CHECKPOINT_PREFIX) -> list[Path]:
    """Complete ``<prefix><step>`` checkpoints in ``out``, oldest first."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [
        (step, p)
        for p in out.iterdir()
        if (step := checkpoint_step(p, prefix)) is not None and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def checked_checkpoint(resume: str) -> Path:
    """An explicit ``--resume`` path, which must be a checkpoint."""
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise InputError(f"not a training checkpoint (no {STATE_FILE})", str(path))
    return path


def resolve_resume(
    resume: str | None, out: Path, checkpoints: CheckpointLister = list_checkpoints
) -> Path | None:
    """The checkpoint to resume from: a path, the newest in ``out`` for 'latest' (None if there
    is none yet), or None."""
    if resume is None:
        return None
    if resume == "latest":
        found = checkpoints(Path(out))
        return found[-1] if found else None
    return checked_checkpoint(resume)


def resume_or_fresh(resume: str | None, out: Path) -> Path | None:
    """`resolve_resume`, refusing (one `InputError`) a fresh run into a folder that already
    holds checkpoints: the new run's would mix with them."""
    found = resolve_resume(resume, out)
    if found is None and resume is None and list_checkpoints(Path(out)):
        raise InputError(
            "the output directory already holds checkpoints of another run; pass --resume "
            "latest or choose another --out",
            str(out),
        )
    return found


def read_record(folder: Path, weights_file: str, record_file: str) -> dict[str, Any] | None:
    """The JSON record of a finished run folder (``weights_file`` and ``record_file`` both
    there and readable), else None: how a method finds a LoRA or token it can reuse."""
    folder = Path(folder)
    if not (folder / weights_file).is_file() or not (folder / record_file).is_file():
        return None
    try:
        record = json.loads((folder / record_file).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def checkpoint_state(folder: Path) -> dict[str, Any]:
    """The ``training_state.json`` of a checkpoint."""
    return json.loads((Path(folder) / STATE_FILE).read_text())


def save_checkpoint(
    accelerator: Any,
    final: Path,
    state: dict[str, Any],
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """``accelerator.save_state`` into ``final`` atomically, with ``state`` (plus the process
    count) as ``training_state.json``; ``write_extra(folder)`` adds files on the main process."""
    tmp = final.parent / f".{final.name}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if write_extra is not None:
            write_extra(tmp)
        write_json(tmp / STATE_FILE, {**state, "num_processes": accelerator.num_processes})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(checkpoints: list[Path], keep: int | None) -> None:
    """Delete all but the newest ``keep`` of ``checkpoints`` (oldest first)."""
    if keep is not None:
        for old in checkpoints[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
