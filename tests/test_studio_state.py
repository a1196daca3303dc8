"""The studio's state logic (anima.studio.state): pure functions on a draft, no gradio."""

from __future__ import annotations

import copy
import json
import random

import pytest

from anima.errors import InputError
from anima.spec import MotionSpec
from anima.studio import state
from anima.studio.state import CAMERA_PRESETS, Draft


@pytest.fixture
def draft(tmp_path) -> Draft:
    """A draft on a 120x200 photo (the file is not needed by the state functions)."""
    return state.set_image(state.start(tmp_path), "photo.png", (120, 200), working_size=False)


def with_path(draft: Draft) -> Draft:
    draft = state.add_object(draft, 50, 60)
    for x, y, depth in ((50, 60, 5.0), (100, 50, 8.0), (150, 40, 12.0)):
        draft = state.add_path_point(draft, x, y, depth)
    return draft


def test_new_draft_has_no_photo_and_edits_ask_for_one(tmp_path):
    empty = state.start(tmp_path)
    assert not empty.has_image and empty.objects == [] and empty.path == []
    for edit in (
        lambda d: state.add_object(d, 1, 1),
        lambda d: state.add_path_point(d, 1, 1, 3.0),
        lambda d: state.set_depth(d, 3.0),
        lambda d: state.set_camera(d, "dolly in"),
        lambda d: state.to_json(d),
        lambda d: state.set_settings(d, num_frames=8),
    ):
        with pytest.raises(InputError, match="upload a photo first"):
            edit(empty)
    with pytest.raises(InputError, match="nothing to undo"):
        state.undo(empty)


def test_set_image_starts_a_valid_spec_naming_its_method(draft):
    spec = state.to_spec(draft)
    assert isinstance(spec, MotionSpec)
    assert spec.image == "photo.png" and spec.method == "coarse" and spec.size is None
    assert draft.size == (120, 200) and draft.active is None
    resized = state.set_image(draft, "big.png", (384, 768), working_size=True)
    assert state.to_spec(resized).size == (384, 768)


def test_path_point_before_an_object_is_a_message_and_changes_nothing(draft):
    before = copy.deepcopy(draft)
    with pytest.raises(InputError, match="select an object first"):
        state.add_path_point(draft, 10, 10, 4.0)
    assert draft == before


def test_objects_get_new_ids_and_become_active(draft):
    one = state.add_object(draft, 10, 20)
    two = state.add_object(one, 30.26, 40)
    assert [o["id"] for o in two.objects] == [1, 2]
    assert two.active == 2 and two.objects[1]["points"] == [[30.3, 40.0]]
    assert state.activate(two, 1).active == 1
    with pytest.raises(InputError, match="no object 7"):
        state.activate(two, 7)


def test_clicks_outside_the_photo_are_refused(draft):
    with pytest.raises(InputError, match="outside the 200x120 image"):
        state.add_object(draft, 200, 10)
    one = state.add_object(draft, 10, 10)
    with pytest.raises(InputError, match="outside"):
        state.add_path_point(one, -1, 10, 3.0)


def test_path_points_are_spaced_evenly_and_the_last_gets_the_slider(draft):
    drawn = with_path(draft)
    path = drawn.path
    assert [k["t"] for k in path] == [0.0, 0.5, 1.0]
    assert [k["depth"] for k in path] == [5.0, 8.0, 12.0]
    assert drawn.keyframe == 2
    spec = state.to_spec(drawn)
    assert spec.objects[0].moves and spec.moved_ids == {1}


def test_set_depth_edits_the_selected_point_only(draft):
    drawn = with_path(draft)
    deeper = state.set_depth(drawn, 30.0)
    assert [k["depth"] for k in deeper.path] == [5.0, 8.0, 30.0]
    first = state.set_depth(state.select_keyframe(deeper, 0), 2.5)
    assert [k["depth"] for k in first.path] == [2.5, 8.0, 30.0]
    assert state.set_depth(first, 2.5) is first  # no change, no undo step
    with pytest.raises(InputError, match="no point 4"):
        state.select_keyframe(first, 3)
    for bad in (0.0, -1.0, float("nan"), float("inf"), None):
        with pytest.raises(InputError, match="positive distance"):
            state.set_depth(first, bad)


def test_depth_needs_a_path_point(draft):
    one = state.add_object(draft, 10, 10)
    with pytest.raises(InputError, match="no path point yet"):
        state.set_depth(one, 4.0)


def test_refine_adds_clicks_but_not_to_a_box(draft, tmp_path):
    one = state.refine_object(state.add_object(draft, 10, 10), 20, 25)
    assert one.active_object["points"] == [[10.0, 10.0], [20.0, 25.0]]
    data = dict(draft.spec)
    data["objects"] = [{"id": 4, "box": [10, 10, 50, 60]}]
    boxed = state.load(draft, data, (120, 200))
    assert boxed.active == 4
    with pytest.raises(InputError, match="selected by a box"):
        state.refine_object(boxed, 30, 30)


def test_polygon_corners_then_close_make_an_exact_object(draft):
    one = state.add_object(draft, 10, 10)
    corners = state.add_polygon_corner(one, 50, 40)
    for x, y in ((90.04, 40), (70, 80)):
        corners = state.add_polygon_corner(corners, x, y)
    assert corners.polygon == ((50.0, 40.0), (90.0, 40.0), (70.0, 80.0))
    assert corners.spec == one.spec and corners.active == one.active  # not in the spec yet
    closed = state.close_polygon(corners, label="sign")
    assert closed.polygon == () and closed.active == 2
    assert closed.active_object == {
        "id": 2,
        "label": "sign",
        "polygon": [[50.0, 40.0], [90.0, 40.0], [70.0, 80.0]],
        "trajectory": [],
    }
    assert state.to_spec(closed).objects[1].polygon == [(50.0, 40.0), (90.0, 40.0), (70.0, 80.0)]
    assert "(polygon, 0 path points)" in state.object_choices(closed)[1][0]
    with pytest.raises(InputError, match="selected by a polygon"):
        state.refine_object(closed, 60, 50)
    # the new object takes a path like any other
    moved = state.add_path_point(closed, 70, 55, 6.0)
    assert moved.active_object["trajectory"][0]["x"] == 70.0


def test_polygon_undo_takes_back_the_close_and_then_each_corner(draft):
    corners = draft
    for x, y in ((10, 10), (60, 10), (35, 50), (20, 40)):
        corners = state.add_polygon_corner(corners, x, y)
    closed = state.close_polygon(corners)
    reopened = state.undo(closed)
    assert reopened.objects == [] and len(reopened.polygon) == 4
    assert state.undo(reopened).polygon == ((10.0, 10.0), (60.0, 10.0), (35.0, 50.0))
    cancelled = state.cancel_polygon(corners)
    assert cancelled.polygon == () and state.undo(cancelled).polygon == corners.polygon
    # a new photo starts without the outline; undo brings both back
    other = state.set_image(corners, "other.png", (90, 160), working_size=False)
    assert other.polygon == () and state.undo(other).polygon == corners.polygon


def test_polygon_mistakes_are_messages_and_change_nothing(draft):
    with pytest.raises(InputError, match="upload a photo first"):
        state.add_polygon_corner(state.start(draft.workdir), 1, 1)
    with pytest.raises(InputError, match="outside the 200x120 image"):
        state.add_polygon_corner(draft, 250, 10)
    two = state.add_polygon_corner(state.add_polygon_corner(draft, 10, 10), 50, 10)
    before = copy.deepcopy(two)
    with pytest.raises(InputError, match="at least 3 corners: click 1 more"):
        state.close_polygon(two)
    line = state.add_polygon_corner(two, 90, 10)
    with pytest.raises(InputError, match="lie on one line"):
        state.close_polygon(line)
    with pytest.raises(InputError, match="no polygon being drawn"):
        state.cancel_polygon(draft)
    assert two == before


def test_remove_point_clear_path_and_remove_object(draft):
    drawn = with_path(draft)
    fewer = state.remove_path_point(state.select_keyframe(drawn, 1))
    assert [(k["x"], k["t"]) for k in fewer.path] == [(50.0, 0.0), (150.0, 1.0)]
    assert fewer.keyframe == 1
    cleared = state.clear_path(fewer)
    assert cleared.path == [] and cleared.keyframe is None
    two = state.add_object(cleared, 100, 100)
    back_to_one = state.remove_object(two)
    assert [o["id"] for o in back_to_one.objects] == [1] and back_to_one.active == 1
    none = state.clear_objects(state.set_camera(back_to_one, "pan left"))
    assert none.objects == [] and "camera" not in none.spec and none.active is None


def test_undo_walks_back_every_edit(draft):
    drawn = with_path(draft)
    deeper = state.set_depth(drawn, 30.0)
    assert state.undo(deeper).spec == drawn.spec
    steps = deeper
    while steps.history:
        steps = state.undo(steps)
    assert steps.spec is None  # before the photo
    assert len(deeper.history) == 6  # photo, object, 3 points, depth


def test_history_is_bounded(draft):
    one = state.add_object(draft, 10, 10)
    for i in range(state.HISTORY_LIMIT + 10):
        one = state.add_path_point(one, 10 + i % 100, 10, 5.0)
    assert len(one.history) == state.HISTORY_LIMIT


def test_a_new_photo_clears_objects_keeps_settings_and_undo_returns(draft):
    drawn = state.set_settings(state.set_camera(with_path(draft), "dolly in", 2.0), 24, 12, 7)
    other = state.set_image(drawn, "other.jpg", (90, 160), working_size=False)
    assert other.objects == [] and other.size == (90, 160) and other.active is None
    spec = other.spec
    assert (spec["num_frames"], spec["fps"], spec["seed"]) == (24, 12.0, 7)
    assert spec["camera"] == {"type": "dolly", "distance": 0.4}
    back = state.undo(other)
    assert back.spec == drawn.spec and back.size == (120, 200) and back.active == 1


@pytest.mark.parametrize("preset", list(CAMERA_PRESETS))
@pytest.mark.parametrize("strength", [0.5, 1.0, 2.5])
def test_camera_presets_round_trip(draft, preset, strength):
    moved = state.set_camera(draft, preset, strength)
    state.to_spec(moved)  # valid
    name, found = state.camera_preset(moved)
    if preset == "static":
        assert (name, "camera" in moved.spec) == ("static", False)
    else:
        assert (name, found) == (preset, strength)


def test_camera_preset_values_and_errors(draft):
    assert state.set_camera(draft, "zoom in", 2.0).spec["camera"]["factor"] == pytest.approx(1.69)
    assert state.set_camera(draft, "orbit left", 1.5).spec["camera"]["degrees"] == -15.0
    with pytest.raises(InputError, match="unknown camera preset"):
        state.set_camera(draft, "barrel roll")
    with pytest.raises(InputError, match="strength"):
        state.set_camera(draft, "pan left", 10.0)
    keyed = state.load(
        draft,
        {**draft.spec, "camera": {"type": "keyframes", "keyframes": [{"t": 0}]}},
        (120, 200),
    )
    assert state.camera_preset(keyed) == ("custom", 1.0)


def test_settings_are_validated_like_the_spec(draft):
    changed = state.set_settings(draft, num_frames=8, fps=4, seed=3, prompt="a cat")
    assert state.to_spec(changed).num_frames == 8 and changed.spec["prompt"] == "a cat"
    with pytest.raises(InputError, match="num_frames: must be >= 2"):
        state.set_settings(draft, num_frames=1)
    with pytest.raises(InputError, match="whole number"):
        state.set_settings(draft, seed=1.5)
    assert state.set_settings(changed, num_frames=8) is changed


def test_method_is_checked_against_the_registry(draft):
    assert state.set_method(draft, "levitor").spec["method"] == "levitor"
    with pytest.raises(InputError, match="unknown method 'nope'"):
        state.set_method(draft, "nope")


def test_json_round_trip(draft, tmp_path):
    drawn = state.set_camera(state.set_depth(with_path(draft), 20.0), "orbit right")
    text = state.to_json(drawn)
    again = state.from_json(text, tmp_path, (120, 200))
    assert again.spec == drawn.spec and again.active == 1 and again.keyframe == 2
    assert again.history == ()
    assert json.loads(text)["objects"][0]["trajectory"][2]["depth"] == 20.0
    with pytest.raises(InputError, match="invalid JSON at line 1"):
        state.parse_json("{nope", "x.json")
    with pytest.raises(InputError, match=r"objects\[0\]\.trajectory\[0\]\.depth: must be > 0"):
        bad = json.loads(text)
        bad["objects"][0]["trajectory"][0]["depth"] = -1
        state.parse_json(json.dumps(bad), "x.json")


def test_referenced_files(draft):
    data = {**draft.spec, "depth": "d.npy", "objects": [{"id": 1, "mask": "m.png"}]}
    loaded = state.load(draft, data, (120, 200))
    assert state.referenced_files(loaded) == ["photo.png", "d.npy", "m.png"]


def test_preview_spec_is_coarse_with_known_options_and_capped_frames(draft):
    data = {**draft.spec, "method": "levitor", "num_frames": 40}
    data["options"] = {"points_scale": 2.0, "num_inference_steps": 5}
    loaded = state.load(draft, data, (120, 200))
    spec = state.preview_spec(loaded, 24)
    assert spec.method == "coarse" and spec.num_frames == 24
    assert spec.options == {"points_scale": 2.0}


def test_choices_describe_objects_and_points(draft):
    drawn = state.add_object(with_path(draft), 100, 100)
    assert [v for _, v in state.object_choices(drawn)] == [1, 2]
    assert "3 path points" in state.object_choices(drawn)[0][0]
    assert state.keyframe_choices(state.activate(drawn, 1))[1] == ("2: (100, 50) depth 8", 1)


def test_any_order_of_edits_gives_a_valid_spec_or_a_message(tmp_path):
    """Random clicks in random order: each edit returns a valid draft or raises InputError,
    and a refused edit leaves the draft as it was."""
    rng = random.Random(0)
    draft = state.start(tmp_path)

    def random_edit(d: Draft) -> Draft:
        x, y = rng.uniform(-20, 220), rng.uniform(-20, 140)
        choice = rng.randrange(18)
        edits = [
            lambda: state.set_image(d, f"p{rng.randrange(3)}.png", (120, 200), False),
            lambda: state.add_object(d, x, y),
            lambda: state.refine_object(d, x, y),
            lambda: state.add_path_point(d, x, y, rng.choice([rng.uniform(0.1, 60), -1.0])),
            lambda: state.set_depth(d, rng.uniform(-5, 60)),
            lambda: state.select_keyframe(d, rng.randrange(-1, 5)),
            lambda: state.activate(d, rng.randrange(0, 5)),
            lambda: state.remove_path_point(d),
            lambda: state.clear_path(d),
            lambda: state.remove_object(d),
            lambda: state.set_camera(d, rng.choice(list(CAMERA_PRESETS)), rng.uniform(0, 3.5)),
            lambda: state.set_settings(d, num_frames=rng.randrange(0, 40)),
            lambda: state.undo(d),
            lambda: state.clear_objects(d),
            lambda: state.from_json(state.to_json(d), d.workdir, d.size or (1, 1)),
            lambda: state.add_polygon_corner(d, x, y),
            lambda: state.close_polygon(d),
            lambda: state.cancel_polygon(d),
        ]
        return edits[choice]()

    refused = 0
    for _ in range(600):
        before = copy.deepcopy(draft)
        try:
            draft = random_edit(draft)
        except InputError:
            refused += 1
            assert draft == before
            continue
        if draft.has_image:
            state.to_spec(draft)  # valid at every step
            assert draft.active is None or draft.object(draft.active) is not None
            if draft.keyframe is not None:
                assert 0 <= draft.keyframe < len(draft.path)
    assert 50 < refused < 550
