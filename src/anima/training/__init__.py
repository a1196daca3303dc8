"""Training, shared by every ``anima train`` method.

- `anima.training.loop`: the one training loop (`train_loop`) a method's `Trainer` runs on, with
  its `LoopConfig`, `make_accelerator`, `step_generator` and `warmup_lr`;
- `anima.training.files`: a run directory (``train_config.json``, ``log.jsonl``,
  ``checkpoint-*/``);
- `anima.training.options`: training configs whose fields are also CLI options (`Flag`,
  `RunConfig`);
- `anima.training.edm`: the EDM objective of SVD networks (`epsilon_loss`, `StepNoise`, ...).

Importing this package loads no model library (the CLI imports it on every start).
"""

from anima.training.files import (
    CHECKPOINT_PREFIX,
    CONFIG_FILE,
    LOG_FILE,
    STATE_FILE,
    checked_checkpoint,
    checkpoint_state,
    list_checkpoints,
    loss_history,
    prune_checkpoints,
    read_record,
    resolve_resume,
    resume_or_fresh,
    save_checkpoint,
    start_run,
    trim_log,
    write_json,
)
from anima.training.loop import (
    EMA,
    LoopConfig,
    LoopResult,
    Losses,
    ProgressCallback,
    TrainedModules,
    Trainer,
    make_accelerator,
    precision_dtype,
    step_generator,
    train_loop,
    warmup_lr,
)
from anima.training.options import SIZE_FLAG, Flag, RunConfig, TrainingSize, field_flag

__all__ = [
    "CHECKPOINT_PREFIX",
    "CONFIG_FILE",
    "EMA",
    "LOG_FILE",
    "SIZE_FLAG",
    "STATE_FILE",
    "Flag",
    "LoopConfig",
    "LoopResult",
    "Losses",
    "ProgressCallback",
    "RunConfig",
    "TrainedModules",
    "Trainer",
    "TrainingSize",
    "checked_checkpoint",
    "checkpoint_state",
    "field_flag",
    "list_checkpoints",
    "loss_history",
    "make_accelerator",
    "precision_dtype",
    "prune_checkpoints",
    "read_record",
    "resolve_resume",
    "resume_or_fresh",
    "save_checkpoint",
    "start_run",
    "step_generator",
    "train_loop",
    "trim_log",
    "warmup_lr",
    "write_json",
]
