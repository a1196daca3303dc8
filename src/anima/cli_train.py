"""``anima train ...``: training commands (a typer sub-app, added to `anima.cli` as ``train``).

``anima train svd-base --data DIR --out DIR [options]`` trains a tiny SVD base model
(`anima.methods.svd_base.train`); ``anima train levitor --data DIR --out DIR [options]`` trains
the LeviTor ControlNet (`anima.methods.levitor.train`). The same commands run unchanged under
``accelerate launch`` on several GPUs. Bad input (dataset layout, weights, options) is an
`InputError`: one line ``error: <what>, <where>``, exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from anima.errors import InputError
from anima.weights import Weights

train_app = typer.Typer(
    rich_markup_mode=None, help="Train a method's networks.", no_args_is_help=True
)


@train_app.callback()
def _train() -> None:
    """Train a method's networks (one sub-command a method)."""


#: TrainConfig field -> the option that sets it (for error messages).
_OPTION_OF = {
    "data": "--data",
    "out": "--out",
    "steps": "--steps",
    "batch_size": "--batch-size",
    "gradient_accumulation_steps": "--gradient-accumulation-steps",
    "lr": "--lr",
    "lr_warmup_steps": "--lr-warmup-steps",
    "lr_min": "--lr-min",
    "size": "--height/--width",
    "num_frames": "--frames",
    "checkpoint_every": "--checkpoint-every",
    "checkpoints_total_limit": "--checkpoints-total-limit",
    "resume": "--resume",
    "mixed_precision": "--mixed-precision",
    "seed": "--seed",
    "log_every": "--log-every",
    "num_workers": "--num-workers",
    "init": "--init",
    "variant": "--variant",
    "loss_weighting": "--loss-weighting",
    "moving_weight": "--moving-weight",
    "p_mean": "--p-mean",
}


def _config_error(error: ValidationError, option_of: dict[str, str] = _OPTION_OF) -> InputError:
    """The first validation error of a training config, named by the option that set it."""
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    message = first["msg"].removeprefix("Value error, ")
    return InputError(message, option_of.get(field, field or "options"))


@train_app.command("levitor")
def train_levitor_command(
    data: Annotated[Path, typer.Option(help="Dataset directory (clip folders).")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    weights: Annotated[
        str | None,
        typer.Option(help="Weights directory with svd/ (or 'tiny'); default $ANIMA_WEIGHTS."),
    ] = None,
    init: Annotated[
        Path | None, typer.Option(help="Start from this ControlNet (else from the UNet).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Clips per process and micro-batch.")] = 1,
    gradient_accumulation_steps: Annotated[int, typer.Option(help="Micro-batches a step.")] = 1,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (paper: 1e-5).")] = 1e-5,
    lr_warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 0,
    lr_min: Annotated[
        float | None, typer.Option(help="Cosine decay to this learning rate (else constant).")
    ] = None,
    height: Annotated[int, typer.Option(help="Training height (multiple of 8).")] = 288,
    width: Annotated[int, typer.Option(help="Training width (multiple of 8).")] = 512,
    frames: Annotated[int, typer.Option(help="Frames per clip sample.")] = 16,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    checkpoints_total_limit: Annotated[
        int | None, typer.Option(help="Keep only the newest N checkpoints.")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Checkpoint directory, or 'latest' (in --out).")
    ] = None,
    mixed_precision: Annotated[str, typer.Option(help="no, fp16 or bf16.")] = "no",
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Recompute activations in the backward pass (less memory).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 0,
    variant: Annotated[
        str, typer.Option(help="full, or an ablation: single_point, no_depth, no_instance.")
    ] = "full",
    loss_weighting: Annotated[
        str,
        typer.Option(help="Eq. 6 as written (epsilon) or EDM's lambda(sigma) weighting (edm)."),
    ] = "epsilon",
    moving_weight: Annotated[
        float,
        typer.Option(help="Loss weight on latent pixels moved objects cover or uncover (1: off)."),
    ] = 1.0,
    p_mean: Annotated[
        float, typer.Option(help="Mean of ln sigma, EDM's log-normal noise levels.")
    ] = 0.7,
    log_every: Annotated[int, typer.Option(help="Steps between log.jsonl lines.")] = 10,
    num_workers: Annotated[int, typer.Option(help="Data loader worker processes.")] = 0,
    allow_pickle: Annotated[bool, typer.Option(help="Allow loading pickle checkpoints.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train the LeviTor ControlNet (paper 003, Eq. 6) on clips with instance masks."""
    from anima.methods.levitor.train import TrainConfig, train_levitor

    try:
        config = TrainConfig(
            data=data,
            out=out,
            steps=steps,
            batch_size=batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            lr=lr,
            lr_warmup_steps=lr_warmup_steps,
            lr_min=lr_min,
            size=(height, width),
            num_frames=frames,
            checkpoint_every=checkpoint_every,
            checkpoints_total_limit=checkpoints_total_limit,
            resume=resume,
            mixed_precision=mixed_precision,
            gradient_checkpointing=gradient_checkpointing,
            seed=seed,
            variant=variant,
            loss_weighting=loss_weighting,
            moving_weight=moving_weight,
            p_mean=p_mean,
            log_every=log_every,
            num_workers=num_workers,
            init=init,
            quiet=quiet,
        )
    except ValidationError as error:
        raise _config_error(error) from None
    if init is not None and not init.is_dir():
        raise InputError("ControlNet directory not found", str(init))
    resolved = Weights.resolve(weights, allow_pickle=allow_pickle)
    result = train_levitor(config, resolved)
    console = Console(stderr=True, quiet=quiet)
    loss = f", last loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    console.print(
        f"wrote {result.controlnet_dir} (steps {result.start_step}-{result.step}{loss}, "
        f"{result.seconds:.1f}s)",
        markup=False,
        highlight=False,
    )


#: BaseTrainConfig field -> the option that sets it (for error messages).
_BASE_OPTION_OF = {
    "data": "--data",
    "out": "--out",
    "steps_vae": "--steps-vae",
    "steps_unet": "--steps-unet",
    "lr_vae": "--lr-vae",
    "lr_unet": "--lr-unet",
    "lr_warmup_steps": "--lr-warmup-steps",
    "batch_size": "--batch-size",
    "num_frames": "--frames",
    "vae_batch_size": "--vae-batch-size",
    "vae_frames": "--vae-frames",
    "size": "--height/--width",
    "kl_weight": "--kl-weight",
    "loss_weighting": "--loss-weighting",
    "checkpoint_every": "--checkpoint-every",
    "checkpoints_total_limit": "--checkpoints-total-limit",
    "resume": "--resume",
    "seed": "--seed",
    "log_every": "--log-every",
}


@train_app.command("svd-base")
def train_svd_base_command(
    data: Annotated[Path, typer.Option(help="Clip directory (DATA/<clip>/frames/).")],
    out: Annotated[Path, typer.Option(help="Output directory (svd/, log, checkpoints).")],
    steps_vae: Annotated[int, typer.Option(help="Stage 1 (VAE) steps.")] = 1000,
    steps_unet: Annotated[int, typer.Option(help="Stage 2 (UNet + image encoder) steps.")] = 2000,
    lr_vae: Annotated[float, typer.Option(help="Stage 1 AdamW learning rate.")] = 1e-3,
    lr_unet: Annotated[float, typer.Option(help="Stage 2 AdamW learning rate.")] = 3e-4,
    lr_warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps a stage.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Stage 2: clips per step.")] = 4,
    frames: Annotated[int, typer.Option(help="Stage 2: frames per clip sample.")] = 8,
    vae_batch_size: Annotated[int, typer.Option(help="Stage 1: clips per step.")] = 16,
    vae_frames: Annotated[int, typer.Option(help="Stage 1: frames per clip sample.")] = 2,
    height: Annotated[int, typer.Option(help="Training height (multiple of 8).")] = 64,
    width: Annotated[int, typer.Option(help="Training width (multiple of 8).")] = 64,
    kl_weight: Annotated[float, typer.Option(help="VAE KL weight (per-element mean).")] = 1e-4,
    loss_weighting: Annotated[
        str, typer.Option(help="Stage 2: epsilon (Eq. 6 as written) or edm (lambda(sigma)).")
    ] = "epsilon",
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    checkpoints_total_limit: Annotated[
        int | None, typer.Option(help="Keep only the newest N checkpoints.")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Checkpoint directory, or 'latest' (in --out).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 0,
    log_every: Annotated[int, typer.Option(help="Steps between log.jsonl lines.")] = 10,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train a tiny SVD image-to-video base model (VAE, then UNet + image encoder)."""
    from anima.methods.svd_base.train import BaseTrainConfig, train_svd_base

    try:
        config = BaseTrainConfig(
            data=data,
            out=out,
            steps_vae=steps_vae,
            steps_unet=steps_unet,
            lr_vae=lr_vae,
            lr_unet=lr_unet,
            lr_warmup_steps=lr_warmup_steps,
            batch_size=batch_size,
            num_frames=frames,
            vae_batch_size=vae_batch_size,
            vae_frames=vae_frames,
            size=(height, width),
            kl_weight=kl_weight,
            loss_weighting=loss_weighting,
            checkpoint_every=checkpoint_every,
            checkpoints_total_limit=checkpoints_total_limit,
            resume=resume,
            seed=seed,
            log_every=log_every,
            quiet=quiet,
        )
    except ValidationError as error:
        raise _config_error(error, _BASE_OPTION_OF) from None
    result = train_svd_base(config)
    console = Console(stderr=True, quiet=quiet)
    console.print(
        f"wrote {result.svd_dir} (scaling factor {result.scaling_factor:.4f}, "
        f"{result.seconds:.1f}s)",
        markup=False,
        highlight=False,
    )


#: XDynaTrainConfig field -> the option that sets it (for error messages).
_XDYNA_OPTION_OF = {
    "data": "--data",
    "out": "--out",
    "stage": "--stage",
    "init": "--init",
    "steps": "--steps",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "lr_warmup_steps": "--lr-warmup-steps",
    "size": "--height/--width",
    "num_frames": "--frames",
    "scene_prob": "--scene-prob",
    "checkpoint_every": "--checkpoint-every",
    "checkpoints_total_limit": "--checkpoints-total-limit",
    "resume": "--resume",
    "seed": "--seed",
    "log_every": "--log-every",
}


@train_app.command("xdyna")
def train_xdyna_command(
    data: Annotated[Path, typer.Option(help="Clips: DATA/<clip>/frames/ (+ keypoints.json).")],
    out: Annotated[Path, typer.Option(help="Output weights directory (+ log, checkpoints).")],
    weights: Annotated[
        str | None,
        typer.Option(help="Weights with sd15/ and motion-adapter/ (or 'tiny'); $ANIMA_WEIGHTS."),
    ] = None,
    stage: Annotated[
        str, typer.Option(help="motion: adapter + pose ControlNet + motion module; face.")
    ] = "motion",
    init: Annotated[
        Path | None, typer.Option(help="Weights directory to start from (stage face: stage 1).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Clips per step.")] = 1,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (paper: 1e-5).")] = 1e-5,
    lr_warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 0,
    height: Annotated[int, typer.Option(help="Training height (multiple of 8).")] = 896,
    width: Annotated[int, typer.Option(help="Training width (multiple of 8).")] = 512,
    frames: Annotated[int, typer.Option(help="Generated frames per sample.")] = 16,
    scene_prob: Annotated[
        float, typer.Option(help="Share of scene clips with blank conditions.")
    ] = 0.5,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    checkpoints_total_limit: Annotated[
        int | None, typer.Option(help="Keep only the newest N checkpoints.")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Checkpoint directory, or 'latest' (in --out).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 0,
    log_every: Annotated[int, typer.Option(help="Steps between log.jsonl lines.")] = 10,
    allow_pickle: Annotated[bool, typer.Option(help="Allow loading pickle checkpoints.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train X-Dyna (paper 004, §3.4): stage motion, then stage face."""
    from anima.methods.xdyna.train import XDynaTrainConfig, train_xdyna

    try:
        config = XDynaTrainConfig(
            data=data,
            out=out,
            stage=stage,
            init=init,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            lr_warmup_steps=lr_warmup_steps,
            size=(height, width),
            num_frames=frames,
            scene_prob=scene_prob,
            checkpoint_every=checkpoint_every,
            checkpoints_total_limit=checkpoints_total_limit,
            resume=resume,
            seed=seed,
            log_every=log_every,
            quiet=quiet,
        )
    except ValidationError as error:
        raise _config_error(error, _XDYNA_OPTION_OF) from None
    if init is not None and not init.is_dir():
        raise InputError("weights directory not found", str(init))
    result = train_xdyna(config, Weights.resolve(weights, allow_pickle=allow_pickle))
    console = Console(stderr=True, quiet=quiet)
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    console.print(
        f"wrote {result.out} (stage {stage}, steps {result.start_step}-{result.step}{last}, "
        f"{result.seconds:.1f}s)",
        markup=False,
        highlight=False,
    )
