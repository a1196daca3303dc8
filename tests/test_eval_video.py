"""``anima eval video``: every metric whose inputs and weights are present, the others listed as
skipped with what they need; the spec's intended tracks; bad input is one `error:` line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cli_promises import one_error_line, run_cli, small_spec

from anima.cli import main
from anima.eval.trajectories import spec_inputs
from anima.eval.video import EvalInputs, evaluate, metric_names, plan
from anima.io import read_video
from anima.metrics.tracking import track_points
from anima.metrics.trajectory import objmc
from anima.pipeline import resolve_spec
from anima.spec import load_spec
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A coarse video of a box moving right, its dump, and its spec (4 frames, 48x64)."""
    folder = tmp_path_factory.mktemp("made")
    spec = small_spec(folder, num_frames=6)
    video, dump = folder / "coarse.mp4", folder / "dump"
    assert main(["animate", str(spec), "-o", str(video), "--dump", str(dump), "-q"]) == 0
    return {"spec": spec, "video": video, "dump": dump, "folder": folder}


def test_without_weights_the_weight_free_metrics_run_and_the_rest_say_why(
    made, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "scores.json"
    argv = ["eval", "video", str(made["video"]), "--reference", str(made["video"])]
    argv += ["--render", str(made["dump"]), "--spec", str(made["spec"]), "--json", str(out)]
    capsys.readouterr()
    assert main(argv + ["-q"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    values, skipped = report["values"], report["skipped"]
    assert values["psnr"] == 100.0 and values["ssim"] == pytest.approx(1.0)
    assert values["l1"] == 0.0 and values["fg_l1"] == 0.0 and values["bg_l1"] == 0.0
    assert 0.5 < values["ssim_render"] <= 1.0  # the video is the render, through H.264
    assert values["objmc"] < 3.0  # the coarse render moves the box where the spec says
    assert values["face_det"] == 0.0  # percent of frames with a face: a box has none
    for name in ("fid", "fvd", "cd_fvd", "dtfvd", "lpips", "clip_i", "dino_structure"):
        assert name in skipped and "metrics/" in skipped[name], name
    assert "depth-anything" in skipped["d_rmse"]
    assert set(values) | set(skipped) == set(metric_names())
    assert "skipped clip_i: weights" in printed and "objmc" in printed


def test_without_inputs_a_metric_names_the_flag_it_needs(made) -> None:
    video, _fps = read_video(made["video"])
    run, skipped = plan(EvalInputs(generated=video), Weights())
    assert "face_det" in run and "psnr" not in run
    assert skipped["psnr"] == "needs --reference VIDEO"
    assert skipped["ssim_render"] == "needs --render DUMP"
    assert skipped["objmc"].startswith("needs --spec")
    assert skipped["fg_psnr"] == "needs --reference VIDEO"


def test_intended_tracks_follow_the_render_and_a_still_video_misses_them(made) -> None:
    video, _fps = read_video(made["video"])
    spec = resolve_spec(load_spec(made["spec"]), num_frames=len(video))
    found = spec_inputs(spec, tuple(video.shape[-2:]), len(video), Weights())
    assert found.tracks is not None and found.tracks.shape[1:] == (len(video), 2)
    # the box moves 12 px to the right over the clip and stays at its height
    shift = found.tracks[:, -1] - found.tracks[:, 0]
    assert torch.allclose(shift[:, 0], torch.full_like(shift[:, 0], 12.0), atol=0.6)
    assert shift[:, 1].abs().max() < 0.6
    moving = evaluate(
        EvalInputs(video, intended_tracks=found.tracks, tracks_valid=found.valid),
        Weights(),
        metrics=["objmc"],
    )
    still = video[:1].expand_as(video).clone()
    tracks, ok = track_points(still, found.tracks[:, 0])
    assert moving.values["objmc"] < 3.0
    assert objmc(tracks, found.tracks, ok & found.valid) > 5.0


def test_bad_input_is_one_error_line_and_nothing_is_written(made, tmp_path: Path, capsys) -> None:
    out = tmp_path / "scores.json"
    absent = tmp_path / "absent.mp4"
    status, err = run_cli(["eval", "video", str(absent), "--json", str(out)], capsys)
    assert status == 2 and one_error_line(err) and "absent.mp4" in err
    other = small_spec(tmp_path, num_frames=3)
    short = tmp_path / "short.mp4"
    assert main(["animate", str(other), "-o", str(short), "-q"]) == 0
    argv = ["eval", "video", str(made["video"]), "--reference", str(short), "--json", str(out)]
    status, err = run_cli(argv, capsys)
    assert status == 2 and one_error_line(err) and "--reference" in err
    status, err = run_cli(["eval", "video", str(made["video"]), "--metrics", "psnr,fancy"], capsys)
    assert status == 2 and one_error_line(err) and "fancy" in err
    assert not out.exists()


def test_with_tiny_weights_every_metric_runs(made, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tiny.json"
    captions = tmp_path / "captions.txt"
    captions.write_text("a red car\n\na dog running\n")
    argv = ["eval", "video", str(made["video"]), "--reference", str(made["video"])]
    argv += ["--render", str(made["dump"]), "--spec", str(made["spec"]), "--prompt", "a box"]
    argv += ["--weights", "tiny", "--clip-length", "3", "--json", str(out), "-q"]
    argv += ["--captions", str(captions)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["skipped"] == {}
    values = report["values"]
    assert set(values) == set(metric_names())
    for name in ("fid", "fvd", "cd_fvd", "dtfvd", "lpips", "fg_lpips", "bg_fid"):
        assert values[name] == pytest.approx(0.0, abs=1e-3), name  # the video against itself
    assert values["clip_frame"] > 0.9 and values["dino_structure"] <= 1.0
    assert values["d_rmse"] >= 0.0 and -1.0 <= values["clip_t"] <= 1.0
    assert values["clip_r"] in [k / 6 for k in range(7)]  # a share of the 6 frames
    for value in values.values():
        assert value is None or value == value  # no NaN (None: face_cos finds no face)


def test_anima_weights_lists_the_metric_folders(tmp_path: Path, capsys) -> None:
    (tmp_path / "metrics" / "i3d").mkdir(parents=True)
    (tmp_path / "metrics" / "i3d" / "i3d_torchscript.pt").write_bytes(b"")
    capsys.readouterr()
    assert main(["weights", "--weights", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    i3d = next(line for line in lines if "metrics/i3d" in line)
    clip = next(line for line in lines if "metrics/clip" in line)
    assert "present" in i3d and "absent" in clip
