"""Nothing lost, nothing silent: no temporary folders left behind, no third-party noise on
stderr, one line for float16 on the CPU, and training help readable at 80 columns."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import typer
from conftest import EXAMPLES

from anima import quiet
from anima.cli import app, main
from anima.methods.base import FLOAT16_ON_CPU, run_dtype
from anima.methods.levitor import load_pipeline as load_levitor
from anima.methods.registry import get_method
from anima.weights import Weights

# -- litter ------------------------------------------------------------------------------------


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temp folder pointed at an empty folder of this test's own.

    Importing diffusers imports ``torch._dynamo``, which makes torch's compile cache folder
    (``torchinductor_<user>``, one a user, not a run's) in the temp folder: imported first."""
    import diffusers.utils.torch_utils  # noqa: F401

    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_tiny_tokenizer_leaves_no_folder(private_tmp: Path) -> None:
    from anima.models.tiny_sd import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    ids = tokenizer("a dancer", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tokenizer.bos_token_id
    assert list(private_tmp.iterdir()) == []


def test_tiny_tokenizer_folder_removed_when_loading_is_interrupted(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anima.models import tiny_sd

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_sd, "CLIPTokenizer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_sd.tiny_tokenizer()
    assert list(private_tmp.iterdir()) == []


def test_tiny_tokenizer_given_folder_keeps_its_files(tmp_path: Path, private_tmp: Path) -> None:
    from anima.models.tiny_sd import tiny_tokenizer

    tiny_tokenizer(tmp_path / "tok")
    assert {p.name for p in (tmp_path / "tok").iterdir()} == {"vocab.json", "merges.txt"}
    assert list(private_tmp.iterdir()) == []


def test_tiny_xdyna_models_leave_no_folder(private_tmp: Path) -> None:
    from anima.methods.xdyna.loading import tiny_xdyna_components

    components = tiny_xdyna_components(seed=0)
    assert components["tokenizer"] is not None
    assert list(private_tmp.iterdir()) == []


# -- third-party noise -------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def diffusers_records():
    """Records that reach handlers of diffusers' model logger (after its filters)."""
    logger = logging.getLogger("diffusers.models.modeling_utils")
    records = _Records()
    logger.addHandler(records)
    yield records
    logger.removeHandler(records)


def test_install_is_idempotent() -> None:
    quiet.install()
    quiet.install()
    for name, text in quiet.DROPPED:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, quiet.DropMessage) and f.text == text for f in filters) == 1


def test_empty_keep_in_float32_warning_is_dropped_others_pass(diffusers_records) -> None:
    from anima.models.tiny import tiny_svd_components

    vae = tiny_svd_components(seed=0)["vae"]
    vae.to(dtype=torch.bfloat16)  # diffusers warns "... kept in float32: []." on every cast
    assert vae.dtype == torch.bfloat16
    logger = logging.getLogger("diffusers.models.modeling_utils")
    logger.warning("There are modules in X that should be kept in float32: ['norm'].")
    logger.warning("something else")
    assert diffusers_records.messages == [
        "There are modules in X that should be kept in float32: ['norm'].",
        "something else",
    ]


def test_torchvision_fallback_warning_is_dropped() -> None:
    logger = logging.getLogger("transformers.utils.import_utils")
    records = _Records()
    logger.addHandler(records)
    try:
        logger.warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to "
            "`CLIPImageProcessorPil` for backward compatibility."
        )
        logger.warning("another warning")
    finally:
        logger.removeHandler(records)
    assert records.messages == ["another warning"]


def test_loading_the_pipelines_prints_nothing() -> None:
    """A fresh interpreter importing both diffusers pipelines (where transformers warns that
    torchvision is missing) and building a tiny LeviTor pipeline in bfloat16 prints nothing."""
    code = (
        "import torch\n"
        "from anima.methods.xdyna.pipeline import XDynaPipeline\n"
        "from anima.methods.levitor import load_pipeline\n"
        "from anima.weights import Weights\n"
        "load_pipeline(Weights(builtin='tiny'), torch.device('cpu'), torch.bfloat16)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""


# -- float16 on the CPU ------------------------------------------------------------------------


def test_float16_on_the_cpu_runs_in_float32_with_one_warning() -> None:
    with pytest.warns(UserWarning) as caught:
        assert run_dtype(torch.device("cpu"), torch.float16) == torch.float32
    assert [str(w.message) for w in caught] == [FLOAT16_ON_CPU]


@pytest.mark.parametrize(
    ("device", "dtype"),
    [
        ("cpu", torch.bfloat16),
        ("cpu", torch.float32),
        ("cuda", torch.float16),
        ("mps", torch.float16),
    ],
)
def test_other_dtypes_run_as_asked(device: str, dtype: torch.dtype) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_dtype(torch.device(device), dtype) == dtype


def test_every_method_applies_the_rule() -> None:
    cls = get_method("coarse")
    options = cls.parse_options({})
    with pytest.warns(UserWarning, match="float16 is not supported on the CPU"):
        method = cls(options, Weights(), torch.device("cpu"), torch.float16)
    assert method.dtype == torch.float32


def test_cli_float16_on_cpu_prints_one_warning_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = json.loads((EXAMPLES / "astronaut_behind.json").read_text())
    data["image"] = str((EXAMPLES / data["image"]).resolve())
    data |= {"num_frames": 2, "options": {"num_inference_steps": 1, "size": [64, 64]}}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(data))
    out = tmp_path / "out.mp4"
    load_levitor.cache_clear()
    try:
        with warnings.catch_warnings():
            # as outside pytest: libraries' DeprecationWarnings hidden (numpy 2 and diffusers')
            warnings.simplefilter("ignore", DeprecationWarning)
            argv = ["animate", str(spec), "--method", "levitor", "--weights", "tiny"]
            code = main([*argv, "--dtype", "float16", "-q", "-o", str(out)])
    finally:
        load_levitor.cache_clear()
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert out.is_file()
    assert captured.err.splitlines() == [f"warning: {FLOAT16_ON_CPU}"]


# -- help at 80 columns ------------------------------------------------------------------------


def _commands(group, path: tuple[str, ...]):
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


SUB_APPS = ("train", "eval", "world")


@pytest.mark.parametrize(
    ("path", "command"),
    [
        pytest.param(path, command, id=" ".join(path))
        for sub in SUB_APPS
        for path, command in _commands(
            typer.main.get_command(app).commands[sub],  # type: ignore[attr-defined]
            (sub,),
        )
    ],
)
def test_help_at_80_columns_names_every_option_in_full(
    path: tuple[str, ...],
    command,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    assert main([*path, "--help"]) == 0
    text = capsys.readouterr().out
    names = [name for param in command.params for name in (*param.opts, *param.secondary_opts)]
    assert names
    for name in names:
        assert name in text, f"{name} missing from `anima {' '.join(path)} --help`"
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
