"""Training options, declared once: pydantic fields that ``anima train ...`` turns into flags.

A training config is a pydantic model. A field annotated with `Flag` is also a command-line
option of its ``anima train`` command: `anima.cli_train` builds the option from the field (flag
name, default, help from the ``description``), so the CLI and the API cannot disagree. Fields
without a `Flag` are settings of the Python API only.

`RunConfig` holds the fields every training run has (output folder, checkpoints, resume, log,
seed); a method's config extends it.

This module imports no model library: the CLI imports the configs on every start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class Flag:
    """Marks a config field as a command-line option.

    ``Flag()`` is ``--field-name``; ``Flag("--frames")`` names the option, ``Flag("--quiet",
    "-q")`` adds a short form. ``Flag(items=("--height", "--width"))`` splits a tuple field into
    one option an item.
    """

    __slots__ = ("names", "items")

    def __init__(self, *names: str, items: tuple[str, ...] = ()) -> None:
        if names and items:
            raise ValueError("a Flag has names or items, not both")
        self.names, self.items = names, items

    def __repr__(self) -> str:
        items = f"items={self.items!r}" if self.items else ""
        return f"Flag({', '.join([*map(repr, self.names), *filter(None, [items])])})"

    def decls(self, field: str) -> tuple[str, ...]:
        """The option names of ``field`` (one option; empty for a split tuple)."""
        if self.items:
            return ()
        return self.names or (f"--{field.replace('_', '-')}",)

    def display(self, field: str) -> str:
        """How an error message names the option(s) of ``field``."""
        return "/".join(self.items) if self.items else self.decls(field)[0]


def field_flag(model: type[BaseModel], field: str) -> Flag | None:
    """The `Flag` of ``model.field``, None for an API-only field."""
    info = model.model_fields.get(field)
    if info is None:
        return None
    return next((m for m in info.metadata if isinstance(m, Flag)), None)


def _multiple_of_8(size: tuple[int, int]) -> tuple[int, int]:
    if min(size) < 8 or size[0] % 8 or size[1] % 8:
        raise ValueError(f"height and width must be positive multiples of 8, got {size}")
    return size


#: A training config's (H, W): positive multiples of 8 (VAE and ControlNet stems downsample).
TrainingSize = Annotated[tuple[int, int], AfterValidator(_multiple_of_8)]
#: The (H, W) field's two options.
SIZE_FLAG = Flag(items=("--height", "--width"))


class RunConfig(BaseModel):
    """What every training run sets besides its method: where it writes, how often it
    checkpoints and logs, whether it resumes, its seed, and the optimiser's common settings."""

    model_config = ConfigDict(extra="forbid")

    out: Annotated[Path, Flag()] = Field(
        description="Output directory: checkpoints, log.jsonl, the trained model."
    )
    checkpoint_every: Annotated[int, Flag()] = Field(
        500, ge=1, description="Steps between checkpoints."
    )
    checkpoints_total_limit: Annotated[int | None, Flag()] = Field(
        None, ge=1, description="Keep only the newest N checkpoints."
    )
    resume: Annotated[str | None, Flag()] = Field(
        None, description="Checkpoint directory, or 'latest' (in --out)."
    )
    seed: Annotated[int, Flag()] = Field(
        0, ge=0, lt=2**63, description="Seed of every random draw."
    )
    log_every: Annotated[int, Flag()] = Field(
        10, ge=1, description="Steps between log.jsonl lines."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; None: off.")
    adam_weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay.")
    quiet: Annotated[bool, Flag("--quiet", "-q")] = Field(False, description="No progress output.")

    def loop_settings(self) -> dict[str, Any]:
        """The `anima.training.LoopConfig` arguments this config sets."""
        return {
            "out": Path(self.out),
            "checkpoint_every": self.checkpoint_every,
            "checkpoints_total_limit": self.checkpoints_total_limit,
            "seed": self.seed,
            "log_every": self.log_every,
            "max_grad_norm": self.max_grad_norm,
            "adam_weight_decay": self.adam_weight_decay,
            "quiet": self.quiet,
        }
