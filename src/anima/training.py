"""What every training command shares: run-directory files, the accelerator, checkpoints.

A run directory holds ``train_config.json``, ``log.jsonl`` (one JSON line per logged step) and
``checkpoint-*/`` folders, each an accelerate state plus ``training_state.json`` naming the step
it holds. Checkpoints are written under a temporary name and renamed when complete, so a crash
never leaves a half-written one that ``--resume latest`` would pick.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import AfterValidator

from anima.errors import InputError
from anima.io import atomic_path


def _multiple_of_8(size: tuple[int, int]) -> tuple[int, int]:
    if min(size) < 8 or size[0] % 8 or size[1] % 8:
        raise ValueError(f"height and width must be positive multiples of 8, got {size}")
    return size


#: A training config's (H, W): positive multiples of 8 (VAE and ControlNet stems downsample).
TrainingSize = Annotated[tuple[int, int], AfterValidator(_multiple_of_8)]

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"
LOG_FILE = "log.jsonl"
CONFIG_FILE = "train_config.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def loss_history(out: Path) -> list[dict[str, Any]]:
    """The lines of ``out/log.jsonl``."""
    path = Path(out) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def warmup_lr(
    lr: float,
    warmup_steps: int,
    step: int,
    total_steps: int | None = None,
    lr_min: float | None = None,
) -> float:
    """Learning rate of optimizer step ``step`` (1-based): linear warm-up, then constant, or,
    with ``lr_min`` and ``total_steps``, a cosine from ``lr`` down to ``lr_min`` at the last
    step."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * step / warmup_steps
    if lr_min is None or total_steps is None or total_steps <= warmup_steps:
        return lr
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * progress))


def make_accelerator(out: Path, mixed_precision: str = "no") -> Any:
    """An `accelerate.Accelerator` for a run in ``out``; several processes without CUDA
    (``torchrun`` on CPU) use accelerate's multi-CPU mode."""
    from accelerate import Accelerator

    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision, project_dir=str(out), cpu=multi_cpu)


def checked_checkpoint(resume: str) -> Path:
    """An explicit ``--resume`` path, which must be a checkpoint."""
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise InputError(f"not a training checkpoint (no {STATE_FILE})", str(path))
    return path


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
