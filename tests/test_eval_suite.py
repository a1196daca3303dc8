"""`anima eval suite`: a suite of specs x methods on tiny weights, scored into a table, resumed
after an interruption without regenerating finished cases; bad suites are one error line with
nothing written; every shipped suite passes its checks (issue 22, part 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES
from safetensors.torch import load_file

import anima.eval.suite as suite_module
from anima.cli import main
from anima.eval.suite import load_suite, plan_suite, run_suite, suite_weights
from anima.eval.video import frechet_scores
from anima.io import read_video, write_video

pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = ("rocket_recede.json", "astronaut_behind.json", "coffee_dolly.json")
METRICS = ["psnr", "ssim", "clip_frame"]


def write_suite(folder: Path, **changes) -> Path:
    """3 example specs x (coarse, levitor) at 4 frames, 64 px, 1 step, on tiny weights."""
    data = {
        "name": "tiny suite",
        "methods": ["coarse", "levitor"],
        "weights": "tiny",
        "metrics": METRICS,
        "overrides": {"frames": 4, "size": 64, "steps": 1},
        "cases": [{"spec": str(EXAMPLES / name)} for name in SPECS],
    } | changes
    path = folder / "suite.json"
    path.write_text(json.dumps(data))
    return path


def counting(monkeypatch, interrupt_at: int | None = None) -> list[tuple[str, str]]:
    """Record each generation (the case's image and method); raise KeyboardInterrupt when
    generation number ``interrupt_at`` (1-based) starts."""
    calls: list[tuple[str, str]] = []
    real = suite_module.run_method

    def run_method(spec, *args, **kwargs):
        calls.append((Path(spec.where.removeprefix("in ")).stem, spec.method))
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(suite_module, "run_method", run_method)
    return calls


def only_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_an_interrupted_suite_resumes_without_regenerating_finished_cases(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    # two cases with a reference video (at the working size 64 px gives): FID pools both
    write_video(tmp_path / "rocket.mp4", torch.rand(4, 3, 40, 64), 8)
    write_video(tmp_path / "astronaut.mp4", torch.rand(4, 3, 64, 64), 8)
    cases = [{"spec": str(EXAMPLES / name)} for name in SPECS]
    cases[0]["reference"], cases[1]["reference"] = "rocket.mp4", "astronaut.mp4"
    path = write_suite(tmp_path, cases=cases, metrics=[*METRICS, "fid"])
    out = tmp_path / "out"
    suite = load_suite(path)
    weights = suite_weights(suite, None)
    jobs = plan_suite(suite, weights, out)
    assert [(j.case, j.method) for j in jobs][:3] == [
        ("rocket_recede", "coarse"),
        ("astronaut_behind", "coarse"),
        ("coffee_dolly", "coarse"),
    ]
    # interrupted while generating the second case: the first is finished, nothing else left
    calls = counting(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, jobs, weights, out)
    assert calls == [("rocket_recede", "coarse"), ("astronaut_behind", "coarse")]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        "scores/rocket_recede/coarse.features.safetensors",
        "scores/rocket_recede/coarse.json",
        "videos/rocket_recede/coarse.mp4",
    ]
    first_video = out / "videos" / "rocket_recede" / "coarse.mp4"
    stamp = first_video.stat().st_mtime_ns

    # resumed from the command line: the five others run, the finished one is not regenerated
    monkeypatch.undo()
    calls = counting(monkeypatch)
    assert main(["eval", "suite", str(path), "--out", str(out), "-q"]) == 0
    assert len(calls) == 5 and ("rocket_recede", "coarse") not in calls
    assert first_video.stat().st_mtime_ns == stamp
    table = json.loads((out / "table.json").read_text())
    assert list(table["methods"]) == ["coarse", "levitor"] and table["cases"] == 3
    assert table["columns"] == ["psnr", "ssim", "fid", "clip_frame"]
    assert table["counts"]["levitor"] == {"psnr": 2, "ssim": 2, "clip_frame": 3, "fid": 2}
    # FID over the features of both cases with a reference (one stored before the interrupt)
    pooled = [
        {side: load_file(out / "scores" / case / "coarse.features.safetensors")[f"fid/{side}"]
         for side in ("generated", "reference")}
        for case in ("rocket_recede", "astronaut_behind")
    ]  # fmt: skip
    expected = frechet_scores({"fid": pooled})["fid"]
    assert table["methods"]["coarse"]["fid"] == pytest.approx(expected)
    csv = (out / "table.csv").read_text().splitlines()
    assert csv[0] == "method,psnr,ssim,fid,clip_frame" and csv[1].startswith("coarse,")
    for case in ("rocket_recede", "astronaut_behind", "coffee_dolly"):
        for method in ("coarse", "levitor"):
            frames, _fps = read_video(out / "videos" / case / f"{method}.mp4")
            assert frames.shape[0] == 4 and max(frames.shape[-2:]) == 64
            score = json.loads((out / "scores" / case / f"{method}.json").read_text())
            assert score["frames"] == 4 and 0 < score["values"]["clip_frame"] <= 1.0001
    assert "levitor" in capsys.readouterr().out  # the table, printed

    # a third run regenerates nothing
    calls.clear()
    assert main(["eval", "suite", str(path), "--out", str(out), "-q"]) == 0
    assert calls == []
    assert not [p for p in out.rglob(".anima-*")]


def test_a_changed_input_runs_its_cases_again(tmp_path: Path, monkeypatch) -> None:
    spec = json.loads((EXAMPLES / "rocket_recede.json").read_text())
    spec["image"] = str(EXAMPLES / spec["image"])
    spec_path = tmp_path / "rocket.json"
    spec_path.write_text(json.dumps(spec))
    path = write_suite(tmp_path, methods=["coarse"], cases=[{"spec": str(spec_path)}])
    argv = ["eval", "suite", str(path), "--out", str(tmp_path / "out"), "-q"]
    calls = counting(monkeypatch)
    assert main(argv) == 0 and len(calls) == 1
    assert main(argv) == 0 and len(calls) == 1  # finished
    spec["prompt"] = "another prompt"
    spec_path.write_text(json.dumps(spec))
    assert main(argv) == 0 and len(calls) == 2  # the spec changed: run again


def test_a_suite_naming_a_missing_spec_is_one_error_and_writes_nothing(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    cases = [{"spec": str(EXAMPLES / SPECS[0])}, {"spec": "nowhere/missing.json"}]
    path = write_suite(tmp_path, cases=cases)
    calls = counting(monkeypatch)
    out = tmp_path / "out"
    assert main(["eval", "suite", str(path), "--out", str(out)]) == 2
    line = only_error_line(capsys)
    assert "missing.json" in line and "cases[1].spec" in line and str(path) in line
    assert calls == [] and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.json"]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"methods": []}, ["methods"]),
        ({"methods": ["coarse", "nope"]}, ["unknown method 'nope'", "methods[1]"]),
        ({"metrics": ["psnr", "fidd"]}, ["unknown metric 'fidd'", "metrics[1]"]),
        ({"overrides": {"frames": 1}}, ["overrides.frames"]),
        ({"colour": "red"}, ["colour"]),
        ({"cases": [{"spec": str(EXAMPLES / SPECS[0]), "reference": "no.mp4"}]},
         ["cases[0].reference"]),
        ({"options": {"anyi2v": {}}}, ["options", "anyi2v"]),
        ({"options": {"levitor": {"fps": 0}}}, ["options.fps", "cases[0] with method levitor"]),
    ],
)  # fmt: skip
def test_a_bad_suite_is_one_line_naming_the_field_and_file(
    tmp_path: Path, capsys, changes: dict, words: list[str]
) -> None:
    path = write_suite(tmp_path, **changes)
    out = tmp_path / "out"
    assert main(["eval", "suite", str(path), "--out", str(out)]) == 2
    line = only_error_line(capsys)
    for word in [*words, str(path)]:
        assert word in line, line
    assert not out.exists()


def test_every_shipped_suite_passes_its_checks_on_tiny_weights(tmp_path: Path) -> None:
    suites = sorted((EXAMPLES / "suites").glob("*.json"))
    names = {path.stem for path in suites}
    assert {"levitor", "anyi2v", "i2v3d", "xdyna", "animate124"} <= names
    for path in suites:
        suite = load_suite(path)
        jobs = plan_suite(suite, suite_weights(suite, "tiny"), tmp_path / path.stem)
        assert {job.method for job in jobs} >= {path.stem}
        assert len(jobs) == len(suite.file.methods) * len(suite.file.cases)
