"""The CLI's promises: nothing the user had is lost, nothing is checked too late, nothing is left
behind by an interruption, and every bad output path is one `error:` line and exit status 2."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anima.cli import main
from anima.io import MANIFEST_NAME, read_video


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with a hash of its bytes."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def small_spec(folder: Path, name: str = "spec", **changes) -> Path:
    """A 48x64 photo with one box moving right: renders in a fraction of a second."""
    rng = np.random.default_rng(0)
    photo = folder / "photo.png"
    if not photo.exists():
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(photo)
        np.save(folder / "depth.npy", np.full((48, 64), 5.0, np.float32))
    data = {
        "version": 1,
        "image": "photo.png",
        "depth": "depth.npy",
        "num_frames": 4,
        "objects": [
            {
                "id": 1,
                "box": [20, 18, 36, 40],
                "trajectory": [
                    {"t": 0, "x": 28, "y": 30, "depth": 5},
                    {"t": 1, "x": 40, "y": 30, "depth": 5},
                ],
            }
        ],
    } | changes
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def user_folder(path: Path) -> dict[str, str]:
    """A folder holding what a user keeps: a spec, a photo, notes, a subfolder."""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    (path / "sub" / "keep.bin").write_bytes(b"\x00\x01")
    return snapshot(path)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    status = main(argv)
    return status, capsys.readouterr().err.strip()


def one_error_line(err: str) -> bool:
    return err.startswith("error: ") and "\n" not in err and "Traceback" not in err


# --------------------------------------------------------------------------- nothing lost


def test_an_existing_folder_is_written_into_for_one_spec(tmp_path: Path, capsys) -> None:
    spec = small_spec(tmp_path)
    out, dump = tmp_path / "out", tmp_path / "dump"
    before_out, before_dump = user_folder(out), user_folder(dump)
    status, err = run_cli(["animate", str(spec), "-o", str(out), "--dump", str(dump), "-q"], capsys)
    assert status == 0, err
    after_out, after_dump = snapshot(out), snapshot(dump)
    assert all(after_out[name] == digest for name, digest in before_out.items())
    assert all(after_dump[name] == digest for name, digest in before_dump.items())
    assert {f"{i:04d}.png" for i in range(4)} <= set(after_out)
    assert {"frames/0003.png", "render/depth.npy", "spec.resolved.json"} <= set(after_dump)
    # run again, shorter: anima's own files from the first run go, the user's stay
    status, err = run_cli(
        ["animate", str(spec), "-o", str(out), "--dump", str(dump), "--frames", "2", "-q"],
        capsys,
    )
    assert status == 0, err
    assert set(snapshot(out)) == set(before_out) | {"0000.png", "0001.png", MANIFEST_NAME}
    assert not (dump / "frames" / "0002.png").exists()
    assert all(snapshot(dump)[name] == digest for name, digest in before_dump.items())


def test_an_existing_folder_is_written_into_for_several_specs(tmp_path: Path, capsys) -> None:
    specs = [small_spec(tmp_path, name) for name in ("a", "b")]
    out, dump = tmp_path / "out", tmp_path / "dump"
    before_out, before_dump = user_folder(out), user_folder(dump)
    argv = ["animate", *map(str, specs), "-o", str(out), "--dump", str(dump), "-q"]
    status, err = run_cli(argv, capsys)
    assert status == 0, err
    after_out, after_dump = snapshot(out), snapshot(dump)
    assert all(after_out[name] == digest for name, digest in before_out.items())
    assert all(after_dump[name] == digest for name, digest in before_dump.items())
    assert {"a.mp4", "b.mp4"} <= set(after_out)
    assert {"a/frames/0000.png", "b/spec.resolved.json"} <= set(after_dump)


def test_a_file_is_never_turned_into_a_folder(tmp_path: Path, capsys) -> None:
    spec = small_spec(tmp_path)
    plain = tmp_path / "plainfile"
    plain.write_text("keep me")
    for argv in (
        ["animate", str(spec), "-o", str(plain)],
        ["animate", str(spec), "-o", str(tmp_path / "v.mp4"), "--dump", str(plain)],
    ):
        status, err = run_cli(argv, capsys)
        assert status == 2 and one_error_line(err), (argv, err)
        assert "is a file" in err
        assert plain.read_text() == "keep me" and not (tmp_path / "v.mp4").exists()


def test_video_and_dump_must_not_share_a_folder(tmp_path: Path, capsys) -> None:
    spec = small_spec(tmp_path)
    folder = tmp_path / "both"
    before = user_folder(folder)
    for dump in (folder, folder / "inner"):
        status, err = run_cli(
            ["animate", str(spec), "-o", str(folder), "--dump", str(dump)], capsys
        )
        assert status == 2 and one_error_line(err), err
        assert snapshot(folder) == before


def test_o_dot_writes_into_the_current_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    spec = small_spec(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    status, err = run_cli(["animate", str(spec), "-o", ".", "-q"], capsys)
    assert status == 0, err
    after = snapshot(tmp_path)
    assert all(after[name] == digest for name, digest in before.items())
    assert "0003.png" in after


# --------------------------------------------------------------------------- checked first


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder nobody may write in: a chmod-ed one, or (as root, whom permission bits do not
    stop) /sys, mounted read-only in containers."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:
        handle, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(handle)
    os.unlink(probe)
    pytest.skip("no read-only folder on this machine")


def test_bad_output_paths_fail_at_once(tmp_path: Path, capsys) -> None:
    long_spec = small_spec(tmp_path, "long", num_frames=1024)  # minutes of work if it ran
    read_only = _read_only_folder(tmp_path)
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("x")
    outputs = {
        "read-only folder": ["-o", str(read_only / "out.mp4")],
        "missing parent under a read-only folder": ["-o", str(read_only / "new" / "out.mp4")],
        "parent is a file": ["-o", str(a_file / "out.mp4")],
        "name too long": ["-o", str(tmp_path / ("n" * 300 + ".mp4"))],
        "dump under a file": ["-o", str(tmp_path / "v.mp4"), "--dump", str(a_file / "d")],
        "dump in a read-only folder": ["-o", str(tmp_path / "v.mp4"), "--dump", str(read_only)],
        "a folder named like a video": ["-o", str(tmp_path)],
    }
    (tmp_path / "taken.mp4").mkdir()
    outputs["a folder named like a video"] = ["-o", str(tmp_path / "taken.mp4"), "--frames", "3"]
    before = snapshot(tmp_path)
    for case, args in outputs.items():
        start = time.perf_counter()
        status, err = run_cli(["animate", str(long_spec), *args], capsys)
        seconds = time.perf_counter() - start
        if case == "a folder named like a video":  # an existing folder takes the frames
            assert status == 0, err
            continue
        assert status == 2 and one_error_line(err), (case, err)
        assert seconds < 3.0, (case, seconds)
        assert snapshot(tmp_path) == before, case


def test_validate_and_animate_agree_and_a_bad_batch_renders_nothing(tmp_path: Path, capsys) -> None:
    good = small_spec(tmp_path, "good")
    (tmp_path / "broken.png").write_bytes(Image.open(tmp_path / "photo.png").tobytes()[:100])
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((tmp_path / "photo.png").read_bytes()[:200])
    obj = json.loads(good.read_text())["objects"][0]
    bad = {
        "unreadable image": {"image": "broken.png"},
        "truncated image": {"image": "truncated.png"},
        "box outside": {"objects": [obj | {"box": [100, 100, 120, 120]}]},
        "points outside": {"objects": [{"id": 1, "points": [[10, 400]]}]},
        "unknown option": {"options": {"no_such_option": 1}},
        "missing mask": {"objects": [{"id": 1, "mask": "none.png"}]},
        "missing depth": {"depth": "none.npy"},
        "pose missing for xdyna": {"method": "xdyna"},
    }
    paths = [small_spec(tmp_path, name.replace(" ", "_"), **change) for name, change in bad.items()]
    out = tmp_path / "out"
    for path in paths:
        status, animate_err = run_cli(["animate", str(path), "-o", str(out / "v.mp4")], capsys)
        assert status == 2 and one_error_line(animate_err), (path, animate_err)
        capsys.readouterr()
        assert main(["spec", "validate", str(path)]) == 2
        assert capsys.readouterr().err.strip() == animate_err
    # every file is reported, the good ones too
    capsys.readouterr()
    assert main(["spec", "validate", str(good), *map(str, paths), str(good)]) == 2
    captured = capsys.readouterr()
    assert captured.out.count(": ok") == 2
    assert len(captured.err.strip().splitlines()) == len(paths)
    # a batch with one bad spec renders nothing, not even the specs before it
    batch = ["animate", str(good), str(paths[2]), str(small_spec(tmp_path, "last")), "-o", str(out)]
    status, err = run_cli(batch, capsys)
    assert status == 2 and one_error_line(err) and "box_outside" in err
    assert not out.exists()


# --------------------------------------------------------------------------- interruptions


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_exit_128_plus_n_and_leave_the_folder_as_it_was(tmp_path: Path, signum) -> None:
    spec = small_spec(tmp_path, num_frames=1024, size=[192, 256])
    out, dump = tmp_path / "out", tmp_path / "out" / "dump"
    before = user_folder(out)
    script = Path(sys.executable).with_name("anima")
    command = [str(script), "animate", str(spec), "-o", str(out / "v.mp4"), "--dump", str(dump)]
    for delay in (0.2, 4.0):  # while torch imports, and while the scene renders
        run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        time.sleep(delay)
        run.send_signal(signum)
        err = run.communicate(timeout=60)[1].strip()
        assert run.returncode == 128 + signum, (delay, err)
        assert err.startswith("error: interrupted by ") and "\n" not in err, (delay, err)
        assert snapshot(out) == before, delay
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "depth.npy",
            "out",
            "photo.png",
            "spec.json",
        ]


# --------------------------------------------------------------------------- quiet


def test_bare_anima_prints_its_help_and_no_error(capsys) -> None:
    assert main([]) == 0
    captured = capsys.readouterr()
    assert "Usage" in captured.out and "error" not in captured.err


def test_weights_check_names_the_method_argument(capsys) -> None:
    status, err = run_cli(["weights", "check", "bogus"], capsys)
    assert status == 2 and err.endswith(", METHOD")


def test_messages_are_not_wrapped_when_stderr_is_a_file(tmp_path: Path) -> None:
    spec = small_spec(tmp_path)
    out = tmp_path / ("a-rather-long-output-name-" * 4 + ".mp4")
    done = subprocess.run(
        [sys.executable, "-m", "anima.cli", "animate", str(spec), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("wrote ") and str(out) in lines[0]
    assert len(read_video(out)[0]) == 4
