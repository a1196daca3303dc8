"""The studio's AnyI2V editing (anima.studio.state, draw, methods): objects selected by a box
of two clicks, per-object query points (only for a method that takes them, inside the object's
box, leaving with the object), options the new method does not know dropped on a switch, and
the backbone whose weights are present chosen with the method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anima.errors import InputError
from anima.methods.registry import get_method
from anima.studio import draw, state
from anima.studio.methods import ready_variant
from anima.studio.state import Draft
from anima.weights import Weights


@pytest.fixture
def draft(tmp_path) -> Draft:
    return state.set_image(state.start(tmp_path), "photo.png", (120, 200), working_size=False)


def boxed(draft: Draft) -> Draft:
    return state.add_box_corner(state.add_box_corner(draft, 150, 90), 40, 30)


def test_two_box_corners_make_an_object_selected_by_that_box(draft):
    first = state.add_box_corner(draft, 150, 90)
    assert first.objects == [] and first.box_corner == (150.0, 90.0)
    new = state.add_box_corner(first, 40, 30)
    assert new.box_corner is None and new.active == 1
    assert [(o["id"], o["box"]) for o in new.objects] == [(1, [40.0, 30.0, 150.0, 90.0])]
    reopened = state.undo(new)  # undo reopens the box
    assert reopened.objects == [] and reopened.box_corner == (150.0, 90.0)
    assert state.undo(reopened).box_corner is None
    with pytest.raises(InputError, match="differ in x and in y"):
        state.add_box_corner(first, 150, 20)


def test_query_points_belong_to_anyi2v_and_to_the_box(draft):
    draft = boxed(draft)
    with pytest.raises(InputError, match="choose that method first"):
        state.add_query_point(draft, 60, 50)
    draft = state.set_method(draft, "anyi2v")
    draft = state.add_query_point(state.add_query_point(draft, 60, 50), 100, 70)
    assert state.query_points(draft) == {"1": [[60.0, 50.0], [100.0, 70.0]]}
    spec = state.to_spec(draft)
    options = get_method("anyi2v").parse_options(spec.options)
    assert options.query_points == {1: [(60.0, 50.0), (100.0, 70.0)]}
    get_method("anyi2v").check_inputs(spec, options)  # inside the box: accepted
    with pytest.raises(InputError, match="outside object 1's box"):
        state.add_query_point(draft, 10, 10)
    cleared = state.clear_query_points(draft)
    assert state.query_points(cleared) == {} and "query_points" not in cleared.spec["options"]
    with pytest.raises(InputError, match="has no query points"):
        state.clear_query_points(cleared)


def test_query_points_leave_with_their_object_and_with_the_method(draft):
    draft = state.set_method(boxed(draft), "anyi2v")
    draft = state.add_query_point(draft, 60, 50)
    draft = state.add_object(draft, 20, 100)  # a second object, no query points
    draft = state.add_query_point(draft, 22, 102)
    removed = state.remove_object(draft)  # object 2 goes, object 1's points stay
    assert state.query_points(removed) == {"1": [[60.0, 50.0]]}
    assert state.query_points(state.clear_objects(draft)) == {}
    switched = state.set_method(draft, "coarse")  # coarse has no query points
    assert switched.spec["options"] == {}
    get_method("coarse").parse_options(state.to_spec(switched).options)
    assert state.query_points(state.undo(switched)) == state.query_points(draft)


def test_the_canvas_draws_boxes_query_points_and_a_pending_corner(draft):
    image = torch.full((3, 120, 200), 0.5)
    plain = draw.canvas(image, None, [], None, None)
    pending = draw.canvas(image, None, [], None, None, box_corner=(100, 60))
    assert (pending != plain).any(axis=-1)[60, 100]
    obj = {"id": 1, "box": [40.0, 30.0, 150.0, 90.0]}
    boxed_only = draw.canvas(image, None, [obj], 1, None)
    with_query = draw.canvas(image, None, [obj], 1, None, query_points={"1": [[60.0, 50.0]]})
    changed = np.argwhere((with_query != boxed_only).any(axis=-1))
    assert len(changed) and np.abs(changed - [50, 60]).max() <= 8  # a diamond at (60, 50)


def test_the_method_comes_with_the_backbone_whose_weights_are_here(tmp_path: Path):
    assert ready_variant("anyi2v", Weights(builtin="tiny")) == (None, "")
    (tmp_path / "modelscope-t2v").mkdir()
    (tmp_path / "modelscope-t2v" / "model_index.json").write_text("{}")
    options, variant = ready_variant("anyi2v", Weights(root=tmp_path))
    assert (options, variant) == ({"backbone": "modelscope"}, "modelscope")
    draft = state.set_image(state.start(tmp_path), "p.png", (64, 64), working_size=False)
    chosen = state.set_method(draft, "anyi2v", options)
    assert chosen.spec["method"] == "anyi2v" and chosen.spec["options"] == options
