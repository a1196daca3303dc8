"""The one training loop (`anima.training.train_loop`) on a tiny MLP, and the training options
the CLI builds from the configs.

The MLP regresses a fixed random linear map; micro-batch ``i`` of process ``p`` is block
``i * P + p`` of a fixed table of rows (``P`` processes), so one step of ``P`` processes x
``A`` micro-batches x ``b`` rows sees the same rows as one process with one batch of
``P * A * b`` rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import load_file
from torch import Tensor, nn

from anima.cli import main
from anima.cli_train import train_app
from anima.errors import InputError
from anima.methods.levitor.train import TrainConfig
from anima.methods.xdyna.train import XDynaTrainConfig
from anima.training import (
    LoopConfig,
    Trainer,
    field_flag,
    list_checkpoints,
    loss_history,
    make_accelerator,
    train_loop,
)
from anima.world.svd_base.train import BaseTrainConfig

TESTS = Path(__file__).parent
ROWS = torch.randn(4096, 4, generator=torch.Generator().manual_seed(0))
TARGET = ROWS @ torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
Batch = tuple[Tensor, Tensor]


pytestmark = pytest.mark.usefixtures("one_thread")


class Regression(Trainer):
    """A tiny MLP fitting ``TARGET``: micro-batch ``i`` of ``process`` is block
    ``i * processes + process`` of ``rows`` rows. The loss is two named terms (their sum is
    optimised)."""

    def __init__(self, rows: int, processes: int = 1, seed: int = 0) -> None:
        self.rows, self.processes = rows, processes
        generator = torch.Generator().manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

    def modules(self) -> dict[str, nn.Module]:
        return {"mlp": self.model}

    def batch(self, index: int, process: int) -> Batch:
        start = (index * self.processes + process) * self.rows % len(ROWS)
        return ROWS[start : start + self.rows], TARGET[start : start + self.rows]

    def loss(
        self,
        modules: Mapping[str, nn.Module],
        batch: tuple[Tensor, Tensor],
        index: int,
        process: int,
    ) -> dict[str, Tensor]:
        x, y = batch
        error = modules["mlp"](x) - y
        return {"mse": (error**2).mean(), "l1": 0.1 * error.abs().mean()}


def loop_config(out: Path, **overrides) -> LoopConfig:
    settings = dict(
        out=out,
        steps=6,
        lr=3e-2,
        lr_warmup_steps=2,
        lr_min=1e-3,
        max_grad_norm=0.5,
        checkpoint_every=2,
        log_every=1,
        quiet=True,
    )
    return LoopConfig(**(settings | overrides))


def run(out: Path, trainer: Trainer | None = None, resume: Path | None = None, **overrides):
    trainer = trainer or Regression(rows=8)
    accelerator = make_accelerator(out)
    result = train_loop(accelerator, trainer, loop_config(out, **overrides), resume)
    accelerator.end_training()
    return trainer, result


def weights(trainer: Regression) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def without_seconds(out: Path) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "seconds"} for line in loss_history(out)]


# ------------------------------------------------------------------------------ the loop


def test_accumulating_two_micro_batches_matches_one_batch_twice_as_large(tmp_path) -> None:
    accumulated, a = run(tmp_path / "a", Regression(rows=8), gradient_accumulation_steps=2)
    single, b = run(tmp_path / "b", Regression(rows=16))
    assert len(a.losses) == len(b.losses) == 6
    assert a.losses == pytest.approx(b.losses, rel=1e-5)
    first, second = weights(accumulated), weights(single)
    assert all(torch.allclose(first[k], second[k], atol=1e-6) for k in first)
    start = weights(Regression(rows=8))
    assert not any(torch.allclose(first[k], start[k], atol=1e-3) for k in first)  # it trained


def test_every_named_loss_is_logged_and_their_sum_optimised(tmp_path) -> None:
    _, result = run(tmp_path, steps=4, log_every=2)
    log = loss_history(tmp_path)
    assert [line["step"] for line in log] == [2, 4]
    assert list(log[0]) == ["step", "loss", "lr", "seconds", "mse", "l1"]
    for line in log:
        assert line["loss"] == pytest.approx(line["mse"] + line["l1"], rel=1e-6)
    assert result.named["loss"] == result.losses
    assert log[-1]["lr"] == pytest.approx(1e-3)  # the cosine ends at lr_min


def test_resume_after_a_kill_is_bit_exact_and_logs_each_step_once(tmp_path) -> None:
    settings = dict(ema_decay=0.8, checkpoints_total_limit=2)
    whole, full = run(tmp_path / "whole", **settings)
    out = tmp_path / "killed"
    _, first = run(out, stop_after=5, **settings)  # killed after step 5; checkpoint-4 is newest
    assert first.stopped and first.losses == full.losses[:5]
    assert [line["step"] for line in loss_history(out)] == [1, 2, 3, 4, 5]
    assert list_checkpoints(out) == [out / "checkpoint-2", out / "checkpoint-4"]
    resumed_trainer, resumed = run(out, resume=out / "checkpoint-4", **settings)
    assert resumed.start_step == 4 and resumed.losses == full.losses[4:]
    assert without_seconds(out) == without_seconds(tmp_path / "whole")
    assert [line["step"] for line in loss_history(out)] == [1, 2, 3, 4, 5, 6]
    expected, actual = weights(whole), weights(resumed_trainer)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert list_checkpoints(out) == [out / "checkpoint-4", out / "checkpoint-6"]
    assert (out / "checkpoint-6" / "ema.safetensors").is_file()


def test_ema_weights_are_what_the_modules_hold_at_the_end(tmp_path) -> None:
    plain, _ = run(tmp_path / "plain", steps=3)
    averaged, _ = run(tmp_path / "ema", steps=3, ema_decay=0.5)
    start = weights(Regression(rows=8))
    first, second = weights(plain), weights(averaged)
    for key in start:  # the average lies between the start and the last weights
        assert not torch.equal(first[key], second[key])
        assert (second[key] - start[key]).abs().sum() < (first[key] - start[key]).abs().sum()


class AutocastProbe(Regression):
    """Records whether autocast is on inside the trained module and around it."""

    def __init__(self) -> None:
        super().__init__(rows=8)
        self.inside: list[torch.dtype | None] = []
        self.outside: list[bool] = []
        layer = self.model[0]  # inside the trained module's forward
        layer.register_forward_pre_hook(lambda *_: self.inside.append(self._autocast()))

    @staticmethod
    def _autocast() -> torch.dtype | None:
        on = torch.is_autocast_enabled("cpu")
        return torch.get_autocast_dtype("cpu") if on else None

    def loss(self, modules, batch, index, process):
        self.outside.append(torch.is_autocast_enabled("cpu"))
        losses = super().loss(modules, batch, index, process)
        assert all(v.dtype == torch.float32 for v in losses.values())  # outputs cast back
        return losses


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one mixed-precision setting a process; this test needs its own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_mixed_precision_autocasts_the_trained_modules_only(
    tmp_path, fresh_accelerator_state
) -> None:
    probe = AutocastProbe()
    accelerator = make_accelerator(tmp_path, "bf16")
    train_loop(accelerator, probe, loop_config(tmp_path, steps=2))
    accelerator.end_training()
    assert probe.inside == [torch.bfloat16] * 2 and probe.outside == [False] * 2
    assert "forward" not in probe.model.__dict__  # the autocast wrapper is removed afterwards


DDP_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
from test_training_loop import Regression, loop_config
from anima.training import make_accelerator, train_loop

torch.set_num_threads(1)
out = Path(sys.argv[1])
accelerator = make_accelerator(out)
trainer = Regression(rows=4, processes=accelerator.num_processes)
result = train_loop(accelerator, trainer, loop_config(out, gradient_accumulation_steps=2))
if accelerator.is_main_process:
    save_file(trainer.model.state_dict(), str(out / "weights.safetensors"))
    (out / "losses.json").write_text(json.dumps(result.losses))
accelerator.end_training()
"""


def test_two_cpu_processes_under_torchrun_match_one_process(tmp_path) -> None:
    """DDP: 2 processes x 2 accumulated micro-batches x 4 rows == 1 process x 16 rows."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(TESTS)))
    out = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)]
        + [str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    single, result = run(tmp_path / "single", Regression(rows=16))
    assert json.loads((out / "losses.json").read_text()) == pytest.approx(result.losses, rel=1e-5)
    distributed = load_file(str(out / "weights.safetensors"))
    assert all(torch.allclose(distributed[k], v, atol=1e-6) for k, v in weights(single).items())
    assert [line["step"] for line in loss_history(out)] == list(range(1, 7))  # main process only


# ------------------------------------------------------------------------------ the options


COMMANDS = {"levitor": TrainConfig, "svd-base": BaseTrainConfig, "xdyna": XDynaTrainConfig}


@pytest.mark.parametrize("name", COMMANDS)
def test_options_are_the_configs_flagged_fields_with_their_defaults(name: str) -> None:
    model = COMMANDS[name]
    command = typer.main.get_command(train_app).commands[name]  # type: ignore[attr-defined]
    params = {param.name: param for param in command.params}
    for field, info in model.model_fields.items():
        flag = field_flag(model, field)
        if flag is None:
            assert field not in params
        elif flag.items:
            assert [params[d.lstrip("-")].default for d in flag.items] == list(info.default)
        elif info.is_required():
            assert params[field].required, field
        else:
            assert params[field].default == info.default, field
            assert info.description and params[field].help == info.description
    assert {"height", "width", "quiet", "resume", "checkpoint_every"} <= set(params)


def test_option_errors_name_the_option(tmp_path, capsys) -> None:
    argv = ["train", "levitor", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "-q"]
    for extra, named in [
        (["--steps", "0"], "--steps"),
        (["--mixed-precision", "fp8"], "--mixed-precision"),
        (["--width", "60"], "--height/--width"),
        (["--lr-min", "-1"], "--lr-min"),
    ]:
        assert main([*argv, *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and named in error, error
    with pytest.raises(InputError, match="--stage"):
        typer.main.get_command(train_app).main(  # type: ignore[attr-defined]
            ["xdyna", "--data", str(tmp_path), "--out", str(tmp_path), "--stage", "dance"],
            standalone_mode=False,
        )


def test_the_cli_imports_no_model_library() -> None:
    """The training configs behind ``anima train``'s options load on every start: they must not
    pull in diffusers (seconds of start-up)."""
    code = "import sys, anima.cli; print('diffusers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
