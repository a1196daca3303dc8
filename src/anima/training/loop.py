"""The training loop every ``anima train`` method runs, on accelerate.

A method supplies a `Trainer`: the modules it trains, its micro-batches (by index) and a loss
function returning named losses. `train_loop` does the rest, the same way for every method:

- **Processes.** The trained modules are prepared by accelerate under one wrapper module whose
  forward runs the trainer's loss, so with several processes (``accelerate launch`` on GPUs,
  ``torchrun`` on CPUs) DistributedDataParallel averages their gradients, however the loss
  reaches the modules (through a pipeline, inside a frozen network).
- **Gradient accumulation.** ``gradient_accumulation_steps`` micro-batches a step, in
  accelerate's ``accumulate`` context: gradients are not synchronised (``no_sync``) until the
  last micro-batch of a step, and each micro-batch's loss is divided by the count.
- **Mixed precision.** With ``fp16``/``bf16`` the trained modules' forward passes run under
  autocast (their outputs cast back to float32), as accelerate does for a prepared model; the
  rest of the loss (frozen networks) runs in the dtypes the trainer chose.
- **Optimiser.** AdamW, learning rate warmed up linearly then constant or cosine-decayed
  (`warmup_lr`; a parameter's rate times the trainer's `Trainer.lr_scale` for it), gradients
  clipped to ``max_grad_norm``, optionally an exponential moving average of the weights
  (`EMA`), which the modules hold when the loop ends.
- **Checkpoints** every ``checkpoint_every`` steps (``out/checkpoint-<step>/``: accelerate's
  state with the modules, the optimiser, the gradient scaler and every process's RNG states,
  plus the EMA and ``training_state.json``), the oldest pruned beyond
  ``checkpoints_total_limit``.
- **Exact resume.** Micro-batch ``i`` of a process is ``trainer.batch(i, process)`` and the
  trainer draws its noise from generators seeded by ``(seed, i, process, stream)``
  (`step_generator`); the learning rate is a function of the step. Resuming from a checkpoint
  therefore continues exactly as the uninterrupted run would have (bit for bit on the same
  hardware and process count), and ``log.jsonl`` loses the lines written after the checkpoint
  before the resumed run writes them again: each step is logged once.
- **Log.** ``log.jsonl``: every ``log_every`` steps and at the last, ``step``, ``loss`` (the
  optimised loss), ``lr``, ``seconds`` (per step), then every other named loss, each the mean
  over the steps since the previous line (over processes and micro-batches within a step); the
  config's ``log_fields`` (e.g. ``{"stage": "vae"}``) lead each line. A progress bar is shown only
  when stderr is a terminal.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from anima.training.files import (
    CHECKPOINT_PREFIX,
    CheckpointLister,
    append_log,
    checkpoint_state,
    list_checkpoints,
    prune_checkpoints,
    save_checkpoint,
    trim_log,
)

#: ``on_progress(step, steps, loss)``: called on the main process after every step.
ProgressCallback = Callable[[int, int, float], None]
#: What a trainer's loss returns: named scalar losses, or one scalar (named ``loss``).
Losses = Mapping[str, Tensor] | Tensor
#: File of the EMA weights in a checkpoint.
EMA_FILE = "ema.safetensors"


# ------------------------------------------------------------------------------------------
# Randomness and the learning rate
# ------------------------------------------------------------------------------------------


def step_generator(seed: int, index: int, process: int, stream: int) -> torch.Generator:
    """A CPU generator determined by ``(seed, index, process, stream)`` alone: the random draws
    of micro-batch ``index`` on ``process``, one independent ``stream`` a purpose (data,
    noise, ...)."""
    state = np.random.SeedSequence([seed, index, process, stream]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


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


# ------------------------------------------------------------------------------------------
# What a method supplies
# ------------------------------------------------------------------------------------------


class Trainer(ABC):
    """A method's part of training: implement `modules`, `batch` and `loss`.

    The loop calls ``batch(i, process)`` for micro-batch ``i`` (0-based, counted over the
    whole run: step ``s`` of a run with accumulation ``A`` holds micro-batches ``s*A`` to
    ``s*A + A - 1``), possibly in data-loader worker processes (``num_workers``), then
    ``loss(modules, batch, i, process)`` on the training process. Draw every random number from
    generators determined by ``i`` and ``process`` (`step_generator`) and training is exactly
    reproducible and resumable.
    """

    #: Some trained parameter may get no gradient from a loss (a layer the forward skips):
    #: with several processes DDP must then look for such parameters every step.
    find_unused_parameters: bool = False

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The modules to train, by name. Their parameters with ``requires_grad`` are
        optimised; the loop moves them to the accelerator's device."""

    @abstractmethod
    def batch(self, index: int, process: int) -> Any:
        """Micro-batch ``index`` of ``process`` (any object; moved to the device by `loss`)."""

    @abstractmethod
    def loss(
        self, modules: Mapping[str, nn.Module], batch: Any, index: int, process: int
    ) -> Losses:
        """The losses of one micro-batch, computed with ``modules`` (the `modules` objects).

        A dict of named scalar losses: its entry ``loss`` is optimised if present, else the sum
        of all entries (logged as ``loss``); every entry is logged. A lone scalar is ``loss``.
        """

    def save_modules(self, modules: Mapping[str, nn.Module], folder: Path) -> bool:
        """Write the modules into checkpoint ``folder`` in a layout of the method's own (called
        on the main process) and return True; False (the default) leaves them to accelerate
        (``model.safetensors``, keys ``parts.<name>.<parameter>``)."""
        return False

    def load_modules(self, modules: Mapping[str, nn.Module], folder: Path) -> bool:
        """Read back what `save_modules` wrote (on every process); True when it did."""
        return False

    def write_checkpoint(self, folder: Path) -> None:  # noqa: B027 (optional hook)
        """Add files of the method's own to checkpoint ``folder`` (main process only)."""

    def lr_scale(self, name: str) -> float:
        """The learning-rate multiplier of trained parameter ``name`` (as the modules name it,
        ``<module>.<parameter>``): the loop gives each distinct multiplier its own optimiser
        group at ``lr x scale`` (Animate124's grids at 10x their MLP's in the release). 1.0
        (one group) by default."""
        return 1.0


@dataclass
class LoopConfig:
    """Settings of one `train_loop` run.

    Attributes:
        out: the run directory (checkpoints and ``log.jsonl``).
        steps: optimizer steps of the whole run (a resumed run ends at the same step).
        lr, lr_warmup_steps, lr_min: the `warmup_lr` schedule (``lr_min``: cosine decay).
        gradient_accumulation_steps: micro-batches a step.
        max_grad_norm: gradient clipping (None: off).
        adam_beta1, adam_beta2, adam_weight_decay, adam_epsilon: AdamW's settings.
        ema_decay: keep an exponential moving average of the weights with this decay (None:
            off); the modules hold the average when the loop ends.
        checkpoint_every: steps between checkpoints.
        checkpoints_total_limit: keep the newest N checkpoints of the run (None: all).
        checkpoint_prefix: checkpoints are ``out/<prefix><step>``.
        checkpoints: lists the run's checkpoints, oldest first, for pruning (default: those
            named with ``checkpoint_prefix``).
        log_every: steps between ``log.jsonl`` lines.
        log_fields: leading fields of each log line and of ``training_state.json``; the lines
            this loop owns (for trimming on resume) are those that carry them.
        seed: recorded in ``training_state.json``.
        num_workers: data-loader worker processes drawing micro-batches.
        quiet: no progress bar (there is none anyway when stderr is not a terminal).
        desc: the progress bar's label.
        stop_after: end after this step as if killed (no EMA copy; for tests of resume).
    """

    out: Path
    steps: int
    lr: float
    lr_warmup_steps: int = 0
    lr_min: float | None = None
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    ema_decay: float | None = None
    checkpoint_every: int = 500
    checkpoints_total_limit: int | None = None
    checkpoint_prefix: str = CHECKPOINT_PREFIX
    checkpoints: CheckpointLister | None = None
    log_every: int = 10
    log_fields: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    num_workers: int = 0
    quiet: bool = False
    desc: str = "train"
    stop_after: int | None = None


@dataclass
class LoopResult:
    """What a `train_loop` call did.

    Attributes:
        start_step: the step it resumed from (0 for a fresh run).
        step: the last step completed.
        losses: the optimised loss of every step it ran (mean over processes and
            micro-batches), ``losses[i]`` being step ``start_step + i + 1``.
        named: every named loss of every step it ran, likewise.
        checkpoints: the checkpoint folders it wrote.
        seconds: wall-clock time of the loop.
        stopped: it ended early at ``stop_after``.
    """

    start_step: int
    step: int
    losses: list[float] = field(default_factory=list)
    named: dict[str, list[float]] = field(default_factory=dict)
    checkpoints: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------


def make_accelerator(out: Path, mixed_precision: str = "no") -> Any:
    """An `accelerate.Accelerator` for a run in ``out``, as `train_loop` needs it: no autocast
    around the whole loss (the loop autocasts the trained modules), and accelerate's
    multi-CPU mode for several processes without CUDA (``torchrun`` on CPU)."""
    from accelerate import Accelerator
    from accelerate.utils import AutocastKwargs

    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(
        mixed_precision=mixed_precision,
        project_dir=str(out),
        cpu=multi_cpu,
        kwargs_handlers=[AutocastKwargs(enabled=False)],
    )


def _set_unused_parameters(accelerator: Any, find: bool) -> None:
    """DistributedDataParallel's ``find_unused_parameters`` for the next ``prepare``."""
    from accelerate.utils import DistributedDataParallelKwargs

    handler = accelerator.ddp_handler or DistributedDataParallelKwargs()
    accelerator.ddp_handler = dataclasses.replace(handler, find_unused_parameters=find)


class TrainedModules(nn.Module):
    """The trained modules under one module for accelerate (shared, not copied). Its forward
    runs a loss closure, so that DistributedDataParallel sees every step's forward pass."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(dict(modules))

    def forward(self, run: Callable[[], Losses]) -> Losses:
        return run()


class EMA:
    """Exponential moving average of parameters: after every optimizer step
    ``average <- decay * average + (1 - decay) * weight``."""

    def __init__(self, named: list[tuple[str, nn.Parameter]], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for average, p in zip(self.average, self.params, strict=True):
            average.lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for average, p in zip(self.average, self.params, strict=True):
            p.copy_(average)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        pairs = zip(self.names, self.average, strict=True)
        tensors = {name: average.detach().cpu().contiguous() for name, average in pairs}
        save_file(tensors, str(Path(folder) / EMA_FILE))

    @torch.no_grad()
    def load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        saved = load_file(str(Path(folder) / EMA_FILE))
        for name, average in zip(self.names, self.average, strict=True):
            average.copy_(saved[name])


class _MicroBatches(torch.utils.data.Dataset):
    """Map-style dataset: item ``i`` is ``batch(i, process)`` (only the sampler decides what is
    read, so the data order is the same whatever the worker count and after a resume)."""

    def __init__(self, batch: Callable[[int, int], Any], process: int) -> None:
        self.batch, self.process = batch, process

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index: int) -> Any:
        return self.batch(index, self.process)


def _keep(batch: Any) -> Any:
    return batch


def _named_losses(losses: Losses) -> dict[str, Tensor]:
    """``losses`` with the optimised total first, under ``loss``."""
    if isinstance(losses, Tensor):
        return {"loss": losses}
    named = dict(losses)
    if not named:
        raise ValueError("the trainer's loss returned no losses")
    if "loss" in named:
        return {"loss": named.pop("loss"), **named}
    return {"loss": sum(named.values()), **named}  # type: ignore[dict-item]


def precision_dtype(accelerator: Any) -> torch.dtype:
    """The dtype of the accelerator's mixed precision (float16, bfloat16), float32 without:
    what a trainer casts its frozen models to."""
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    return dtypes.get(str(accelerator.mixed_precision), torch.float32)


def _autocast_forwards(modules: Mapping[str, nn.Module], accelerator: Any) -> Callable[[], None]:
    """Under mixed precision, run each module's forward under autocast with float32 outputs
    (a `nn.ModuleList`/`nn.ModuleDict`: each member's); returns the undo."""
    dtype = precision_dtype(accelerator)
    if dtype == torch.float32:
        return lambda: None
    from accelerate.utils import convert_outputs_to_fp32

    patched: list[tuple[nn.Module, Any]] = []

    def patch(module: nn.Module) -> None:
        if isinstance(module, nn.ModuleList | nn.ModuleDict):
            for child in module.children():
                patch(child)
            return
        patched.append((module, module.__dict__.get("forward")))
        autocast = torch.autocast(accelerator.device.type, dtype=dtype)
        module.forward = convert_outputs_to_fp32(autocast(module.forward))

    for module in modules.values():
        patch(module)

    def undo() -> None:
        for module, previous in reversed(patched):
            if previous is None:
                del module.forward
            else:
                module.forward = previous

    return undo


def _register_state_hooks(
    accelerator: Any, trainer: Trainer, container: TrainedModules
) -> list[Any]:
    """Checkpoints hold the modules as the trainer writes them, when it does."""
    modules = dict(container.parts.items())

    def position(models: list) -> int | None:
        for i, model in enumerate(models):
            if accelerator.unwrap_model(model) is container:
                return i
        return None

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        index = position(models)
        if index is None or not accelerator.is_main_process:
            return
        if trainer.save_modules(modules, Path(output_dir)):
            weights.pop(index)

    def load_hook(models: list, input_dir: str) -> None:
        index = position(models)
        if index is not None and trainer.load_modules(modules, Path(input_dir)):
            models.pop(index)

    return [
        accelerator.register_save_state_pre_hook(save_hook),
        accelerator.register_load_state_pre_hook(load_hook),
    ]


def train_loop(
    accelerator: Any,
    trainer: Trainer,
    config: LoopConfig,
    resume_from: Path | None = None,
    on_progress: ProgressCallback | None = None,
) -> LoopResult:
    """Train ``trainer``'s modules for ``config.steps`` steps (see the module docstring),
    resuming from checkpoint ``resume_from`` when given.

    ``accelerator`` comes from `make_accelerator`; the caller builds its frozen models on
    ``accelerator.device`` beforehand and saves the trained modules (in their final layout)
    afterwards, then calls ``accelerator.end_training()``. The main process writes
    ``config.out``'s ``log.jsonl`` and checkpoints; ``train_config.json`` is the caller's
    (`anima.training.start_run`).
    """
    out = Path(config.out)
    accumulation = config.gradient_accumulation_steps
    if accumulation < 1:
        raise ValueError(f"gradient_accumulation_steps must be >= 1, got {accumulation}")
    modules = dict(trainer.modules())
    container = TrainedModules(modules)
    named_params = [(n, p) for n, p in container.named_parameters() if p.requires_grad]
    if not named_params:
        raise ValueError("the trainer's modules have no parameter to train")
    params = [p for _, p in named_params]
    scales: dict[float, list[nn.Parameter]] = {}
    for name, p in named_params:
        scales.setdefault(float(trainer.lr_scale(name.removeprefix("parts."))), []).append(p)
    groups = [{"params": group, "lr_scale": scale} for scale, group in scales.items()]
    optimizer = torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    undo_autocast = _autocast_forwards(modules, accelerator)
    hooks: list[Any] = []
    progress = None
    try:
        accelerator.gradient_accumulation_steps = accumulation
        _set_unused_parameters(accelerator, trainer.find_unused_parameters)
        prepared, optimizer = accelerator.prepare(container, optimizer)
        hooks = _register_state_hooks(accelerator, trainer, container)
        ema = EMA(named_params, config.ema_decay) if config.ema_decay is not None else None
        start = 0
        if resume_from is not None:
            accelerator.load_state(str(resume_from))
            state = checkpoint_state(resume_from)
            start = int(state["step"])
            if ema is not None:
                ema.load(resume_from)
            if int(state.get("num_processes", accelerator.num_processes)) != (
                accelerator.num_processes
            ):
                accelerator.print(
                    "warning: resuming with a different number of processes; the data order "
                    "differs from an uninterrupted run"
                )
        is_main = accelerator.is_main_process
        if is_main:
            out.mkdir(parents=True, exist_ok=True)
            trim_log(out, partial(_kept_on_resume, fields=config.log_fields, step=start))
        lister = config.checkpoints or partial(list_checkpoints, prefix=config.checkpoint_prefix)

        def checkpoint(step: int) -> Path:
            def write_extra(folder: Path) -> None:
                trainer.write_checkpoint(folder)
                if ema is not None:
                    ema.save(folder)

            final = save_checkpoint(
                accelerator,
                out / f"{config.checkpoint_prefix}{step}",
                {**config.log_fields, "step": step, "seed": config.seed},
                write_extra,
            )
            if is_main:
                prune_checkpoints(lister(out), config.checkpoints_total_limit)
            return final

        process = accelerator.process_index
        loader = torch.utils.data.DataLoader(
            _MicroBatches(trainer.batch, process),
            sampler=range(start * accumulation, config.steps * accumulation),
            batch_size=None,
            collate_fn=_keep,
            num_workers=config.num_workers,
            persistent_workers=config.num_workers > 0,
        )
        quiet = config.quiet or not sys.stderr.isatty() or not accelerator.is_local_main_process
        progress = tqdm(
            total=config.steps, initial=start, disable=quiet, desc=config.desc, unit="step"
        )
        result = LoopResult(start, start)
        micro: dict[str, list[Tensor]] = {}
        interval: dict[str, list[float]] = {}
        began = interval_start = time.perf_counter()
        step = start
        container.train()
        accelerator.step = 0  # accelerate's micro-batch counter: step boundaries at multiples
        for index, batch in enumerate(loader, start=start * accumulation):
            with accelerator.accumulate(prepared):
                run = partial(trainer.loss, modules, batch, index, process)
                losses = _named_losses(prepared(run))
                accelerator.backward(losses["loss"])
            for name, value in losses.items():
                micro.setdefault(name, []).append(value.detach().float())
            if not accelerator.sync_gradients:
                continue

            lr = warmup_lr(config.lr, config.lr_warmup_steps, step + 1, config.steps, config.lr_min)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            step += 1
            names = list(micro)
            means = torch.stack([torch.stack(micro[name]).mean() for name in names])
            reduced = accelerator.reduce(means, reduction="mean").tolist()
            values = dict(zip(names, reduced, strict=True))
            micro = {}
            result.step = step
            result.losses.append(values["loss"])
            for name, value in values.items():
                result.named.setdefault(name, []).append(value)
                interval.setdefault(name, []).append(value)
            progress.update()
            progress.set_postfix(loss=f"{values['loss']:.4f}")
            if is_main and on_progress is not None:
                on_progress(step, config.steps, values["loss"])

            if step % config.log_every == 0 or step == config.steps:
                now = time.perf_counter()
                if is_main:
                    count = len(interval["loss"])
                    line = {
                        **config.log_fields,
                        "step": step,
                        "loss": sum(interval["loss"]) / count,
                        "lr": lr,
                        "seconds": (now - interval_start) / count,
                    } | {name: sum(v) / len(v) for name, v in interval.items() if name != "loss"}
                    append_log(out, line)
                interval, interval_start = {}, now
            if step % config.checkpoint_every == 0:
                result.checkpoints.append(checkpoint(step))
            if config.stop_after is not None and step >= config.stop_after:
                result.stopped = True
                break
        progress.close()
        result.seconds = time.perf_counter() - began
        accelerator.wait_for_everyone()
        if ema is not None and not result.stopped:
            ema.copy_to_params()
        return result
    finally:
        if progress is not None:
            progress.close()
        for hook in hooks:
            hook.remove()
        undo_autocast()


def _kept_on_resume(line: dict[str, Any], fields: dict[str, Any], step: int) -> bool:
    """Whether a log line stays when a loop with ``fields`` starts at ``step``: lines of other
    loops (other fields) and up to ``step`` stay."""
    mine = all(line.get(key) == value for key, value in fields.items())
    return not mine or line.get("step", 0) <= step
