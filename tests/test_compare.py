"""`anima compare`: one spec through several methods as one labelled side-by-side video with
the metrics of each beside it; outputs checked before any work (issue 22, part 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES

import anima.eval.compare as compare_module
from anima.cli import main
from anima.eval.grid import band_height, grid_frames, panel_width
from anima.io import read_video

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = EXAMPLES / "rocket_recede.json"
SMALL = ["--frames", "4", "--size", "64", "--steps", "1", "--metrics", "clip_frame,ssim"]


def counting(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = compare_module.run_method

    def run_method(spec, *args, **kwargs):
        calls.append(spec.method)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(compare_module, "run_method", run_method)
    return calls


def only_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_compare_writes_one_labelled_panel_per_method_and_their_metrics(
    tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "grid.mp4"
    out.write_bytes(b"an older grid")  # replaced, as `anima animate -o` replaces a file
    calls = counting(monkeypatch)
    argv = ["compare", str(SPEC), "-o", str(out), "--methods", "levitor", "--weights", "tiny"]
    assert main([*argv, *SMALL, "-q"]) == 0
    assert calls == ["coarse", "levitor"]  # the coarse render first
    frames, fps = read_video(out)
    assert frames.shape[0] == 4 and fps == json.loads(SPEC.read_text())["fps"]
    height = 40  # 640x427 at a longer side of 64: 64x40 (a multiple of 8)
    assert frames.shape[-2] == height + band_height(height)
    assert frames.shape[-1] == 2 * panel_width((height, 64), height)  # one panel a method
    band = frames[:, :, : band_height(height) - 2]
    for left in (0, 64):  # each panel's band holds its label: bright text on black
        assert band[..., left : left + 64].amax() > 0.5
    report = json.loads(out.with_suffix(".json").read_text())
    assert list(report["methods"]) == ["coarse", "levitor"] and report["weights"] == "tiny"
    for entry in report["methods"].values():
        assert entry["frames"] == 4 and entry["size"] == [height, 64]
        assert set(entry["values"]) == {"clip_frame"}
        assert entry["skipped"]["ssim"].startswith("needs --reference")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json", "grid.mp4"]


def test_outputs_and_methods_are_checked_before_any_work(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    calls = counting(monkeypatch)
    folder = tmp_path / "grid.mp4"
    folder.mkdir()
    base = ["compare", str(SPEC), "--weights", "tiny", *SMALL]
    assert main([*base, "-o", str(folder)]) == 2
    assert "not a video file" in only_error_line(capsys)  # an existing folder
    assert main([*base, "-o", str(tmp_path / "frames")]) == 2  # a folder of frames: no grid
    assert "not a video file" in only_error_line(capsys)
    assert main([*base, "-o", str(tmp_path / "g.mp4"), "--methods", "levitor,nope"]) == 2
    assert "unknown method 'nope'" in only_error_line(capsys)
    assert main([*base, "-o", str(tmp_path / "g.mp4"), "--methods", "xdyna"]) == 2
    assert "pose" in only_error_line(capsys)  # a named method that cannot run the spec
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["grid.mp4"]


def test_grid_panels_share_a_height_and_hold_their_last_frame() -> None:
    tall = torch.rand(3, 3, 32, 16)
    wide = torch.rand(5, 3, 16, 48)
    frames = list(grid_frames([("tall", tall), ("wide", wide)]))
    band = band_height(32)
    assert len(frames) == 5
    assert frames[0].shape == (3, 32 + band, 16 + 96)
    assert torch.equal(frames[4][:, band:, :16], frames[2][:, band:, :16])  # held
    assert torch.allclose(frames[0][:, band:, :16], tall[0])
