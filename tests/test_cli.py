"""The CLI contract: the README's main command, --dump, exit statuses, no partial output."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import EXAMPLES, REPO

from anima.cli import main
from anima.io import read_depth, read_video


def readme_main_command() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"```(?:sh|bash)\n(.*?anima animate .*?)\n```", text, re.S)
    assert match, "README has no main command block"
    return match.group(1).splitlines()[-1]


def test_readme_main_command_writes_a_decodable_mp4(tmp_path: Path) -> None:
    command = readme_main_command()  # ... && anima animate SPEC -o OUT [--dump DIR]
    args = command.split("anima animate", 1)[1].split()
    spec = REPO / args[0]
    out = tmp_path / "out.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "anima.cli", "animate", str(spec), "-o", str(out), "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    frames, fps = read_video(out)
    data = json.loads(spec.read_text())
    assert frames.shape[0] == data["num_frames"]
    assert tuple(frames.shape[-2:]) == (512, 512)
    assert abs(fps - data["fps"]) < 1e-6


def test_dump_writes_every_intermediate(tmp_path: Path) -> None:
    dump, out = tmp_path / "dump", tmp_path / "clip.gif"
    assert (
        main(
            [
                "animate",
                str(EXAMPLES / "rocket_recede.json"),
                "-o",
                str(out),
                "--dump",
                str(dump),
                "--frames",
                "5",
                "-q",
            ]
        )
        == 0
    )
    for sub in ("frames", "render/rgb", "render/depth", "render/instance", "render/visible"):
        assert sorted(p.name for p in (dump / sub).iterdir()) == [f"{i:04d}.png" for i in range(5)]
    depth = np.load(dump / "render" / "depth.npy")
    assert depth.shape == (5, 427, 640) and depth.dtype == np.float32
    png_depth = read_depth(dump / "render" / "depth" / "0003.png").numpy()
    assert np.allclose(png_depth, depth[3], atol=1e-3)
    controls = json.loads((dump / "controls.json").read_text())
    assert controls["levitor_points"]["num_frames"] == 5
    resolved = json.loads((dump / "spec.resolved.json").read_text())
    assert resolved["method"] == "coarse" and resolved["num_frames"] == 5
    assert Path(resolved["image"]).is_absolute()
    # the resolved spec re-runs from anywhere and gives the same video
    again = tmp_path / "again.gif"
    shutil.copy(dump / "spec.resolved.json", tmp_path / "elsewhere.json")
    assert main(["animate", str(tmp_path / "elsewhere.json"), "-o", str(again), "-q"]) == 0
    assert np.array_equal(read_video(again)[0].numpy(), read_video(out)[0].numpy())


def test_bad_inputs_exit_2_with_one_line_and_leave_nothing(tmp_path: Path, capsys) -> None:
    good = json.loads((EXAMPLES / "rocket_recede.json").read_text())
    good["image"] = str(EXAMPLES / "rocket.jpg")
    cases = {
        "missing image": good | {"image": str(tmp_path / "nope.png")},
        "bad depth file": good | {"depth": str(EXAMPLES / "astronaut.png")},
        "unknown method": good | {"method": "nope"},
        "bad option": good | {"options": {"points_scale": -1}},
        "point outside": good | {"objects": [{"id": 1, "points": [[9999, 1]]}]},
    }
    for name, data in cases.items():
        spec = tmp_path / f"{name.replace(' ', '_')}.json"
        spec.write_text(json.dumps(data))
        out = tmp_path / "out" / "video.mp4"
        capsys.readouterr()
        assert main(["animate", str(spec), "-o", str(out), "--dump", str(tmp_path / "d")]) == 2, (
            name
        )
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, (name, err)
        assert not out.exists() and not (tmp_path / "d").exists(), name
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), name


def test_command_line_errors_exit_2(tmp_path: Path, capsys) -> None:
    spec = str(EXAMPLES / "rocket_recede.json")
    for argv in (
        ["animate", spec, "-o", str(tmp_path / "a.avi")],
        ["animate", spec, "-o", str(tmp_path / "a.mp4"), "--frames", "1"],
        ["animate", spec, "-o", str(tmp_path / "a.mp4"), "--device", "cuda:7"],
        ["animate", spec, "-o", str(tmp_path / "a.mp4"), "--weights", str(tmp_path / "x")],
        ["animate", spec],
        ["weights", "check", "nope"],
    ):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, (argv, err)
    assert not list(tmp_path.iterdir())


def test_weights_listing_and_demo(tmp_path: Path, capsys) -> None:
    assert main(["weights"]) == 0
    listing = capsys.readouterr().out
    assert "coarse" in listing and "depth-anything" in listing
    assert main(["weights", "check", "coarse"]) == 0
    out = tmp_path / "demo.mp4"
    assert main(["demo", "-o", str(out), "-q"]) == 0
    frames, _ = read_video(out)
    assert frames.shape == (16, 3, 400, 600)
