"""The memory guard (`anima.memory`): a run that cannot fit is refused before any work."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import EXAMPLES

from anima.cli import main
from anima.errors import InputError
from anima.memory import (
    BASE_BYTES,
    CLIP_PIXEL_BYTES,
    ENCODER_FRAME_BYTES,
    MEMORY_LIMIT_ENV,
    POINTS_FRAME_BYTES,
    estimate_spec_peak,
    memory_limit,
    parse_bytes,
)
from anima.spec import load_spec

SPEC = EXAMPLES / "rocket_recede.json"


def test_parse_bytes_reads_plain_and_suffixed_sizes() -> None:
    assert parse_bytes("1234") == 1234
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("1.5 G") == 1_500_000_000
    assert parse_bytes("512mib") == 512 * 2**20
    with pytest.raises(InputError, match=MEMORY_LIMIT_ENV):
        parse_bytes("lots")


def test_limit_comes_from_the_environment_or_meminfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "2GiB")
    assert memory_limit() == (2 * 2**30, f"${MEMORY_LIMIT_ENV}=2GiB")
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "off")
    assert memory_limit()[0] is None
    monkeypatch.delenv(MEMORY_LIMIT_ENV)
    limit, source = memory_limit()
    if Path("/proc/meminfo").is_file():
        assert limit is not None and limit > 0 and "MemAvailable" in source


def test_estimate_grows_with_pixels_and_frames() -> None:
    spec = load_spec(SPEC)
    small = estimate_spec_peak(spec, (512, 512))
    longer = estimate_spec_peak(spec.model_copy(update={"num_frames": 32}), (512, 512))
    larger = estimate_spec_peak(spec, (1024, 1024))
    assert small.total > BASE_BYTES
    # streaming: only the shown points' small render and the encoder's look-ahead grow
    points = 16 * 256 * 256 * POINTS_FRAME_BYTES
    assert longer.total - small.total == points + 16 * 512 * 512 * ENCODER_FRAME_BYTES
    assert larger.total > small.total
    held = estimate_spec_peak(spec, (512, 512), streams=False)
    held_longer = estimate_spec_peak(
        spec.model_copy(update={"num_frames": 32}), (512, 512), streams=False
    )
    assert held_longer.parts["frames"] - held.parts["frames"] == 16 * 512 * 512 * CLIP_PIXEL_BYTES
    # A phone photo at 128 frames, streamed: above the measured peaks (anima's and ffmpeg's,
    # 4.27 GiB together) and within 1.35 times them; the encoder's look-ahead stops growing at
    # 40 frames.
    phone = estimate_spec_peak(spec.model_copy(update={"num_frames": 128}), (3024, 4032))
    assert 4.27 * 2**30 < phone.total < 1.35 * 4.27 * 2**30
    longest = estimate_spec_peak(spec.model_copy(update={"num_frames": 1024}), (3024, 4032))
    assert longest.parts["encoder"] == phone.parts["encoder"]


def test_run_that_cannot_fit_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "200MiB")
    out, dump = tmp_path / "out.mp4", tmp_path / "dump"
    start = time.perf_counter()
    code = main(["animate", str(SPEC), "-o", str(out), "--dump", str(dump), "-q"])
    seconds = time.perf_counter() - start
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: not enough memory"), lines
    assert "200 MiB" not in lines[0] and "0.2 GiB" in lines[0]
    assert "--frames" in lines[0] and "size" in lines[0] and SPEC.name in lines[0]
    assert seconds < 3.0
    assert list(tmp_path.iterdir()) == []


def test_spec_validate_reports_the_guard(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "2GiB")
    assert main(["spec", "validate", str(SPEC), "--frames", "1024"]) == 2
    assert "not enough memory" in capsys.readouterr().err
    assert main(["spec", "validate", str(SPEC)]) == 0


def test_ordinary_small_run_passes_the_guard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)
    out = tmp_path / "out.gif"
    assert main(["animate", str(SPEC), "-o", str(out), "--frames", "3", "-q"]) == 0
    assert out.is_file()
