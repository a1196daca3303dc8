"""X-Dyna pose maps as the release's: DWPose hands, the nose dot, the 0.3 threshold, and
ready-made skeleton videos (``pose.skeleton_video``) used as they are."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from anima.cli import main
from anima.errors import InputError
from anima.io import write_png, write_video
from anima.methods.xdyna import load_pipeline
from anima.methods.xdyna.extract import extract_keypoints, hand_box
from anima.methods.xdyna.keypoints import DrivingKeypoints, load_openpose, save_openpose
from anima.methods.xdyna.pipeline import XDynaPipeline
from anima.methods.xdyna.pose_map import (
    COLOURS,
    HAND_COLOURS,
    HAND_EDGES,
    LIMB_INTENSITY,
    NECK_NOSE,
    pose_maps,
)

EXAMPLE = Path(__file__).parents[1] / "examples" / "figure_dance"
SIZE = (896, 512)  # the release's skeleton videos: DWPose's pixel sizes hold as they are
# A standing person, COCO-18 order, at 896 x 512 (H x W).
BODY = np.array(
    [
        [256, 150],  # nose
        [256, 260],  # neck
        [196, 265], [170, 360], [160, 450],  # right arm
        [316, 265], [342, 360], [352, 450],  # left arm
        [220, 470], [215, 600], [210, 730],  # right leg
        [292, 470], [297, 600], [302, 730],  # left leg
        [240, 132], [272, 132], [222, 140], [290, 140],  # eyes, ears
    ],
    dtype=np.float64,
)  # fmt: skip
BLUE = (0, 0, 255)


def _hand(wrist: np.ndarray) -> np.ndarray:
    """21 hand points below ``wrist``: five fingers fanned out, 24 px between points."""
    points = [wrist]
    for finger in range(5):
        angle = np.deg2rad(-50.0 + 25.0 * finger)
        direction = np.array([np.sin(angle), np.cos(angle)])
        points += [wrist + direction * 24.0 * step for step in range(1, 5)]
    return np.array(points)


def _person(hand_confidence: float = 1.0, frames: int = 1) -> DrivingKeypoints:
    hands = np.stack([_hand(BODY[7] + [0, 10]), _hand(BODY[4] + [0, 10])])
    return DrivingKeypoints(
        np.repeat(BODY[None], frames, axis=0),
        np.ones((frames, 18)),
        SIZE,
        hands=np.repeat(hands[None], frames, axis=0),
        hands_confidence=np.full((frames, 2, 21), hand_confidence),
    )


def _image(maps: torch.Tensor, frame: int = 0) -> np.ndarray:
    """Frame ``frame`` of pose maps as (H, W, 3) uint8 RGB."""
    return np.rint(maps[frame].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _pixel(image: np.ndarray, point: np.ndarray) -> tuple[int, ...]:
    x, y = np.rint(point).astype(int)
    return tuple(int(v) for v in image[y, x])


# --------------------------------------------------------------------------- drawing


def test_hand_colours_are_dwposes():
    """Bone k is hue k / 20 at full saturation, as DWPose rounds it into bytes."""
    assert len(HAND_EDGES) == len(HAND_COLOURS) == 20
    assert HAND_EDGES[:5] == ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5))
    assert HAND_COLOURS[0] == (255, 0, 0) and HAND_COLOURS[1] == (255, 77, 0)
    assert HAND_COLOURS[10] == (0, 255, 255) and HAND_COLOURS[19] == (255, 0, 77)


def test_hands_draw_finger_lines_and_blue_points():
    kp = _person()
    image = _image(pose_maps(kp))
    for side in range(2):
        hand = kp.hands[0, side]
        for k, (a, b) in enumerate(HAND_EDGES):  # bone middles, 12 px from either point
            assert _pixel(image, (hand[a] + hand[b]) / 2) == HAND_COLOURS[k], (side, k)
        for point in hand:
            assert _pixel(image, point) == BLUE
    bare = _image(pose_maps(kp, hands=False))
    hand = kp.hands[0, 1]
    assert all(_pixel(bare, (hand[a] + hand[b]) / 2) == (0, 0, 0) for a, b in HAND_EDGES[4:])


def test_nose_dot_is_red_on_the_neck_nose_limb():
    image = _image(pose_maps(_person()))
    assert _pixel(image, BODY[0]) == COLOURS[0] == (255, 0, 0)
    limb = tuple(int(c * LIMB_INTENSITY) for c in COLOURS[NECK_NOSE])
    assert _pixel(image, (BODY[0] + BODY[1]) / 2) == limb == (0, 0, 153)
    for joint in (14, 15, 16, 17):  # no eyes or ears
        assert _pixel(image, BODY[joint]) == (0, 0, 0)
    paper = _image(pose_maps(_person(), neck_nose=False))  # the paper's: no nose at all
    assert _pixel(paper, BODY[0]) == (0, 0, 0)
    assert _pixel(paper, (BODY[0] + BODY[1]) / 2) == (0, 0, 0)


def test_points_are_drawn_above_confidence_03_only():
    kp = _person(frames=2)
    kp.body_confidence[0, 12] = 0.29  # left knee under DWPose's threshold
    kp.body_confidence[1, 12] = 0.31
    kp.hands_confidence[0, 1, 8] = 0.29  # right index tip
    kp.hands_confidence[1, 1, 8] = 0.31
    maps = pose_maps(kp)
    under, over = _image(maps, 0), _image(maps, 1)
    knee, tip = BODY[12], kp.hands[0, 1, 8]
    bone = (kp.hands[0, 1, 7] + tip) / 2  # the bone to the tip, index 7 of HAND_EDGES
    assert _pixel(under, knee) == (0, 0, 0)
    assert _pixel(under, (BODY[11] + knee) / 2) == (0, 0, 0)  # its limbs go with it
    assert _pixel(under, tip) == (0, 0, 0) and _pixel(under, bone) == (0, 0, 0)
    assert _pixel(over, knee) == COLOURS[12]
    assert _pixel(over, tip) == BLUE and _pixel(over, bone) == HAND_COLOURS[7]


def test_openpose_hands_are_read_and_drawn(tmp_path):
    """``hand_left/right_keypoints_2d`` as OpenPose writes them, with the 0.3 threshold."""
    hand = np.concatenate([_hand(BODY[4] + [0, 10]), np.full((21, 1), 0.9)], axis=1)
    hand[8, 2] = 0.2  # the index tip: too unsure to draw
    person = {
        "pose_keypoints_2d": np.concatenate([BODY, np.ones((18, 1))], 1).ravel().tolist(),
        "hand_right_keypoints_2d": hand.ravel().tolist(),
    }
    path = tmp_path / "frame_0_keypoints.json"
    path.write_text(json.dumps({"version": 1.3, "people": [person]}))
    kp = load_openpose(tmp_path, size=SIZE)
    assert kp.hands is not None and kp.hands_confidence is not None
    np.testing.assert_array_equal(kp.hands[0, 1], hand[:, :2])
    np.testing.assert_array_equal(kp.hands_confidence[0, 0], 0.0)  # no left hand
    image = _image(pose_maps(kp))
    assert _pixel(image, hand[4, :2]) == BLUE and _pixel(image, hand[8, :2]) == (0, 0, 0)
    save_openpose(tmp_path / "again.json", kp)  # hands are written back exactly
    again = load_openpose(tmp_path / "again.json")
    np.testing.assert_array_equal(again.hands, kp.hands)
    np.testing.assert_array_equal(again.hands_confidence, kp.hands_confidence)
    person["hand_left_keypoints_2d"] = [1.0] * 60
    path.write_text(json.dumps({"people": [person]}))
    with pytest.raises(InputError, match="hand_left_keypoints_2d has 60 values"):
        load_openpose(tmp_path, size=SIZE)


def test_hand_box_is_openposes_enlarged():
    """Centred a third of the forearm beyond the wrist, 3.5 x max(forearm, 0.9 x upper arm)."""
    centre, side = hand_box(np.array([0.0, 0.0]), np.array([0.0, 10.0]), np.array([0.0, 30.0]))
    np.testing.assert_allclose(centre, [0.0, 36.6])
    assert side == pytest.approx(70.0)
    _, side = hand_box(np.array([0.0, 0.0]), np.array([0.0, 30.0]), np.array([0.0, 40.0]))
    assert side == pytest.approx(3.5 * 27.0)


class _Model:
    """A stand-in MediaPipe solution: records its options, answers ``process`` with ``result``."""

    made: list[tuple[str, dict]] = []

    def __init__(self, name: str, result: SimpleNamespace, **options) -> None:
        self.result = result
        _Model.made.append((name, options))

    def __enter__(self) -> _Model:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def process(self, image: np.ndarray) -> SimpleNamespace:
        return self.result


def _marks(xy: np.ndarray) -> list[SimpleNamespace]:
    """Normalised points as MediaPipe's landmarks (visibility 1)."""
    return [SimpleNamespace(x=x, y=y, visibility=1.0) for x, y in xy]


def test_extraction_finds_each_hand_in_its_arms_box(monkeypatch):
    """Without the library (which needs numpy<2): a stand-in with MediaPipe's solutions API
    whose Hands finds, in every crop, a hand at the crop's centre and one in its corner."""
    size = (96, 128)
    pose = np.full((33, 2), 60.0)
    pose[[11, 13, 15]] = [[80.0, 30.0], [84.0, 50.0], [88.0, 70.0]]  # MediaPipe's left arm
    pose[[12, 14, 16]] = [[40.0, 30.0], [36.0, 50.0], [32.0, 70.0]]  # right arm
    landmarks = _marks((pose + 0.5) / [size[1], size[0]])
    landmarks[15].visibility = 0.1  # a hidden wrist still places its hand's box
    body = SimpleNamespace(pose_landmarks=SimpleNamespace(landmark=landmarks))
    centred = 0.5 + _hand(np.zeros(2)) / 24.0 * 0.05  # wrist at the centre, 0.05 a point
    corner = np.full((21, 2), 0.98)  # the other hand, too far from this wrist
    hands = SimpleNamespace(
        multi_hand_landmarks=[SimpleNamespace(landmark=_marks(p)) for p in (corner, centred)]
    )
    solutions = SimpleNamespace(
        pose=SimpleNamespace(Pose=lambda **o: _Model("pose", body, **o)),
        hands=SimpleNamespace(Hands=lambda **o: _Model("hands", hands, **o)),
    )
    monkeypatch.setitem(sys.modules, "mediapipe", SimpleNamespace(solutions=solutions))
    _Model.made.clear()
    kp = extract_keypoints(torch.zeros(1, 3, *size), face=False)
    assert dict(_Model.made)["hands"]["model_complexity"] == 1
    assert kp.hands is not None and kp.hands_confidence is not None
    np.testing.assert_array_equal(kp.hands_confidence, 1.0)
    for side, arm in enumerate(((5, 6, 7), (2, 3, 4))):  # hands[:, 0] is the left hand
        centre, box = hand_box(*kp.body[0, list(arm)])
        np.testing.assert_allclose(kp.hands[0, side], centre - box / 2 + centred * box)
    assert extract_keypoints(torch.zeros(1, 3, *size), face=False, hands=False).hands is None


# --------------------------------------------------------------------------- skeleton videos


@pytest.fixture
def fresh_pipeline_cache():
    load_pipeline.cache_clear()
    yield
    load_pipeline.cache_clear()


def _spec(tmp_path: Path, pose: dict, num_frames: int = 3) -> Path:
    """The figure_dance example with ``pose`` as its pose section, 1 step, ``num_frames``."""
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLE, folder)
    spec = json.loads((folder / "spec.json").read_text())
    spec.update({"num_frames": num_frames, "options": {"num_inference_steps": 1}, "pose": pose})
    (folder / "spec.json").write_text(json.dumps(spec))
    return folder / "spec.json"


def _skeleton_frames(count: int, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    """(count, H, W, 3) uint8 frames of coloured blocks, each frame different."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (count, size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    return blocks.repeat(8, axis=1).repeat(8, axis=2)


def _write_frames(folder: Path, frames: np.ndarray) -> str:
    folder.mkdir()
    for f, frame in enumerate(frames):
        write_png(folder / f"{f:02d}.png", frame.transpose(2, 0, 1) / 255.0)
    return str(folder)


@pytest.fixture
def pipeline_calls(monkeypatch, fresh_pipeline_cache) -> list[tuple[torch.Tensor, object]]:
    """The pose and face conditions of every `XDynaPipeline` call (which then runs as usual)."""
    seen: list[tuple[torch.Tensor, object]] = []
    original = XDynaPipeline.__call__

    def spy(self, image, pose_images, face_images=None, **options):
        seen.append((pose_images.detach().float().cpu(), face_images))
        return original(self, image, pose_images, face_images, **options)

    monkeypatch.setattr(XDynaPipeline, "__call__", spy)
    return seen


def test_skeleton_video_is_the_pose_condition_as_it_is(tmp_path, capsys, pipeline_calls):
    frames = _skeleton_frames(6)
    pose = {"skeleton_video": _write_frames(tmp_path / "skeleton", frames), "start": 1, "stride": 2}
    spec = _spec(tmp_path, pose)
    dump = tmp_path / "dump"
    args = ["animate", str(spec), "-o", str(tmp_path / "a.mp4"), "--dump", str(dump)]
    assert main([*args, "--weights", "tiny"]) == 0
    assert len(pipeline_calls) == 1
    given, face = pipeline_calls[0]
    expected = np.stack(
        [cv2.resize(frames[f], (64, 64), interpolation=cv2.INTER_AREA) for f in (1, 3, 5)]
    )
    assert given.shape == (3, 3, 64, 64)
    assert torch.equal(given, torch.from_numpy(expected).permute(0, 3, 1, 2).float() / 255.0)
    assert face is None  # no driving video: no face condition, and the run says so
    assert "S-Face ControlNet gets no condition" in capsys.readouterr().err
    controls = json.loads((dump / "controls.json").read_text())
    assert controls["skeleton_video"] is True and controls["driving_frames"] == [1, 3, 5]


def test_skeleton_video_takes_the_face_from_the_driving_video(
    tmp_path, capsys, monkeypatch, pipeline_calls
):
    """With ``video`` too, its faces (found by a stand-in for mediapipe) are the S-Face
    condition; a driving video shorter than the frames used is a one-line error."""
    rng = np.random.default_rng(1)
    mesh = [SimpleNamespace(x=x, y=y) for x, y in rng.uniform(0.3, 0.7, (468, 2))]
    face = SimpleNamespace(multi_face_landmarks=[SimpleNamespace(landmark=mesh)])
    body = SimpleNamespace(pose_landmarks=None)
    solutions = SimpleNamespace(
        pose=SimpleNamespace(Pose=lambda **o: _Model("pose", body, **o)),
        face_mesh=SimpleNamespace(FaceMesh=lambda **o: _Model("face", face, **o)),
    )
    monkeypatch.setitem(sys.modules, "mediapipe", SimpleNamespace(solutions=solutions))
    skeleton = _write_frames(tmp_path / "skeleton", _skeleton_frames(4))
    video = _write_frames(tmp_path / "video", 255 - _skeleton_frames(4))
    spec = _spec(tmp_path, {"skeleton_video": skeleton, "video": video})
    assert main(["animate", str(spec), "-o", str(tmp_path / "a.mp4"), "--weights", "tiny"]) == 0
    given_face = pipeline_calls[0][1]
    assert isinstance(given_face, torch.Tensor) and given_face.shape == (3, 6, 64, 64)
    assert float(given_face.abs().sum()) > 0
    assert "S-Face ControlNet gets no condition" not in capsys.readouterr().err
    spec = _spec(tmp_path / "short", {"skeleton_video": skeleton, "video": video}, num_frames=3)
    shutil.rmtree(Path(video))
    _write_frames(Path(video), _skeleton_frames(2))
    assert main(["animate", str(spec), "-o", str(tmp_path / "b.mp4"), "--weights", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pose.video" in err and "has 2 frames" in err and len(err.splitlines()) == 1


def _two_frames(path: Path) -> None:
    write_video(path, torch.rand(2, 3, 32, 32), fps=8)  # mp4 or gif, by the suffix


def _junk_mp4(path: Path) -> None:
    path.write_bytes(b"not a video")


@pytest.mark.parametrize(
    ("name", "make", "extra", "message"),
    [
        ("missing.mp4", None, {}, "file not found"),
        ("short.gif", _two_frames, {}, "has 2 frames; num_frames 3"),
        ("short.mp4", _two_frames, {}, "has 2 frames; num_frames 3"),
        ("junk.mp4", _junk_mp4, {}, "cannot read video"),
        ("short.mp4", _two_frames, {"keypoints": "driving_keypoints.json"}, "drop 'keypoints'"),
    ],
)
def test_bad_skeleton_video_is_a_one_line_error(tmp_path, capsys, name, make, extra, message):
    spec = _spec(tmp_path, {"skeleton_video": name, **extra})
    if make is not None:
        make(spec.parent / name)
    out = tmp_path / "out.mp4"
    assert main(["animate", str(spec), "-o", str(out), "--weights", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()
