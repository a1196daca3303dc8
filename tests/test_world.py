"""The toy world (anima.world): determinism, exact ground truth, and the MotionSpec it emits."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anima.cli import main
from anima.world import WorldConfig, make_clip
from anima.world.evaluate import masked_psnr, reproduction_mask
from anima.world.writer import write_clip

STILL = WorldConfig(camera_move_prob=0.0)
SINGLE = WorldConfig(
    max_objects=1, occluder_prob=0.0, figures=False, camera_move_prob=0.0, water_prob=0.0
)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(argv)
    return code, err.getvalue()


def _read_frames(folder: Path, count: int) -> np.ndarray:
    frames = [np.asarray(Image.open(folder / f"{f:04d}.png")) for f in range(count)]
    return np.stack(frames).astype(np.float64)


def test_same_seed_gives_byte_identical_clip_folders(tmp_path):
    write_clip(make_clip(11), tmp_path / "a")
    write_clip(make_clip(11), tmp_path / "b")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b
    assert {"spec.json", "tracks.npz", "camera.json", "frames/0000.png"} <= set(a)
    write_clip(make_clip(12), tmp_path / "c")
    assert _files(tmp_path / "c")["frames/0000.png"] != a["frames/0000.png"]


def test_clip_shapes_and_conventions():
    clip = make_clip(5)
    frames, (h, w) = clip.num_frames, clip.size
    assert clip.frames.shape == (frames, 3, h, w) and clip.frames.dtype == np.float32
    assert 0.0 <= clip.frames.min() and clip.frames.max() <= 1.0
    assert clip.distance.shape == clip.instance.shape == (frames, h, w)
    assert clip.instance.dtype == np.int64 and (clip.distance > 0).all()
    assert clip.tracks.shape[1:] == (frames, 2) and clip.visible.shape == clip.tracks.shape[:2]
    np.testing.assert_allclose(clip.world_to_camera[0], np.eye(4), atol=1e-12)
    ids = {o["id"] for o in clip.objects}
    assert set(np.unique(clip.instance).tolist()) <= ids | {0}


def test_tracks_agree_with_masks():
    checked_visible = checked_hidden = 0
    for seed in range(10):
        visible, hidden = _check_tracks(make_clip(seed))
        checked_visible, checked_hidden = checked_visible + visible, checked_hidden + hidden
    assert checked_visible > 100 and checked_hidden > 5


def _check_tracks(clip) -> tuple[int, int]:
    h, w = clip.size
    pad_inst = np.pad(clip.instance, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    pad_dist = np.pad(clip.distance, ((0, 0), (1, 1), (1, 1)), constant_values=np.inf)
    checked_visible = checked_hidden = 0
    for n, obj in enumerate(clip.track_object):
        for f in range(clip.num_frames):
            x, y = clip.tracks[n, f]
            depth = clip.track_depth[n, f]
            inside = -0.5 <= x < w - 0.5 and -0.5 <= y < h - 0.5
            if not inside:
                assert not clip.visible[n, f]
                continue
            px, py = int(np.floor(x + 0.5)) + 1, int(np.floor(y + 0.5)) + 1  # padded coords
            near_ids = pad_inst[f, py - 1 : py + 2, px - 1 : px + 2]
            near_dist = pad_dist[f, py - 1 : py + 2, px - 1 : px + 2]
            if clip.visible[n, f]:
                checked_visible += 1
                assert pad_inst[f, py, px] == obj or (near_ids == obj).any()  # 1 px allowance
            else:
                checked_hidden += 1
                # occluded (by another object or its own front side): something nearer is there
                assert (near_dist < depth * (1 - 1e-4)).any()
    return checked_visible, checked_hidden


def test_sphere_and_ground_distances_are_analytic():
    for seed in range(200):
        clip = make_clip(seed, SINGLE)
        if clip.objects[0]["label"] == "sphere":
            break
    else:
        pytest.fail("no sphere drawn")
    k = clip.intrinsics
    spec = clip.spec["objects"][0]
    radius = clip.objects[0]["size"]
    h, w = clip.size
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rays = np.stack([(xs - k[0, 2]) / k[0, 0], (ys - k[1, 2]) / k[1, 1], np.ones((h, w))], -1)
    for f in (0, clip.num_frames - 1):
        key = spec["trajectory"][f]
        centre = (
            np.array([(key["x"] - k[0, 2]) / k[0, 0], (key["y"] - k[1, 2]) / k[1, 1], 1.0])
            * key["depth"]
        )
        mask = clip.instance[f] == spec["id"]
        d = rays[mask]
        a, b = (d * d).sum(-1), d @ centre
        t = (b - np.sqrt(b * b - a * (centre @ centre - radius**2))) / a
        np.testing.assert_allclose(clip.distance[f][mask], t, rtol=1e-5)
    # the ground plane: stage y = 1 under a camera tilted down by `tilt` degrees
    tilt = np.radians(clip.config.tilt)
    normal = np.array([0.0, np.cos(tilt), np.sin(tilt)])  # stage "down" in camera coordinates
    ground = (clip.instance[0] == 0) & (clip.distance[0] < 25.0)
    expected = 1.0 / (rays[ground] @ normal)
    np.testing.assert_allclose(clip.distance[0][ground], expected, rtol=1e-5)


def test_perspective_area_scales_with_inverse_square_distance():
    found = 0
    for seed in range(300):
        clip = make_clip(seed, SINGLE)
        info = clip.objects[0]
        if info["label"] != "sphere" or info["path"] not in ("approach", "recede"):
            continue
        traj = clip.spec["objects"][0]["trajectory"]
        areas = (clip.instance == info["id"]).sum(axis=(1, 2))
        border = clip.instance[:, [0, -1], :].any(axis=(1, 2)) | clip.instance[:, :, [0, -1]].any(
            axis=(1, 2)
        )
        if border.any():
            continue
        ratio = areas[-1] / areas[0]
        expected = (traj[0]["depth"] / traj[-1]["depth"]) ** 2
        assert ratio == pytest.approx(expected, rel=0.2)
        assert max(expected, 1 / expected) > 3.0  # distance changes 2-3x
        found += 1
        if found == 2:
            return
    pytest.fail("no unclipped approaching/receding sphere found")


def test_occluder_hides_an_object_passing_behind():
    config = WorldConfig(occluder_prob=1.0, camera_move_prob=0.0, figures=False)
    for seed in range(300):
        clip = make_clip(seed, config)
        occluder = next(o for o in clip.objects if o["role"] == "occluder")
        for info in clip.objects:
            if info["path"] != "pass_behind":
                continue
            for n in np.flatnonzero(clip.track_object == info["id"]):
                for f in range(clip.num_frames):
                    x, y = np.floor(clip.tracks[n, f] + 0.5).astype(int)
                    h, w = clip.size
                    if not (0 <= x < w and 0 <= y < h):
                        continue
                    if clip.instance[f, y, x] == occluder["id"]:
                        assert not clip.visible[n, f]
                        assert clip.distance[f, y, x] < clip.track_depth[n, f]
                        return
    pytest.fail("no track passed behind an occluder")


def _reproduction_psnr(tmp_path: Path, seed: int, config: WorldConfig) -> float:
    clip = make_clip(seed, config)
    folder = write_clip(clip, tmp_path / f"clip{seed}")
    from anima.spec import load_spec

    spec = load_spec(folder / "spec.json")
    assert spec.num_frames == clip.num_frames and spec.depth == "depth/0000.png"
    out, dump = tmp_path / f"out{seed}", tmp_path / f"dump{seed}"
    code, err = _run(
        ["animate", str(folder / "spec.json"), "-o", str(out), "--method", "coarse"]
        + ["--dump", str(dump), "-q"]
    )
    assert code == 0, err
    rendered = _read_frames(out, clip.num_frames).transpose(0, 3, 1, 2) / 255.0
    truth = _read_frames(folder / "frames", clip.num_frames).transpose(0, 3, 1, 2) / 255.0
    instance = _read_frames(dump / "render" / "instance", clip.num_frames).astype(np.int64)
    mask = reproduction_mask(clip, instance)
    assert mask.mean() > 0.5
    return masked_psnr(rendered, truth, mask)


@pytest.mark.parametrize("seed", [0, 3, 10])
def test_coarse_reproduces_a_still_camera_clip(tmp_path, seed):
    assert _reproduction_psnr(tmp_path, seed, STILL) >= 30.0


def test_coarse_reproduces_camera_moves(tmp_path):
    config = WorldConfig(camera_move_prob=1.0)
    moves = [make_clip(s, config).camera_move for s in range(3)]
    assert set(moves) <= {"pan", "dolly", "orbit"}
    values = [_reproduction_psnr(tmp_path, s, config) for s in range(3)]
    assert min(values) >= 30.0, values


def test_spec_camera_reproduces_the_clip_camera(tmp_path):
    from anima.animation import build_animation
    from anima.scene import build_scene
    from anima.spec import load_spec

    clip = make_clip(2, WorldConfig(camera_move_prob=1.0))
    folder = write_clip(clip, tmp_path / "clip")
    spec = load_spec(folder / "spec.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        animation = build_animation(spec, build_scene(spec))
    np.testing.assert_allclose(animation.world_to_camera.numpy(), clip.world_to_camera, atol=1e-5)


def test_world_make_cli_is_reproducible_and_levitor_reads_it(tmp_path):
    from anima.methods.levitor.dataset import LevitorDataset

    argv = ["world", "make", "--n", "3", "--seed", "7", "--frames", "6", "-q"]
    code, err = _run(argv + ["--out", str(tmp_path / "w1")])
    assert code == 0, err
    code, err = _run(argv + ["--out", str(tmp_path / "w2")])
    assert code == 0, err
    first, second = _files(tmp_path / "w1"), _files(tmp_path / "w2")
    assert first == second
    index = json.loads(first["world_index.json"])
    assert [c["name"] for c in index["clips"]] == ["clip_00000", "clip_00001", "clip_00002"]
    dataset = LevitorDataset(tmp_path / "w1", num_frames=6, size=(64, 64))
    assert len(dataset) == 3
    sample = dataset.load(0, 0)
    assert sample.frames.shape == (6, 3, 64, 64) and sample.moved_ids
    # a second run into an existing world replaces it
    code, _ = _run(argv + ["--out", str(tmp_path / "w1")])
    assert code == 0 and _files(tmp_path / "w1") == second


@pytest.mark.parametrize(
    "extra",
    [["--n", "0"], ["--n", "2", "--height", "63"], ["--n", "2", "--width", "33"]],
)
def test_world_make_bad_input_exits_2(tmp_path, extra):
    out = tmp_path / "w"
    code, err = _run(["world", "make", "--out", str(out), "-q"] + extra)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_world_make_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    code, err = _run(["world", "make", "--n", "1", "--out", str(tmp_path), "-q"])
    assert code == 2 and (tmp_path / "keep.txt").read_text() == "mine"


def test_figures_have_keypoints(tmp_path):
    config = WorldConfig(figures=True, figure_prob=1.0)
    clip = make_clip(4, config)
    assert clip.keypoints.shape == (1, clip.num_frames, 18, 2)
    fig = int(clip.keypoint_figure[0])
    h, w = clip.size
    seen = 0
    for f in range(clip.num_frames):
        for j in range(18):
            if clip.keypoint_visible[0, f, j]:
                x, y = np.floor(clip.keypoints[0, f, j] + 0.5).astype(int)
                window = clip.instance[f, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
                assert (window == fig).any()
                seen += 1
    assert seen > 0
    folder = write_clip(clip, tmp_path / "fig")
    data = json.loads((folder / "keypoints.json").read_text())
    assert data["names"][0] == "nose" and data["figures"][0]["id"] == fig
