"""X-Dyna driving inputs: keypoints and OpenPose JSON, pose maps, S-Face condition, alignment,
toy-world figures and MediaPipe extraction."""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest
import torch

from anima.errors import InputError
from anima.methods.xdyna.align import align_to_reference, body_measures, estimate_alignment
from anima.methods.xdyna.extract import (
    extract_keypoints,
    normalized_to_pixels,
    pose33_to_coco18,
    require_mediapipe,
)
from anima.methods.xdyna.face import (
    LEFT_EYE,
    MEDIAPIPE_TO_IBUG68,
    MOUTH,
    RIGHT_EYE,
    box_mask,
    face_boxes,
    face_condition,
    face_condition_from_keypoints,
)
from anima.methods.xdyna.keypoints import (
    BODY25_TO_COCO18,
    DrivingKeypoints,
    from_toy_clip,
    load_openpose,
    save_openpose,
)
from anima.methods.xdyna.pose_map import (
    COLOURS,
    HEAD_JOINTS,
    LIMB_INTENSITY,
    NECK_NOSE,
    pose_maps,
)
from anima.world import WorldConfig, make_clip

# A standing person in a 256 x 192 (H x W) image, COCO-18 order, head well above the neck.
STANDING = np.array(
    [
        [96, 30],  # nose
        [96, 80],  # neck
        [70, 82], [60, 120], [55, 155],  # right arm
        [122, 82], [132, 120], [137, 155],  # left arm
        [82, 150], [80, 195], [78, 240],  # right leg
        [110, 150], [112, 195], [114, 240],  # left leg
        [88, 22], [104, 22], [78, 28], [114, 28],  # eyes, ears
    ],
    dtype=np.float64,
)  # fmt: skip
SIZE = (256, 192)


def _face68(centre=(100.0, 100.0), scale=40.0, mouth_open=0.0) -> np.ndarray:
    """A synthetic frontal iBUG-68 face of half-width ``scale`` around ``centre``."""
    cx, cy = centre
    pts = np.zeros((68, 2))
    t = np.linspace(np.pi, 0, 17)
    pts[0:17] = np.stack([cx + scale * np.cos(t), cy + 0.2 * scale + scale * np.sin(t)], 1)
    for start, sx in ((17, -1), (22, 1)):
        xs = cx + sx * np.linspace(0.75, 0.15, 5) * scale
        pts[start : start + 5] = np.stack(
            [xs if sx < 0 else xs[::-1], np.full(5, cy - 0.45 * scale)], 1
        )
    pts[27:31] = np.stack([np.full(4, cx), cy + np.linspace(-0.3, 0.2, 4) * scale], 1)
    pts[31:36] = np.stack([cx + np.linspace(-0.2, 0.2, 5) * scale, np.full(5, cy + 0.3 * scale)], 1)
    ang = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    for start, ex in ((36, -0.4), (42, 0.4)):
        pts[start : start + 6] = np.stack(
            [
                cx + ex * scale + 0.15 * scale * np.cos(ang),
                cy - 0.25 * scale + 0.05 * scale * np.sin(ang),
            ],
            1,
        )
    ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    pts[48:60] = np.stack(
        [
            cx + 0.35 * scale * np.cos(ang),
            cy + 0.6 * scale + (0.1 + mouth_open) * scale * np.sin(ang),
        ],
        1,
    )
    ang = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    pts[60:68] = np.stack(
        [cx + 0.25 * scale * np.cos(ang), cy + 0.6 * scale + mouth_open * scale * np.sin(ang)], 1
    )
    return pts  # fmt: skip


def _keypoints(frames: int = 3, face: bool = True, seed: int = 0) -> DrivingKeypoints:
    rng = np.random.default_rng(seed)
    body = STANDING + rng.normal(0, 2, (frames, 18, 2))
    conf = rng.uniform(0.1, 1.0, (frames, 18))
    conf[0, 4] = 0.0
    if not face:
        return DrivingKeypoints(body=body, body_confidence=conf, size=SIZE)
    landmarks = np.stack([_face68((96, 30)) + rng.normal(0, 1, (68, 2)) for _ in range(frames)])
    return DrivingKeypoints(body, conf, SIZE, landmarks, rng.uniform(0.5, 1.0, (frames, 68)))


# --------------------------------------------------------------------------- OpenPose JSON


def _assert_same(a: DrivingKeypoints, b: DrivingKeypoints) -> None:
    assert a.size == b.size
    np.testing.assert_array_equal(a.body, b.body)
    np.testing.assert_array_equal(a.body_confidence, b.body_confidence)
    assert (a.face is None) == (b.face is None)
    if a.face is not None:
        np.testing.assert_array_equal(a.face, b.face)
        np.testing.assert_array_equal(a.face_confidence, b.face_confidence)


def test_openpose_round_trip_folder_and_file(tmp_path):
    kp = _keypoints()
    save_openpose(tmp_path / "poses", kp)
    files = sorted(p.name for p in (tmp_path / "poses").iterdir())
    assert files == [f"frame_{f:012d}_keypoints.json" for f in range(3)]
    frame = json.loads((tmp_path / "poses" / files[0]).read_text())
    assert len(frame["people"][0]["pose_keypoints_2d"]) == 54
    assert len(frame["people"][0]["face_keypoints_2d"]) == 210
    _assert_same(load_openpose(tmp_path / "poses"), kp)
    save_openpose(tmp_path / "poses.json", kp)
    _assert_same(load_openpose(tmp_path / "poses.json"), kp)
    no_face = _keypoints(face=False)
    save_openpose(tmp_path / "body.json", no_face)
    _assert_same(load_openpose(tmp_path / "body.json"), no_face)


def test_openpose_as_openpose_writes_it(tmp_path):
    """OpenPose files carry no size; natural order; empty people; BODY_25; 70-point faces."""
    rng = np.random.default_rng(1)
    body = rng.uniform(0, 100, (3, 18, 3))
    face = rng.uniform(0, 100, (70, 3))
    frames = [
        {"version": 1.3, "people": [{"pose_keypoints_2d": body[0].ravel().tolist(),
                                     "face_keypoints_2d": face.ravel().tolist()}]},
        {"version": 1.3, "people": []},
        {"version": 1.3, "people": [{"pose_keypoints_2d": body[2].ravel().tolist()}]},
    ]  # fmt: skip
    for index, frame in zip((2, 10, 100), frames, strict=True):
        (tmp_path / f"clip_{index}_keypoints.json").write_text(json.dumps(frame))
    (tmp_path / "notes.json").write_text("not a keypoint file")
    kp = load_openpose(tmp_path, size=(120, 160))
    assert kp.num_frames == 3 and kp.size == (120, 160)
    np.testing.assert_array_equal(kp.body[0], body[0, :, :2])
    np.testing.assert_array_equal(kp.body_confidence[1], 0.0)
    np.testing.assert_array_equal(kp.body[2], body[2, :, :2])
    np.testing.assert_array_equal(kp.face[0], face[:68, :2])
    np.testing.assert_array_equal(kp.face_confidence[1:], 0.0)

    body25 = rng.uniform(0, 100, (25, 3))
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"people": [{"pose_keypoints_2d": body25.ravel().tolist()}]}))
    kp25 = load_openpose(single, size=(120, 160))
    np.testing.assert_array_equal(kp25.body[0], body25[list(BODY25_TO_COCO18), :2])
    assert kp25.face is None

    normalized = tmp_path / "normalized.json"
    person = {"pose_keypoints_2d": [0.5, 0.25, 1.0] * 18}
    normalized.write_text(
        json.dumps([{"canvas_height": 100, "canvas_width": 200, "people": [person]}])
    )
    kpn = load_openpose(normalized, normalized=True)
    assert kpn.size == (100, 200)
    np.testing.assert_allclose(kpn.body[0, 0], [99.5, 24.5])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"version": 1.3}), "no 'people' list"),
        (json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 50}]}), "pose_keypoints_2d has 50"),
        (json.dumps({"people": [{"pose_keypoints_2d": ["a"] * 54}]}), "only numbers"),
        (
            json.dumps(
                {"people": [{"pose_keypoints_2d": [1.0] * 54, "face_keypoints_2d": [1.0] * 9}]}
            ),
            "face_keypoints_2d has 9",
        ),  # fmt: skip
        (json.dumps({"people": [{"pose_keypoints_2d": [1.0, 2.0, -1.0] * 18}]}), "negative"),
        (json.dumps({"people": [5]}), "person must be an object"),
        (json.dumps({"frames": [], "size": [4, 4]}), "non-empty list"),
        (json.dumps({"frames": [{"people": []}], "size": [4]}), "'size' must be"),
        (json.dumps([]), "empty list"),
    ],
)
def test_openpose_bad_file(tmp_path, content, expected):
    path = tmp_path / "bad_keypoints.json"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        load_openpose(path, size=(10, 10))
    message = str(info.value)
    assert expected in message and "bad_keypoints.json" in message and "\n" not in message


def test_openpose_missing_inputs(tmp_path):
    with pytest.raises(InputError, match="no '\\*_keypoints.json' files"):
        load_openpose(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        load_openpose(tmp_path / "nope.json")
    path = tmp_path / "f_keypoints.json"
    path.write_text(json.dumps({"people": []}))
    with pytest.raises(InputError, match="image size unknown"):
        load_openpose(path)


# --------------------------------------------------------------------------- pose maps


def _standing(frames: int = 1) -> DrivingKeypoints:
    body = np.repeat(STANDING[None], frames, axis=0)
    return DrivingKeypoints(body=body, body_confidence=np.ones((frames, 18)), size=SIZE)


def _near(image: np.ndarray, point: np.ndarray, radius: float) -> np.ndarray:
    """Pixels of an (H, W, ...) image within ``radius`` of ``point``."""
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    return image[np.hypot(cols - point[0], rows - point[1]) <= radius]


def test_pose_map_has_no_head():
    maps = pose_maps(_standing(), neck_nose=False)  # the paper's skeleton
    assert maps.shape == (1, 3, *SIZE) and maps.dtype == torch.float32
    assert 0.0 <= float(maps.min()) and float(maps.max()) <= 1.0
    image = maps[0].permute(1, 2, 0).numpy()
    for joint in HEAD_JOINTS:
        assert (_near(image, STANDING[joint], 5.0) == 0).all(), joint
    # limb nose-neck would pass here
    assert (_near(image, (STANDING[0] + STANDING[1]) / 2, 3.0) == 0).all()
    # torso limbs are drawn in their OpenPose colours at 60 %
    for limb, (a, b) in ((6, (1, 8)), (9, (1, 11)), (0, (1, 2))):
        centre = np.rint((STANDING[a] + STANDING[b]) / 2).astype(int)
        expected = np.array([int(c * LIMB_INTENSITY) for c in COLOURS[limb]]) / 255
        np.testing.assert_allclose(image[centre[1], centre[0]], expected, atol=1e-6)
    # the neck joint in full colour
    np.testing.assert_allclose(image[80, 96], np.array(COLOURS[1]) / 255, atol=1e-6)
    full = pose_maps(_standing(), head=True)[0].permute(1, 2, 0).numpy()
    assert (_near(full, STANDING[0], 2.0) > 0).any()
    # the release's (the default): the neck-nose limb, no eyes or ears
    release = pose_maps(_standing())[0].permute(1, 2, 0).numpy()
    centre = np.rint((STANDING[0] + STANDING[1]) / 2).astype(int)
    expected = np.array([int(c * LIMB_INTENSITY) for c in COLOURS[NECK_NOSE]]) / 255
    np.testing.assert_allclose(release[centre[1], centre[0]], expected, atol=1e-6)
    for joint in (14, 15, 16, 17):
        assert (_near(release, STANDING[joint], 3.0) == 0).all(), joint


def test_pose_map_follows_pose_and_visibility():
    kp = _standing(2)
    kp.body[1, 4] = [20.0, 90.0]  # raise the right wrist sideways in frame 1
    maps = pose_maps(kp)
    assert not torch.equal(maps[0], maps[1])
    changed = (maps[0] != maps[1]).any(dim=0).nonzero()
    assert changed[:, 0].min() >= 80  # the head area is untouched
    kp.body_confidence[1, 3] = 0.0  # right elbow missing: no upper or lower right arm
    image = pose_maps(kp)[1].permute(1, 2, 0).numpy()
    assert (_near(image, (STANDING[2] + STANDING[3]) / 2, 2.0) == 0).all()
    assert (_near(image, STANDING[3], 3.0) == 0).all()
    blank = _standing()
    blank.body_confidence[:] = 0.0
    assert float(pose_maps(blank).abs().sum()) == 0.0


def test_pose_map_line_width_scales_with_size():
    def drawn(factor: int) -> int:
        kp = _standing().resized((SIZE[0] * factor, SIZE[1] * factor))
        return int((pose_maps(kp) > 0).any(dim=1).sum())

    assert 3.6 < drawn(4) / drawn(2) < 4.4


# --------------------------------------------------------------------------- S-Face condition


def test_face_condition_channels_and_regions():
    size = (200, 200)
    frames = torch.rand(2, 3, *size) * 0.9 + 0.1  # never zero
    landmarks = np.stack([_face68((100, 100)), _face68((100, 100), mouth_open=0.15)])
    cond = face_condition(frames, landmarks)
    assert cond.shape == (2, 6, *size) and cond.dtype == torch.float32
    for f in range(2):
        boxes = face_boxes(landmarks[f])
        assert set(boxes) == {"right_eye", "left_eye", "mouth", "face"}
        local = np.zeros(size, dtype=bool)
        for name in ("right_eye", "left_eye", "mouth"):
            local |= box_mask(boxes[name], size)
        face = box_mask(boxes["face"], size)
        assert local.sum() < face.sum() < size[0] * size[1] / 2
        assert (local <= face).all()
        loc = torch.from_numpy(local)
        fac = torch.from_numpy(face)
        assert torch.equal(cond[f, :3][:, loc], frames[f][:, loc])
        assert (cond[f, :3][:, ~loc] == 0).all()
        assert torch.equal(cond[f, 3:][:, fac], frames[f][:, fac])
        assert (cond[f, 3:][:, ~fac] == 0).all()
        # every eye and mouth landmark lies in the local patches
        for index in (RIGHT_EYE, LEFT_EYE, MOUTH):
            pix = np.rint(landmarks[f][list(index)]).astype(int)
            assert local[pix[:, 1], pix[:, 0]].all()
    # the open mouth enlarges the mouth patch
    assert (cond[1, :3] != 0).sum() > (cond[0, :3] != 0).sum()


def test_face_condition_moves_with_landmarks():
    size = (160, 200)
    frames = torch.rand(2, 3, *size) * 0.9 + 0.1
    frames[1] = frames[0]
    base = _face68((70, 70), scale=30)
    cond = face_condition(frames, np.stack([base, base + [25, 12]]))
    mask0 = (cond[0] != 0).any(dim=0)
    mask1 = (cond[1] != 0).any(dim=0)
    assert torch.equal(mask1[12:, 25:], mask0[:-12, :-25])
    assert not mask1[:12].any() and not mask1[:, :25].any()


def test_face_condition_mediapipe_layout_and_missing_faces():
    size = (200, 200)
    frames = torch.rand(1, 3, *size) * 0.9 + 0.1
    face = _face68((100, 100))
    mesh = np.full((1, 468, 2), 1e4)  # vertices that are not mapped lie far away
    mesh[0, list(MEDIAPIPE_TO_IBUG68)] = face
    assert len(set(MEDIAPIPE_TO_IBUG68)) == 68
    assert torch.equal(face_condition(frames, mesh), face_condition(frames, face[None]))

    kp = DrivingKeypoints(
        np.zeros((1, 18, 2)), np.zeros((1, 18)), size, face[None], np.ones((1, 68))
    )
    assert torch.equal(
        face_condition_from_keypoints(frames, kp), face_condition(frames, face[None])
    )
    kp.face_confidence[:] = 0.0  # no visible face: blank
    assert float(face_condition_from_keypoints(frames, kp).abs().sum()) == 0.0
    kp.face = kp.face_confidence = None
    blank = face_condition_from_keypoints(frames, kp)
    assert blank.shape == (1, 6, *size) and float(blank.abs().sum()) == 0.0
    # eyes hidden: only the mouth patch and the face box remain
    visible = np.ones((1, 68), dtype=bool)
    visible[0, 17:48] = False
    cond = face_condition(frames, face[None], visible)
    boxes = face_boxes(face, visible[0])
    assert set(boxes) == {"mouth", "face"}
    assert torch.equal((cond[0, 0] != 0), torch.from_numpy(box_mask(boxes["mouth"], size)))


# --------------------------------------------------------------------------- alignment


def _reference() -> DrivingKeypoints:
    face = _face68((96, 30), scale=12)[None]
    return DrivingKeypoints(STANDING[None], np.ones((1, 18)), SIZE, face, np.ones((1, 68)))


def _driving(scale: float, shift, frames: int = 12) -> DrivingKeypoints:
    """A scaled and shifted copy of the reference; frames 8+ move on (outside the first 8)."""
    ref = _reference()
    body = np.repeat(scale * ref.body + shift, frames, axis=0)
    body[8:] += [[5.0, -3.0]]
    face = np.repeat(scale * ref.face + shift, frames, axis=0)
    return DrivingKeypoints(body, np.ones((frames, 18)), (480, 640), face, np.ones((frames, 68)))


@pytest.mark.parametrize(("scale", "shift"), [(1.7, (130.0, -40.0)), (0.45, (-12.5, 200.25))])
def test_alignment_recovers_similarity(scale, shift):
    ref = _reference()
    driving = _driving(scale, shift)
    alignment, aligned = align_to_reference(driving, ref)
    assert alignment.measure == "height" and alignment.anchor == "neck"
    assert abs(alignment.scale - 1 / scale) < 1e-6
    np.testing.assert_allclose(alignment.offset, -np.asarray(shift) / scale, atol=1e-6)
    assert aligned.size == ref.size
    np.testing.assert_allclose(aligned.body[:8], np.repeat(ref.body, 8, axis=0), atol=1e-6)
    np.testing.assert_allclose(aligned.face[:8], np.repeat(ref.face, 8, axis=0), atol=1e-6)
    # later motion is kept, scaled
    moved = np.full((4, 18, 2), [5.0, -3.0]) / scale
    np.testing.assert_allclose(aligned.body[8:] - ref.body, moved, atol=1e-6)
    np.testing.assert_array_equal(aligned.body_confidence, driving.body_confidence)


def test_alignment_with_missing_joints():
    ref = _reference()
    scale, shift = 1.3, np.array([40.0, 25.0])
    driving = _driving(scale, shift)
    driving.body_confidence[:, [10, 13]] = 0.0  # no ankles: torso only
    alignment = estimate_alignment(driving, ref)
    assert alignment.measure == "torso" and abs(alignment.scale - 1 / scale) < 1e-6
    driving.body_confidence[:, 1] = 0.0  # no neck: shoulders and mid-hip anchor
    alignment = estimate_alignment(driving, ref)
    assert (alignment.measure, alignment.anchor) == ("shoulders", "mid_hip")
    assert abs(alignment.scale - 1 / scale) < 1e-6
    np.testing.assert_allclose(alignment.apply(driving.body[0]), ref.body[0], atol=1e-6)
    # a single flaky frame among the first ones does not move the estimate (median)
    flaky = _driving(scale, shift)
    flaky.body[2] = flaky.body[2] * 3.0
    assert abs(estimate_alignment(flaky, ref).scale - 1 / scale) < 1e-6
    # only the arms shared: scale 1, centroid anchor
    arms = _driving(scale, shift)
    arms.body_confidence[:, [1, 2, 5, 8, 11]] = 0.0
    alignment = estimate_alignment(arms, ref)
    assert (alignment.measure, alignment.anchor, alignment.scale) == ("none", "centroid", 1.0)
    arms.body_confidence[:] = 0.0
    with pytest.raises(InputError, match="cannot align"):
        estimate_alignment(arms, ref)


def test_body_measures():
    kp = _standing()
    measures = body_measures(kp.body, kp.body_visible())
    torso = np.hypot(*(STANDING[1] - (STANDING[8] + STANDING[11]) / 2))
    assert measures["torso"][0] == pytest.approx(torso)
    assert measures["shoulders"][0] == pytest.approx(52.0, abs=1e-9)
    assert measures["height"][0] > torso


# --------------------------------------------------------------------------- toy world


def test_toy_figure_keypoints_convert():
    config = WorldConfig(
        size=(48, 64), num_frames=3, figures=True, figure_prob=1.0, occluder_prob=0.0,
        water_prob=0.0, camera_move_prob=0.0, max_objects=1,
    )  # fmt: skip
    clip = make_clip(0, config)
    kp = from_toy_clip(clip)
    assert kp.num_frames == 3 and kp.size == (48, 64) and kp.face is None
    np.testing.assert_array_equal(kp.body, clip.keypoints[0])
    np.testing.assert_array_equal(kp.body_visible(), clip.keypoint_visible[0])
    maps = pose_maps(kp)
    assert maps.shape == (3, 3, 48, 64) and float(maps.sum()) > 0
    with pytest.raises(InputError, match="figure 1 requested"):
        from_toy_clip(clip, figure=1)


# --------------------------------------------------------------------------- extraction


def test_mediapipe_mappings():
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 100, (2, 33, 2))
    vis = rng.uniform(0.6, 1.0, (2, 33))
    vis[1, 16] = 0.2
    body, conf = pose33_to_coco18(points, vis)
    np.testing.assert_allclose(body[:, 1], (points[:, 11] + points[:, 12]) / 2)
    np.testing.assert_array_equal(body[:, 2], points[:, 12])  # right shoulder
    np.testing.assert_array_equal(body[:, 11], points[:, 23])  # left hip
    assert conf[1, 4] == 0.0 and conf[0, 4] == vis[0, 16]
    assert conf[0, 1] == min(vis[0, 11], vis[0, 12])
    np.testing.assert_allclose(normalized_to_pixels([[0.0, 1.0]], (100, 200)), [[-0.5, 99.5]])


def test_missing_mediapipe_is_an_input_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(
        InputError, match="mediapipe is not installed; pip install 'anima\\[pose\\]'"
    ):
        require_mediapipe()
    with pytest.raises(InputError):
        extract_keypoints(torch.zeros(1, 3, 8, 8))


def _drawn_person(size=(384, 256), shift=(0, 0)):
    """A cartoon person: capsule limbs, a shirt, a face with eyes, brows and a mouth."""
    h, w = size
    img = np.full((h, w, 3), (200, 210, 220), np.uint8)
    joints = {1: (128, 110), 2: (100, 114), 5: (156, 114), 3: (92, 165), 6: (164, 165),
              4: (88, 212), 7: (168, 212), 8: (112, 205), 11: (144, 205), 9: (110, 275),
              12: (146, 275), 10: (108, 345), 13: (148, 345)}  # fmt: skip
    joints = {k: (x + shift[0], y + shift[1]) for k, (x, y) in joints.items()}
    skin, shirt, pants, dark = (225, 180, 150), (40, 80, 180), (50, 50, 60), (40, 30, 20)
    cv2.fillConvexPoly(img, np.array([joints[2], joints[5], joints[11], joints[8]]), shirt)
    limbs = [(8, 9, 11, pants), (9, 10, 9, pants), (11, 12, 11, pants), (12, 13, 9, pants),
             (2, 3, 9, shirt), (3, 4, 7, skin), (5, 6, 9, shirt), (6, 7, 7, skin)]  # fmt: skip
    for a, b, r, c in limbs:
        cv2.line(img, joints[a], joints[b], c, 2 * r, cv2.LINE_AA)
        for p in (joints[a], joints[b]):
            cv2.circle(img, p, r, c, -1, cv2.LINE_AA)
    neck = joints[1]
    cv2.line(img, neck, (neck[0], neck[1] - 20), skin, 14, cv2.LINE_AA)
    hx, hy = neck[0], neck[1] - 42
    cv2.ellipse(img, (hx, hy), (20, 25), 0, 0, 360, skin, -1, cv2.LINE_AA)
    cv2.ellipse(img, (hx, hy - 14), (21, 14), 0, 180, 360, dark, -1, cv2.LINE_AA)
    for ex in (-8, 8):
        cv2.circle(img, (hx + ex, hy - 3), 3, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(img, (hx + ex, hy - 3), 2, dark, -1, cv2.LINE_AA)
        cv2.line(img, (hx + ex - 5, hy - 10), (hx + ex + 5, hy - 10), dark, 2, cv2.LINE_AA)
    cv2.ellipse(img, (hx, hy + 12), (8, 3), 0, 0, 360, (150, 60, 60), -1, cv2.LINE_AA)
    cv2.line(img, (hx, hy), (hx - 2, hy + 6), (180, 130, 110), 2, cv2.LINE_AA)
    frame = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    return frame, joints, (hx, hy)


def test_mediapipe_finds_a_drawn_person():
    pytest.importorskip("mediapipe")
    first, joints, head = _drawn_person()
    second, moved, _ = _drawn_person(shift=(30, 10))
    kp = extract_keypoints(torch.stack([first, second]), static_image_mode=True)
    assert kp.size == (384, 256)
    for f, truth in enumerate((joints, moved)):
        for joint in (1, 2, 5, 8, 11):  # neck, shoulders, hips: clearly drawn
            assert kp.body_confidence[f, joint] > 0.5
            assert np.hypot(*(kp.body[f, joint] - truth[joint])) < 12.0, (f, joint)
    assert kp.face is not None and (kp.face_confidence == 1.0).all()
    centre = kp.face[0, list(LEFT_EYE + RIGHT_EYE)].mean(axis=0)
    assert np.hypot(*(centre - (head[0], head[1] - 3))) < 8.0
    shift = kp.body[1, [1, 2, 5, 8, 11]].mean(0) - kp.body[0, [1, 2, 5, 8, 11]].mean(0)
    np.testing.assert_allclose(shift, [30, 10], atol=4.0)
