"""``anima train ...``: training commands (a typer sub-app, added to `anima.cli` as ``train``).

``anima train svd-base --data DIR --out DIR [options]`` trains a tiny SVD base model
(`anima.world.svd_base.train`); ``anima train levitor --data DIR --out DIR [options]`` trains
the LeviTor ControlNet (`anima.methods.levitor.train`); ``anima train xdyna ...`` trains
X-Dyna (`anima.methods.xdyna.train`); ``anima train i2v3d-lora [SPEC] --out DIR ...`` trains
I2V3D's LoRA on the input image and its views (`anima.methods.i2v3d.train`); ``anima train
animate124-token [SPEC] --init-words NAME --out DIR ...`` learns Animate124's token for the
reference image by textual inversion (`anima.methods.animate124.textual_inversion`). The
same commands run unchanged under ``accelerate launch`` on several GPUs and ``torchrun`` on
several CPU processes.

Each command's options are built from its method's pydantic config (`config_command`): every
field marked with an `anima.training.Flag` becomes an option with the field's name, default and
description, so the CLI and the Python API cannot disagree. Bad input (dataset layout,
weights, options) is an `InputError`: one line ``error: <what>, <where>`` naming the option,
exit status 2.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined
from rich.console import Console

from anima.errors import InputError
from anima.methods.animate124.textual_inversion import TokenTrainConfig
from anima.methods.i2v3d.train import LoraTrainConfig
from anima.methods.levitor.train import TrainConfig
from anima.methods.xdyna.train import XDynaTrainConfig
from anima.training import RunConfig, field_flag
from anima.weights import Weights
from anima.world.svd_base.train import BaseTrainConfig

train_app = typer.Typer(
    rich_markup_mode=None, help="Train a method's networks.", no_args_is_help=True
)


@train_app.callback()
def _train() -> None:
    """Train a method's networks (one sub-command a method)."""


# ------------------------------------------------------------------------------------------
# Options from a config
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Extra:
    """A command option that is not a config field (passed to the command's run function);
    ``argument``: a positional argument instead of an option."""

    name: str
    annotation: Any
    default: Any
    help: str
    argument: bool = False

    def parameter(self) -> Any:
        """The typer option (or argument) that reads it."""
        if self.argument:
            return typer.Argument(help=self.help, metavar=self.name.upper(), show_default=False)
        return typer.Option(help=self.help)


#: The fields every command lists first; the `RunConfig` fields (checkpoints, log, ...) last.
_FIRST = ("data", "out")


def _cli_type(annotation: Any) -> Any:
    """The type typer parses an option as: Literals as plain strings (pydantic checks the
    choice and the error names the option), ``X | None`` kept."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return str
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _cli_type(inner) | None
    return annotation


def _ordered_fields(model: type[BaseModel]) -> list[str]:
    """``model``'s fields with a `Flag`: data and out, the method's own, then the run's."""
    flagged = [name for name in model.model_fields if field_flag(model, name) is not None]
    common = [name for name in flagged if name in RunConfig.model_fields and name not in _FIRST]
    first = [name for name in _FIRST if name in flagged]
    own = [name for name in flagged if name not in first and name not in common]
    # --quiet closes the list, as it did before the options were generated
    common.sort(key=lambda name: name == "quiet")
    return [*first, *own, *common]


def _parameters(
    model: type[BaseModel], extras: Sequence[Extra]
) -> tuple[list[inspect.Parameter], dict[str, list[str]]]:
    """The command's parameters, and for each config field the parameter names that set it."""
    params: list[inspect.Parameter] = []
    sources: dict[str, list[str]] = {}

    def add(name: str, annotation: Any, default: Any, option: Any) -> None:
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if default is PydanticUndefined else default,
                annotation=Annotated[annotation, option],
            )
        )

    for name in _ordered_fields(model):
        info = model.model_fields[name]
        flag = field_flag(model, name)
        assert flag is not None
        help_text = info.description or ""
        if flag.items:
            item_types = typing.get_args(info.annotation)
            sources[name] = []
            for i, decl in enumerate(flag.items):
                param = decl.lstrip("-").replace("-", "_")
                default = info.default[i] if info.default is not PydanticUndefined else None
                label = decl.lstrip("-").capitalize()
                text = f"{label}: {help_text[:1].lower()}{help_text[1:]}"
                add(param, item_types[i], default, typer.Option(decl, help=text))
                sources[name].append(param)
        else:
            # Flag(): typer names the option after the parameter (a bool gets --no-NAME too)
            option = typer.Option(*flag.names, help=help_text)
            add(name, _cli_type(info.annotation), info.default, option)
            sources[name] = [name]
        if name == "out":
            for extra in extras:
                add(extra.name, extra.annotation, extra.default, extra.parameter())
    if "out" not in sources:
        for extra in extras:
            add(extra.name, extra.annotation, extra.default, extra.parameter())
    return params, sources


def config_error(error: ValidationError, model: type[BaseModel]) -> InputError:
    """The first validation error of a training config, named by the option that sets it."""
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    message = first["msg"].removeprefix("Value error, ")
    flag = field_flag(model, field) if field else None
    where = flag.display(field) if flag is not None else field or "options"
    return InputError(message, where)


def config_command(
    app: typer.Typer,
    name: str,
    model: type[BaseModel],
    run: Callable[..., None],
    help: str,
    extras: Sequence[Extra] = (),
) -> None:
    """Add command ``name`` to ``app``: its options are ``model``'s flagged fields plus
    ``extras``; it validates a ``model`` (errors name the option) and calls
    ``run(config, **extras)``."""
    params, sources = _parameters(model, extras)

    def command(**values: Any) -> None:
        settings = {}
        for field, names in sources.items():
            parts = [values[n] for n in names]
            settings[field] = tuple(parts) if len(names) > 1 else parts[0]
        try:
            config = model(**settings)
        except ValidationError as error:
            raise config_error(error, model) from None
        run(config, **{extra.name: values[extra.name] for extra in extras})

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__name__ = f"train_{name.replace('-', '_')}_command"
    command.__doc__ = help
    app.command(name, help=help)(command)


ALLOW_PICKLE = Extra("allow_pickle", bool, False, "Allow loading pickle checkpoints.")


def _print(quiet: bool, line: str) -> None:
    Console(stderr=True, quiet=quiet).print(line, markup=False, highlight=False)


# ------------------------------------------------------------------------------------------
# The commands
# ------------------------------------------------------------------------------------------


def _levitor(config: TrainConfig, weights: str | None, allow_pickle: bool) -> None:
    from anima.methods.levitor.train import train_levitor

    if config.init is not None and not config.init.is_dir():
        raise InputError("ControlNet directory not found", str(config.init))
    result = train_levitor(config, Weights.resolve(weights, allow_pickle=allow_pickle))
    loss = f", last loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    _print(
        config.quiet,
        f"wrote {result.controlnet_dir} (steps {result.start_step}-{result.step}{loss}, "
        f"{result.seconds:.1f}s)",
    )


config_command(
    train_app,
    "levitor",
    TrainConfig,
    _levitor,
    "Train the LeviTor ControlNet (LeviTor §3.2, Eq. 6) on clips with instance masks.",
    [
        Extra(
            "weights",
            str | None,
            None,
            "Weights directory with svd/ (or 'tiny'); default $ANIMA_WEIGHTS.",
        ),
        ALLOW_PICKLE,
    ],
)


def _svd_base(config: BaseTrainConfig) -> None:
    from anima.world.svd_base.train import train_svd_base

    result = train_svd_base(config)
    assert result is not None  # only a test's stop_after ends a run early
    _print(
        config.quiet,
        f"wrote {result.svd_dir} (scaling factor {result.scaling_factor:.4f}, "
        f"{result.seconds:.1f}s)",
    )


config_command(
    train_app,
    "svd-base",
    BaseTrainConfig,
    _svd_base,
    "Train a tiny SVD image-to-video base model (VAE, then UNet + image encoder).",
)


def _xdyna(config: XDynaTrainConfig, weights: str | None, allow_pickle: bool) -> None:
    from anima.methods.xdyna.train import train_xdyna

    if config.init is not None and not config.init.is_dir():
        raise InputError("weights directory not found", str(config.init))
    result = train_xdyna(config, Weights.resolve(weights, allow_pickle=allow_pickle))
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    _print(
        config.quiet,
        f"wrote {result.out} (stage {config.stage}, steps {result.start_step}-{result.step}"
        f"{last}, {result.seconds:.1f}s)",
    )


config_command(
    train_app,
    "xdyna",
    XDynaTrainConfig,
    _xdyna,
    "Train X-Dyna (X-Dyna §3.4): stage motion, then stage face.",
    [
        Extra(
            "weights",
            str | None,
            None,
            "Weights with sd15/ and motion-adapter/ (or 'tiny'); $ANIMA_WEIGHTS.",
        ),
        ALLOW_PICKLE,
    ],
)


def _i2v3d_lora(
    config: LoraTrainConfig, spec: Path | None, weights: str | None, allow_pickle: bool
) -> None:
    from anima.methods.i2v3d.train import train_lora

    config = config.model_copy(update={"spec": spec})
    result = train_lora(config, Weights.resolve(weights, allow_pickle=allow_pickle))
    if result.cached:
        _print(config.quiet, f"{result.lora_file} is already trained on this image (cached)")
        return
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    _print(
        config.quiet,
        f"wrote {result.lora_file} (base {config.base}, steps {result.start_step}-{result.step}"
        f"{last}, {result.seconds:.1f}s)",
    )


config_command(
    train_app,
    "i2v3d-lora",
    LoraTrainConfig,
    _i2v3d_lora,
    "Train I2V3D's LoRA (I2V3D §3.2.1, Eq. 1) on a SPEC's (or --image's) image and novel views "
    "of its object.",
    [
        Extra(
            "spec",
            Path | None,
            None,
            "MotionSpec: its image, object and prompt (or give --image).",
            argument=True,
        ),
        Extra(
            "weights",
            str | None,
            None,
            "Weights with sdxl/ or sd15/ (or 'tiny'); default $ANIMA_WEIGHTS.",
        ),
        ALLOW_PICKLE,
    ],
)


def _animate124_token(
    config: TokenTrainConfig, spec: Path | None, weights: str | None, allow_pickle: bool
) -> None:
    from anima.methods.animate124.textual_inversion import train_token

    config = config.model_copy(update={"spec": spec})
    result = train_token(config, Weights.resolve(weights, allow_pickle=allow_pickle))
    if result.cached:
        _print(config.quiet, f"{result.embeds_file} is already trained on this image (cached)")
        return
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    _print(
        config.quiet,
        f"wrote {result.embeds_file} (token {result.token}, steps {result.start_step}-"
        f"{result.step}{last}, {result.seconds:.1f}s)",
    )


config_command(
    train_app,
    "animate124-token",
    TokenTrainConfig,
    _animate124_token,
    "Learn Animate124's token for the reference image (Animate124 §3.4: textual inversion on "
    "SD1.5) from a SPEC's (or --image's) image.",
    [
        Extra(
            "spec",
            Path | None,
            None,
            "MotionSpec: its image and object (or give --image).",
            argument=True,
        ),
        Extra(
            "weights",
            str | None,
            None,
            "Weights with sd15/ (or 'tiny'); default $ANIMA_WEIGHTS.",
        ),
        ALLOW_PICKLE,
    ],
)
