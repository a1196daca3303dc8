"""The studio's rotation editing (anima.studio.state, draw): each path point's rotation (the
spec's keyframe ``rotation``: degrees about the camera's x, y, z as pitch, yaw, roll), an even
turn over the whole path (I2V3D Fig. 1's 180-degree turn), validation, undo, how the other path
edits keep rotations, the canvas showing them, and the preview rendering the turn."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from anima.errors import InputError
from anima.studio import draw, runs, state
from anima.studio.perception import Perception
from anima.studio.state import Draft
from anima.studio.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
CAT = REPO / "examples" / "chelsea.png"  # 451x300


@pytest.fixture
def draft(tmp_path) -> Draft:
    """A draft on a 120x200 photo with object 1 and a path of three points (the last one
    selected)."""
    draft = state.set_image(state.start(tmp_path), "photo.png", (120, 200), working_size=False)
    draft = state.add_object(draft, 50, 60)
    for x, y, depth in ((50, 60, 5.0), (100, 50, 8.0), (150, 40, 12.0)):
        draft = state.add_path_point(draft, x, y, depth)
    return draft


def rotations(draft: Draft) -> list[tuple[float, float, float]]:
    return [state.rotation_of(k) for k in draft.path]


def test_set_rotation_edits_the_selected_point_as_one_undo_step(draft):
    turned = state.set_rotation(draft, yaw=90)
    assert rotations(turned) == [(0, 0, 0), (0, 0, 0), (0, 90, 0)]
    assert turned.path[2]["rotation"] == [0.0, 90.0, 0.0]
    assert "rotation" not in turned.path[0]  # zero stays the spec's default: left out
    assert len(turned.history) == len(draft.history) + 1
    assert state.undo(turned).spec == draft.spec
    # None leaves an axis; the selected point is the depth slider's
    both = state.set_rotation(state.select_keyframe(turned, 1), pitch=-15.5, roll=30)
    assert rotations(both) == [(0, 0, 0), (-15.5, 0, 30), (0, 90, 0)]
    assert state.set_rotation(both, pitch=-15.5) is both  # no change, no undo step
    back_to_zero = state.set_rotation(both, pitch=0, roll=0)
    assert "rotation" not in back_to_zero.path[1]
    spec = state.to_spec(turned)
    assert spec.objects[0].trajectory[2].rotation == (0.0, 90.0, 0.0)
    assert spec.objects[0].trajectory[0].rotation is None


def test_a_rotation_alone_makes_the_object_move(tmp_path):
    draft = state.set_image(state.start(tmp_path), "photo.png", (120, 200), working_size=False)
    draft = state.add_object(draft, 50, 60)
    draft = state.add_path_point(state.add_path_point(draft, 50, 60, 5.0), 50, 60, 5.0)
    assert not state.to_spec(draft).objects[0].moves  # the path stays put
    assert state.to_spec(state.set_rotation(draft, yaw=45)).objects[0].moves


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ({"yaw": 721}, r"a yaw angle must be -720\.\.720 degrees, got 721"),
        ({"pitch": -800.0}, "a pitch angle must be -720..720 degrees"),
        ({"roll": float("nan")}, "a roll angle must be -720..720 degrees, got nan"),
        ({"yaw": float("inf")}, "a yaw angle must be"),
        ({"yaw": "ninety"}, "a yaw angle must be a number of degrees, got 'ninety'"),
    ],
)
def test_bad_angles_are_messages_and_change_nothing(draft, axes, message):
    before = copy.deepcopy(draft)
    with pytest.raises(InputError, match=message) as caught:
        state.set_rotation(draft, **axes)
    assert caught.value.where == state.WHERE  # the page shows the message alone
    assert draft == before
    with pytest.raises(InputError, match="-720..720 degrees"):
        state.turn_object(draft, 1000)


def test_rotation_needs_an_object_and_a_path_point(draft, tmp_path):
    empty = state.set_image(state.start(tmp_path), "photo.png", (120, 200), working_size=False)
    with pytest.raises(InputError, match="select an object first"):
        state.set_rotation(empty, yaw=10)
    with pytest.raises(InputError, match="select an object first"):
        state.turn_object(empty, 180)
    one = state.add_object(empty, 10, 10)
    with pytest.raises(InputError, match="no path point yet"):
        state.set_rotation(one, yaw=10)
    single = state.add_path_point(one, 10, 10, 4.0)
    with pytest.raises(InputError, match="needs a path of two points or more"):
        state.turn_object(single, 180)
    with pytest.raises(InputError, match="unknown axis 'spin'"):
        state.turn_object(draft, 180, axis="spin")


def test_turn_object_turns_evenly_by_time(draft):
    four = state.add_path_point(draft, 180, 30, 15.0)  # t = 0, 1/3, 2/3, 1
    turned = state.turn_object(four, 180)
    assert [k["t"] for k in turned.path] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert rotations(turned) == [(0, 0, 0), (0, 60, 0), (0, 120, 0), (0, 180, 0)]
    assert len(turned.history) == len(four.history) + 1
    assert state.undo(turned).spec == four.spec
    assert turned.keyframe == four.keyframe and turned.active == four.active
    # other axes stay; the turn axis is replaced, not added to
    tipped = state.set_rotation(state.select_keyframe(turned, 1), pitch=10, yaw=5)
    again = state.turn_object(tipped, -90)
    assert rotations(again) == [(0, 0, 0), (10, -30, 0), (0, -60, 0), (0, -90, 0)]
    rolled = state.turn_object(again, 100, axis="roll")
    assert rotations(rolled)[1] == (10, -30, 33.33) and rotations(rolled)[3] == (0, -90, 100)
    assert state.turn_object(rolled, 100, axis="roll") is rolled  # no change, no undo step


def test_turn_object_follows_a_loaded_specs_times(draft):
    data = json.loads(json.dumps(draft.spec))
    for key, t in zip(data["objects"][0]["trajectory"], (0.2, 0.3, 0.7), strict=True):
        key["t"] = t
    loaded = state.load(draft, data, (120, 200))
    turned = state.turn_object(loaded, 200)
    assert rotations(turned) == [(0, 0, 0), (0, 40, 0), (0, 200, 0)]


def test_turns_round_trip_through_the_spec(draft, tmp_path):
    turned = state.set_rotation(state.select_keyframe(state.turn_object(draft, 180), 0), roll=5)
    spec = state.to_spec(turned)
    assert [k.rotation for k in spec.objects[0].trajectory] == [
        (0.0, 0.0, 5.0),
        (0.0, 90.0, 0.0),
        (0.0, 180.0, 0.0),
    ]
    text = state.to_json(turned)
    assert json.loads(text)["objects"][0]["trajectory"][2]["rotation"] == [0.0, 180.0, 0.0]
    again = state.from_json(text, tmp_path, (120, 200))
    assert again.spec == turned.spec and rotations(again) == rotations(turned)


def test_other_path_edits_keep_rotations(draft):
    turned = state.turn_object(draft, 180)  # 0, 90, 180
    # a new point holds the orientation of the point before it, so the turn is not undone
    longer = state.add_path_point(turned, 190, 30, 14.0)
    assert rotations(longer) == [(0, 0, 0), (0, 90, 0), (0, 180, 0), (0, 180, 0)]
    assert [k["t"] for k in longer.path] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    # removing a point re-spaces the others in time; each keeps its own rotation
    fewer = state.remove_path_point(state.select_keyframe(longer, 1))
    assert [(k["x"], k["t"]) for k in fewer.path] == [(50, 0), (150, 0.5), (190, 1)]
    assert rotations(fewer) == [(0, 0, 0), (0, 180, 0), (0, 180, 0)]
    # a depth edit leaves the rotation alone
    deeper = state.set_depth(fewer, 30.0)
    assert deeper.path[1] == {**fewer.path[1], "depth": 30.0}
    # a new path after clearing starts unturned
    cleared = state.add_path_point(state.clear_path(fewer), 60, 60, 5.0)
    assert rotations(cleared) == [(0, 0, 0)]
    # another object's path is untouched by the active object's turns
    two = state.add_path_point(state.add_object(turned, 20, 100), 20, 100, 3.0)
    two = state.add_path_point(two, 40, 100, 3.0)
    spun = state.turn_object(two, 45)
    assert rotations(state.activate(spun, 1)) == rotations(turned)
    assert rotations(spun) == [(0, 0, 0), (0, 45, 0)]


def test_rotations_in_any_order_of_edits_give_a_valid_spec_or_a_message(draft):
    """Rotations mixed with the other path edits at random: each edit returns a valid draft
    or raises InputError and leaves the draft as it was."""
    rng = random.Random(1)

    def angle() -> float:
        return rng.choice([rng.uniform(-720, 720), rng.uniform(-2000, 2000), float("nan")])

    edits = [
        lambda d: state.set_rotation(d, *(rng.choice([None, angle()]) for _ in range(3))),
        lambda d: state.turn_object(d, angle(), rng.choice([*state.ROTATION_AXES, "spin"])),
        lambda d: state.add_path_point(d, rng.uniform(0, 199), rng.uniform(0, 119), 6.0),
        lambda d: state.remove_path_point(d),
        lambda d: state.select_keyframe(d, rng.randrange(-1, 5)),
        lambda d: state.set_depth(d, rng.uniform(0.5, 30)),
        lambda d: state.clear_path(d),
        lambda d: state.undo(d),
    ]
    refused = 0
    for _ in range(300):
        before = copy.deepcopy(draft)
        try:
            draft = rng.choice(edits)(draft)
        except InputError:
            refused += 1
            assert draft == before
            continue
        spec = state.to_spec(draft)  # valid at every step
        for key in spec.objects[0].trajectory if spec.objects else []:
            assert key.rotation != (0.0, 0.0, 0.0)  # a zero rotation is left out
            assert key.rotation is None or all(-720 <= a <= 720 for a in key.rotation)
    assert 30 < refused < 270


def test_keyframe_choices_show_nonzero_rotations(draft):
    turned = state.set_rotation(state.turn_object(draft, 180), pitch=-10)
    labels = [label for label, _ in state.keyframe_choices(turned)]
    assert labels == [
        "1: (50, 60) depth 5",
        "2: (100, 50) depth 8, yaw 90°",
        "3: (150, 40) depth 12, pitch -10°, yaw 180°",
    ]
    assert state.rotation_text(None) == "" and state.rotation_text([0, 0, 7.5]) == "roll 7.5°"


def test_the_canvas_shows_a_turned_point(tmp_path):
    draft = state.set_image(state.start(tmp_path), "photo.png", (200, 400), working_size=False)
    draft = state.add_object(draft, 60, 150)
    draft = state.add_path_point(state.add_path_point(draft, 60, 150, 5.0), 250, 60, 9.0)
    image = torch.full((3, 200, 400), 0.5)
    plain = draw.canvas(image, None, draft.objects, 1, 1)
    shown = draw.canvas(image, None, state.turn_object(draft, 180).objects, 1, 1)
    changed = np.argwhere((shown != plain).any(axis=-1))  # (row, column)
    assert len(changed)
    arcs = np.abs(changed - [60, 250]).max(axis=1) <= 20  # about the turned point 2
    label = (changed[:, 1] >= 269) & (np.abs(changed[:, 0] - 55) <= 8)  # ", yaw 180°"
    assert arcs.sum() > 30 and label.sum() > 30
    assert (arcs | label).all()  # nothing else changed: point 1 is not turned


def test_the_preview_renders_the_turn(tmp_path):
    workspace = Workspace(tmp_path / "studio", max_upload_bytes=2_000_000, max_side=400)
    try:
        perception = Perception()
        draft = state.add_object(workspace.add_image(None, CAT), 180, 130)
        scene = perception.scene(state.to_spec(draft), Path(draft.workdir) / "cache")
        for x, y in ((180, 130), (240, 120)):
            draft = state.add_path_point(draft, x, y, perception.depth_at(scene, x, y))
        draft = state.set_settings(draft, num_frames=6)
        still = runs.preview(draft, perception).frames
        turned = runs.preview(state.turn_object(draft, 180), perception).frames
        assert torch.equal(still[0], turned[0])  # frame 0 is the photo
        # halfway (near 90 degrees) the object, a flat surface here, is seen nearly edge-on
        changed = ((still[3] - turned[3]).abs().amax(0) > 0.05).sum()
        assert changed > 1000
    finally:
        workspace.close()
