"""`anima eval levitor --toy`: the report's shape, seeds apart from training, input errors."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
import typer

from anima.cli_eval import eval_app
from anima.errors import InputError
from anima.eval.levitor import (
    METRICS,
    VARIANTS,
    eval_clip_seed,
    plan_variants,
)
from anima.weights import Weights
from anima.world.writer import clip_seed


def run(argv: list[str]) -> int:
    """The eval sub-app with the exit-status mapping of `anima.cli.main`."""
    app = typer.Typer()
    app.add_typer(eval_app, name="eval")
    try:
        app(args=argv, standalone_mode=False, prog_name="anima")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


@pytest.fixture
def one_thread():
    """The CPU is shared: two threads fighting one core are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_eval_writes_table_and_json(tmp_path, capsys, one_thread) -> None:
    out = tmp_path / "eval.json"
    argv = ["eval", "levitor", "--toy", "--n", "2", "--seed", "7", "--weights", "tiny"]
    assert run([*argv, "--steps", "2", "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for row in ("first_frame", *VARIANTS):
        assert row in printed
    assert "ObjMC" in printed and "PSNR" in printed
    report = json.loads(out.read_text())
    assert set(report["variants"]) == set(VARIANTS)
    rows = {**report["variants"], **report["reference"]}
    assert set(rows) == {*VARIANTS, "first_frame"}
    for values in rows.values():
        assert set(values) == set(METRICS)
        for value in values.values():
            assert value is None or (isinstance(value, float) and math.isfinite(value))
    assert report["settings"]["n"] == 2 and report["settings"]["steps"] == 2
    assert len(report["per_clip"]) == 2 and "machine" in report
    seeds = [clip["seed"] for clip in report["per_clip"]]
    assert seeds == [eval_clip_seed(7, i) for i in range(2)]
    # The repeated first frame matches the truth at frame 0 at least: a high PSNR bound.
    assert report["reference"]["first_frame"]["psnr"] > 0


def test_eval_clips_differ_from_training_clips() -> None:
    training = {clip_seed(s, i) for s in range(4) for i in range(50)}
    evaluation = {eval_clip_seed(s, i) for s in (0, 1, 2, 3, 1_000_003) for i in range(50)}
    assert not training & evaluation
    assert eval_clip_seed(0, 0) != clip_seed(0, 0)


def test_toy_weights_missing_is_a_one_line_error(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr("anima.weights.packaged_toy_dir", lambda: tmp_path)
    assert run(["eval", "levitor", "--toy", "--n", "1", "--weights", "toy"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "toy weights" in error and "\n" not in error


@pytest.mark.parametrize("bad", [["--n", "0"], ["--n", "-3"], ["--steps", "0"], ["--size", "7"]])
def test_bad_options_exit_2(bad, capsys) -> None:
    assert run(["eval", "levitor", "--toy", "--weights", "tiny", *bad]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_not_toy_is_an_input_error() -> None:
    assert run(["eval", "levitor", "--weights", "tiny"]) == 2


def test_variant_plan_from_a_directory(tmp_path) -> None:
    (tmp_path / "svd").mkdir()
    (tmp_path / "svd" / "model_index.json").write_text("{}")
    with pytest.raises(InputError, match="no LeviTor ControlNet"):
        plan_variants(Weights(root=tmp_path))
    for sub in ("levitor", "levitor-no_depth"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "config.json").write_text("{}")
    plan = plan_variants(Weights.resolve(str(tmp_path)))
    assert list(plan.present) == ["base", "full", "no_depth"]
    assert plan.present["base"] == tmp_path / "levitor"
    assert set(plan.skipped) == {"single_point", "no_instance"}
    assert plan_variants(Weights(builtin="tiny")).skipped == {}
