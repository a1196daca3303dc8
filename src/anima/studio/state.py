"""The studio's state: the MotionSpec being edited, and the pure functions that edit it.

A `Draft` is everything a browser session holds: the spec as JSON data, the folder its relative
paths resolve against, which object and which path point the next click or slider edits, the
working image size, the corners of a polygon being drawn, and an undo history. Every function
takes a draft and returns a new one (a draft is immutable), validating the spec after each edit,
so the page can call them in any order: a call that makes no sense yet (a path point before an
object, a depth before a path point) raises `InputError` with a message for the user and changes
nothing.

Nothing here imports gradio or touches files: uploads and downloads are `anima.studio.workspace`,
masks and depth `anima.studio.perception`.

Conventions (the spec's): pixels x right, y down in the working image; path points are spaced
evenly in time (``t = i / (n - 1)``) whenever a point is added or removed; depth is a distance
from the camera in scene units; a path point's rotation is the spec's keyframe ``rotation``,
degrees about the camera's x, y, z axes (`ROTATION_AXES`: pitch, yaw, roll), missing when zero.
A new path point keeps the orientation of the point before it, so adding a point never undoes a
turn; removing one or re-spacing the points in time leaves every other point's rotation alone.

A polygon selection is drawn corner by corner (`add_polygon_corner`, each click an undo step)
and becomes a new object when it is closed (`close_polygon`); until then its corners live in the
draft, not in the spec (a spec's polygon has at least three corners and encloses an area). A box
selection is two clicks on opposite corners (`add_box_corner`); the first waits in the draft.

Options a method keys by object id (AnyI2V's ``query_points``, `OBJECT_OPTIONS`) are edited on
the active object (`add_query_point`) and leave with it; switching methods keeps only the options
the new method knows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from anima.errors import InputError
from anima.spec import Camera, MotionSpec, parse_spec, polygon_area, spec_to_json

HISTORY_LIMIT = 50
"""Undo steps kept per session."""

MAX_OBJECT_ID = 255

WHERE = "studio"

SETTINGS = ("num_frames", "fps", "seed", "prompt", "negative_prompt", "fov", "camera", "method")
"""Spec fields a new photo keeps from the previous one (everything but image and objects)."""

CAMERA_PRESETS: dict[str, dict[str, Any] | None] = {
    "static": None,
    "pan left": {"type": "pan", "x": -0.1},
    "pan right": {"type": "pan", "x": 0.1},
    "pan up": {"type": "pan", "y": -0.1},
    "pan down": {"type": "pan", "y": 0.1},
    "dolly in": {"type": "dolly", "distance": 0.2},
    "dolly out": {"type": "dolly", "distance": -0.2},
    "zoom in": {"type": "zoom", "factor": 1.3},
    "zoom out": {"type": "zoom", "factor": 1 / 1.3},
    "orbit left": {"type": "orbit", "degrees": -10.0},
    "orbit right": {"type": "orbit", "degrees": 10.0},
}
"""Camera presets at strength 1 (the spec's camera types; pan and dolly in fractions of the
median scene distance). `set_camera` scales them: travel and angle by the strength, a zoom
factor to the power of the strength."""

STRENGTH_RANGE = (0.25, 3.0)

OBJECT_OPTIONS = ("query_points", "end_boxes")
"""Method options keyed by object id (AnyI2V's): removing an object removes its entries."""

ROTATION_AXES = ("pitch", "yaw", "roll")
"""A path point's rotation angles, in the order of the spec's keyframe ``rotation``: pitch about
the camera's x axis (right; positive tips the object's top towards the camera), yaw about its
y axis (down, the vertical; positive turns the object's right side towards the camera), roll
about its z axis (the view direction; positive turns the object clockwise in the picture)."""

ROTATION_RANGE = (-720.0, 720.0)
"""Degrees a path point's rotation may take on each axis (two turns either way)."""

QUERY_METHODS = ("anyi2v",)
"""Methods whose options take per-object query points (AnyI2V, appendix: the points that say
which pixels of the start box are the object)."""


@dataclass(frozen=True)
class Snapshot:
    """One undo step: the spec and what was selected."""

    spec: dict[str, Any] | None
    size: tuple[int, int] | None
    active: int | None
    keyframe: int | None
    polygon: tuple[tuple[float, float], ...] = ()
    box_corner: tuple[float, float] | None = None


@dataclass(frozen=True)
class Draft:
    """A session's whole state (see the module docstring).

    Attributes:
        workdir: the folder the spec's relative paths (its image) resolve against.
        spec: the MotionSpec as JSON data, always valid; None before a photo.
        size: the working image size (H, W) every pixel coordinate refers to.
        active: id of the object that selection refinements and path points go to.
        keyframe: index of the active object's path point the depth slider edits.
        polygon: corners (x, y) of the polygon being drawn, not yet an object.
        box_corner: the first corner (x, y) of a box being drawn, not yet an object.
        history: earlier states, newest last (`undo`).
    """

    workdir: str
    spec: dict[str, Any] | None = None
    size: tuple[int, int] | None = None
    active: int | None = None
    keyframe: int | None = None
    polygon: tuple[tuple[float, float], ...] = ()
    box_corner: tuple[float, float] | None = None
    history: tuple[Snapshot, ...] = ()

    @property
    def has_image(self) -> bool:
        return self.spec is not None

    @property
    def objects(self) -> list[dict[str, Any]]:
        return list(self.spec["objects"]) if self.spec else []

    def object(self, object_id: int | None) -> dict[str, Any] | None:
        """The object with this id, or None."""
        return next((o for o in self.objects if o["id"] == object_id), None)

    @property
    def active_object(self) -> dict[str, Any] | None:
        return self.object(self.active)

    @property
    def path(self) -> list[dict[str, Any]]:
        """The active object's trajectory keyframes."""
        obj = self.active_object
        return list(obj.get("trajectory", [])) if obj else []


# --------------------------------------------------------------------------- helpers


def start(workdir: str | Path) -> Draft:
    """An empty draft (no photo yet) whose files live in ``workdir``."""
    return Draft(workdir=str(workdir))


def to_spec(draft: Draft) -> MotionSpec:
    """The draft's spec as a validated `MotionSpec` resolving paths in the draft's folder."""
    spec = _require_image(draft)
    return parse_spec(spec, WHERE, base_dir=Path(draft.workdir))


def to_json(draft: Draft) -> str:
    """The spec as the indented JSON a download writes."""
    return spec_to_json(to_spec(draft)) + "\n"


def parse_json(text: str, where: str = "spec") -> dict[str, Any]:
    """Spec JSON text -> validated spec data; problems are `InputError`s naming the JSON path."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", where
        ) from None
    return _dump(parse_spec(data, where))


def load(draft: Draft, data: dict[str, Any], size: tuple[int, int]) -> Draft:
    """Replace the draft's spec by ``data`` (a loaded spec whose paths resolve in the draft's
    folder; ``size`` is the working size of its image) as one undoable step. The last object
    becomes the active one."""
    new = _commit(draft, data, None, None, size=_check_size(size), polygon=())
    last = new.objects[-1]["id"] if new.objects else None
    return _with_active(new, last)


def from_json(text: str, workdir: str | Path, size: tuple[int, int]) -> Draft:
    """A new draft continuing a spec (JSON text whose relative paths resolve in ``workdir``)."""
    draft = load(start(workdir), parse_json(text), size)
    return replace(draft, history=())


def referenced_files(draft: Draft) -> list[str]:
    """Relative or absolute paths of every file the spec names (image, depth, masks)."""
    if draft.spec is None:
        return []
    names = [draft.spec["image"]]
    if draft.spec.get("depth"):
        names.append(draft.spec["depth"])
    names += [o["mask"] for o in draft.objects if o.get("mask")]
    return names


def _dump(spec: MotionSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude_none=True)


def _check_size(size: tuple[int, int] | None) -> tuple[int, int]:
    if size is None or len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) with positive sides, got {size}")
    return int(size[0]), int(size[1])


def _require_image(draft: Draft) -> dict[str, Any]:
    if draft.spec is None:
        raise InputError("upload a photo first", WHERE)
    return draft.spec


def _require_active(draft: Draft, doing: str) -> dict[str, Any]:
    _require_image(draft)
    obj = draft.active_object
    if obj is None:
        raise InputError(
            f"select an object first (click it with 'Select object'), then {doing}", WHERE
        )
    return obj


def _check_point(draft: Draft, x: float, y: float, what: str) -> tuple[float, float]:
    assert draft.size is not None
    height, width = draft.size
    x, y = float(x), float(y)
    if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
        raise InputError(f"({x:g}, {y:g}) lies outside the {width}x{height} image", what)
    return round(x, 1), round(y, 1)


def _snapshot(draft: Draft) -> Snapshot:
    return Snapshot(
        draft.spec, draft.size, draft.active, draft.keyframe, draft.polygon, draft.box_corner
    )


def _commit(
    draft: Draft,
    data: dict[str, Any],
    active: int | None,
    keyframe: int | None,
    size: tuple[int, int] | None = None,
    polygon: tuple[tuple[float, float], ...] | None = None,
) -> Draft:
    """Validate ``data`` and return the new draft, the current state pushed on the history.
    The polygon being drawn is kept unless ``polygon`` replaces it; a box being drawn is
    kept."""
    spec = parse_spec(data, WHERE, base_dir=Path(draft.workdir))
    history = (draft.history + (_snapshot(draft),))[-HISTORY_LIMIT:]
    return Draft(
        workdir=draft.workdir,
        spec=_dump(spec),
        size=size or draft.size,
        active=active,
        keyframe=keyframe,
        polygon=draft.polygon if polygon is None else polygon,
        box_corner=draft.box_corner,
        history=history,
    )


def _edit_object(draft: Draft, object_id: int, **changes: Any) -> dict[str, Any]:
    """A copy of the spec data with ``changes`` applied to one object."""
    data = json.loads(json.dumps(draft.spec))
    for obj in data["objects"]:
        if obj["id"] == object_id:
            obj.update(changes)
    return data


def _with_active(draft: Draft, object_id: int | None) -> Draft:
    obj = draft.object(object_id)
    if obj is None:
        return replace(draft, active=None, keyframe=None)
    path = obj.get("trajectory", [])
    return replace(draft, active=object_id, keyframe=len(path) - 1 if path else None)


def _retimed(path: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keyframes spaced evenly in time over the clip."""
    n = len(path)
    return [{**k, "t": (i / (n - 1) if n > 1 else 0.0)} for i, k in enumerate(path)]


# --------------------------------------------------------------------------- the photo


def set_image(draft: Draft, name: str, size: tuple[int, int], working_size: bool) -> Draft:
    """Start over on a new photo ``name`` (a file in the draft's folder) of working size
    ``size`` (H, W); ``working_size`` records that size in the spec (the photo is larger and
    is resized to it). Objects are cleared; frames, fps, seed, prompt, camera and method are
    kept (the method is ``coarse`` until one is chosen: a spec names its method, so that it
    renders the same wherever it runs). Undo returns to the previous photo."""
    size = _check_size(size)
    data: dict[str, Any] = {"version": 1, "image": name, "method": "coarse"}
    if draft.spec is not None:
        data |= {k: draft.spec[k] for k in SETTINGS if k in draft.spec}
    if working_size:
        data["size"] = list(size)
    return _commit(draft, data, None, None, size=size, polygon=())


# --------------------------------------------------------------------------- objects


def next_object_id(draft: Draft) -> int:
    """The id a new object gets: one more than the largest in use."""
    ids = [o["id"] for o in draft.objects]
    new = max(ids, default=0) + 1
    if new > MAX_OBJECT_ID:
        raise InputError(f"at most {MAX_OBJECT_ID} objects", WHERE)
    return new


def add_object(draft: Draft, x: float, y: float, label: str | None = None) -> Draft:
    """A new object selected by a click at (x, y) (SAM, or GrabCut seeded by the click); it
    becomes the active object."""
    data = dict(_require_image(draft))
    point = _check_point(draft, x, y, "object click")
    new_id = next_object_id(draft)
    obj: dict[str, Any] = {"id": new_id, "points": [list(point)]}
    if label:
        obj["label"] = label
    data["objects"] = [*draft.objects, obj]
    return _commit(draft, data, new_id, None)


def refine_object(draft: Draft, x: float, y: float) -> Draft:
    """Add a click at (x, y) to the active object's selection (the mask is recomputed)."""
    obj = _require_active(draft, "add clicks to its selection")
    point = _check_point(draft, x, y, "selection click")
    if obj.get("points") is None:
        kind = _selection_kind(obj)
        raise InputError(
            f"object {obj['id']} is selected by a {kind}; start a new object to select by clicks",
            WHERE,
        )
    data = _edit_object(draft, obj["id"], points=[*obj["points"], list(point)])
    return _commit(draft, data, draft.active, draft.keyframe)


def _selection_kind(obj: dict[str, Any]) -> str:
    """How an object is selected, in words."""
    if obj.get("mask"):
        return "mask file"
    if obj.get("polygon"):
        return "polygon"
    return "box" if obj.get("box") is not None else "clicks"


def add_polygon_corner(draft: Draft, x: float, y: float) -> Draft:
    """Add a corner at (x, y) to the polygon being drawn (one undo step). `close_polygon`
    makes the polygon a new object once it has three corners or more."""
    _require_image(draft)
    corner = _check_point(draft, x, y, "polygon corner")
    history = (draft.history + (_snapshot(draft),))[-HISTORY_LIMIT:]
    return replace(draft, polygon=(*draft.polygon, corner), history=history)


def close_polygon(draft: Draft, label: str | None = None) -> Draft:
    """A new object selected exactly by the polygon being drawn (the pixels inside its
    outline, and on it); it becomes the active object and the drawing starts over. Undo
    reopens the polygon with all its corners."""
    _require_image(draft)
    corners = [list(c) for c in draft.polygon]
    if len(corners) < 3:
        need = 3 - len(corners)
        raise InputError(
            f"a polygon needs at least 3 corners: click {need} more with 'Polygon corner'",
            WHERE,
        )
    if polygon_area([(x, y) for x, y in corners]) == 0.0:
        raise InputError(
            "the polygon's corners lie on one line: undo them and click around the object",
            WHERE,
        )
    data = dict(draft.spec or {})
    new_id = next_object_id(draft)
    obj: dict[str, Any] = {"id": new_id, "polygon": corners}
    if label:
        obj["label"] = label
    data["objects"] = [*draft.objects, obj]
    return _commit(draft, data, new_id, None, polygon=())


def cancel_polygon(draft: Draft) -> Draft:
    """Forget the corners of the polygon being drawn (one undo step)."""
    _require_image(draft)
    if not draft.polygon:
        raise InputError("there is no polygon being drawn", WHERE)
    history = (draft.history + (_snapshot(draft),))[-HISTORY_LIMIT:]
    return replace(draft, polygon=(), history=history)


def add_box_corner(draft: Draft, x: float, y: float, label: str | None = None) -> Draft:
    """A click on one corner of a selection box (one undo step): the first click waits in
    the draft, the second, on the opposite corner, makes the box a new object (GrabCut or
    SAM finds the object in it) that becomes the active object."""
    _require_image(draft)
    corner = _check_point(draft, x, y, "box corner")
    if draft.box_corner is None:
        history = (draft.history + (_snapshot(draft),))[-HISTORY_LIMIT:]
        return replace(draft, box_corner=corner, history=history)
    (xa, ya), (xb, yb) = draft.box_corner, corner
    if xa == xb or ya == yb:
        raise InputError(
            "a box's two corners must differ in x and in y: click the opposite corner", WHERE
        )
    data = dict(draft.spec or {})
    new_id = next_object_id(draft)
    obj: dict[str, Any] = {
        "id": new_id,
        "box": [min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)],
    }
    if label:
        obj["label"] = label
    data["objects"] = [*draft.objects, obj]
    return replace(_commit(draft, data, new_id, None), box_corner=None)


def activate(draft: Draft, object_id: int) -> Draft:
    """Make ``object_id`` the object that path points and refinements go to (not an edit of
    the spec, so not an undo step); its last path point gets the depth slider."""
    _require_image(draft)
    if draft.object(object_id) is None:
        raise InputError(f"there is no object {object_id}", WHERE)
    return _with_active(draft, object_id)


def remove_object(draft: Draft) -> Draft:
    """Remove the active object; the last remaining one becomes active."""
    obj = _require_active(draft, "remove it")
    data = _without_object_options(draft.spec or {}, {obj["id"]})
    data["objects"] = [o for o in draft.objects if o["id"] != obj["id"]]
    rest = data["objects"]
    new = _commit(draft, data, None, None)
    return _with_active(new, rest[-1]["id"] if rest else None)


def clear_objects(draft: Draft) -> Draft:
    """Remove every object and the camera move (the photo and settings stay)."""
    data = _without_object_options(_require_image(draft), {o["id"] for o in draft.objects})
    data["objects"] = []
    data.pop("camera", None)
    return _commit(draft, data, None, None)


def _without_object_options(spec: dict[str, Any], ids: set[int]) -> dict[str, Any]:
    """A copy of the spec data without the `OBJECT_OPTIONS` entries of objects ``ids`` (an
    option left empty is dropped)."""
    data = json.loads(json.dumps(spec))
    options = data.get("options", {})
    for key in OBJECT_OPTIONS:
        if isinstance(options.get(key), dict):
            kept = {k: v for k, v in options[key].items() if int(k) not in ids}
            options[key] = kept
            if not kept:
                del options[key]
    return data


# --------------------------------------------------------------------------- query points


def add_query_point(draft: Draft, x: float, y: float) -> Draft:
    """Add (x, y) to the active object's query points (AnyI2V: the pixels of the first frame
    that are the object; without any, its selection clicks or K-means points of its mask). A
    point of an object selected by a box lies in that box."""
    method = (_require_image(draft)).get("method")
    if method not in QUERY_METHODS:
        raise InputError(
            f"query points are {', '.join(QUERY_METHODS)}'s: choose that method first", WHERE
        )
    obj = _require_active(draft, "click its query points")
    x, y = _check_point(draft, x, y, "query point")
    box = obj.get("box")
    if box is not None and not (box[0] <= x <= box[2] and box[1] <= y <= box[3]):
        raise InputError(
            f"({x:g}, {y:g}) lies outside object {obj['id']}'s box: click inside it", WHERE
        )
    data = json.loads(json.dumps(draft.spec))
    points = data.setdefault("options", {}).setdefault("query_points", {})
    points[str(obj["id"])] = [*points.get(str(obj["id"]), []), [x, y]]
    return _commit(draft, data, draft.active, draft.keyframe)


def clear_query_points(draft: Draft) -> Draft:
    """Forget the active object's query points."""
    obj = _require_active(draft, "clear its query points")
    if str(obj["id"]) not in query_points(draft):
        raise InputError(f"object {obj['id']} has no query points", WHERE)
    data = json.loads(json.dumps(draft.spec))
    points = data["options"]["query_points"]
    del points[str(obj["id"])]
    if not points:
        del data["options"]["query_points"]
    return _commit(draft, data, draft.active, draft.keyframe)


def query_points(draft: Draft) -> dict[str, list[list[float]]]:
    """Object id (as text) -> its query points, from the spec's options."""
    return dict(((draft.spec or {}).get("options") or {}).get("query_points") or {})


# --------------------------------------------------------------------------- the path


def add_path_point(draft: Draft, x: float, y: float, depth: float) -> Draft:
    """Append (x, y) at distance ``depth`` to the active object's path; the path's points are
    re-spaced evenly in time and the new point gets the depth slider. The first point should
    be on the object: the object moves by the path's displacement from it. The new point keeps
    the rotation of the point before it (the object holds its orientation)."""
    obj = _require_active(draft, "click its path")
    point = _check_point(draft, x, y, "path point")
    depth = _check_depth(depth)
    path = list(obj.get("trajectory", []))
    new: dict[str, Any] = {"t": 0.0, "x": point[0], "y": point[1], "depth": depth}
    if path and path[-1].get("rotation"):
        new["rotation"] = list(path[-1]["rotation"])
    path.append(new)
    data = _edit_object(draft, obj["id"], trajectory=_retimed(path))
    return _commit(draft, data, obj["id"], len(path) - 1)


def select_keyframe(draft: Draft, index: int) -> Draft:
    """Give the depth slider to path point ``index`` (0-based) of the active object."""
    obj = _require_active(draft, "pick one of its path points")
    path = obj.get("trajectory", [])
    if not 0 <= index < len(path):
        raise InputError(
            f"object {obj['id']} has {len(path)} path points; there is no point {index + 1}",
            WHERE,
        )
    return replace(draft, keyframe=index)


def _check_depth(depth: float | None) -> float:
    if depth is None or not float(depth) > 0 or float(depth) == float("inf"):
        raise InputError(f"a depth must be a positive distance, got {depth}", "depth")
    return round(float(depth), 4)


def _require_keyframe(draft: Draft, doing: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The active object and its path, which has the selected path point."""
    obj = _require_active(draft, doing)
    path = obj.get("trajectory", [])
    if draft.keyframe is None or not 0 <= draft.keyframe < len(path):
        raise InputError(
            f"object {obj['id']} has no path point yet: click one with 'Path point'", WHERE
        )
    return obj, path


def set_depth(draft: Draft, depth: float) -> Draft:
    """Set the distance of the selected path point of the active object."""
    obj, path = _require_keyframe(draft, "click a path point")
    depth = _check_depth(depth)
    if path[draft.keyframe]["depth"] == depth:
        return draft
    path = [dict(k) for k in path]
    path[draft.keyframe]["depth"] = depth
    data = _edit_object(draft, obj["id"], trajectory=path)
    return _commit(draft, data, draft.active, draft.keyframe)


def rotation_of(keyframe: dict[str, Any]) -> tuple[float, float, float]:
    """A path point's rotation (pitch, yaw, roll) in degrees; (0, 0, 0) when it has none."""
    pitch, yaw, roll = keyframe.get("rotation") or (0.0, 0.0, 0.0)
    return float(pitch), float(yaw), float(roll)


def _check_angle(value: Any, axis: str) -> float:
    """A rotation angle in degrees within `ROTATION_RANGE`."""
    low, high = ROTATION_RANGE
    try:
        angle = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"a {axis} angle must be a number of degrees, got {value!r}", WHERE
        ) from None
    if not math.isfinite(angle) or not low <= angle <= high:
        raise InputError(f"a {axis} angle must be {low:g}..{high:g} degrees, got {value}", WHERE)
    return angle + 0.0  # + 0.0: no -0.0 in the spec


def _with_rotation(
    keyframe: dict[str, Any], rotation: tuple[float, float, float]
) -> dict[str, Any]:
    """A copy of ``keyframe`` with ``rotation``; a zero rotation is left out, as the spec's
    default."""
    out = {k: v for k, v in keyframe.items() if k != "rotation"}
    if any(rotation):
        out["rotation"] = list(rotation)
    return out


def set_rotation(
    draft: Draft,
    pitch: float | None = None,
    yaw: float | None = None,
    roll: float | None = None,
) -> Draft:
    """Set the rotation of the selected path point of the active object (the point the depth
    slider edits), degrees per axis (`ROTATION_AXES`; None leaves an axis as it is), each in
    `ROTATION_RANGE`. The object turns between its path points as smoothly as it moves (the
    spec's keyframe rotation, interpolated like the path), relative to the first point's."""
    obj, path = _require_keyframe(draft, "set its rotation")
    current = rotation_of(path[draft.keyframe])
    given = (pitch, yaw, roll)
    rotation = tuple(
        old if value is None else _check_angle(value, axis)
        for old, value, axis in zip(current, given, ROTATION_AXES, strict=True)
    )
    if rotation == current:
        return draft
    path = [dict(k) for k in path]
    path[draft.keyframe] = _with_rotation(path[draft.keyframe], rotation)
    data = _edit_object(draft, obj["id"], trajectory=path)
    return _commit(draft, data, draft.active, draft.keyframe)


def turn_object(draft: Draft, degrees: float, axis: str = "yaw") -> Draft:
    """Turn the active object by ``degrees`` about ``axis`` (`ROTATION_AXES`) over its path, at
    an even rate: each path point's angle on that axis is ``degrees`` times the fraction of the
    path's time elapsed at it (0 at the first point, ``degrees`` at the last; rounded to 0.01
    degree); its other axes stay. 180 about yaw turns the object round to show its back
    (I2V3D, Fig. 1)."""
    if axis not in ROTATION_AXES:
        raise InputError(f"unknown axis '{axis}' (use {', '.join(ROTATION_AXES)})", WHERE)
    obj = _require_active(draft, "turn it")
    path = obj.get("trajectory", [])
    if len(path) < 2:
        raise InputError(
            f"object {obj['id']} needs a path of two points or more to turn along: click them "
            "with 'Path point'",
            WHERE,
        )
    degrees = _check_angle(degrees, axis)
    index = ROTATION_AXES.index(axis)
    first, last = path[0]["t"], path[-1]["t"]
    turned = []
    for key in path:
        rotation = list(rotation_of(key))
        rotation[index] = round(degrees * (key["t"] - first) / (last - first), 2) + 0.0
        turned.append(_with_rotation(key, (rotation[0], rotation[1], rotation[2])))
    if turned == path:
        return draft
    data = _edit_object(draft, obj["id"], trajectory=turned)
    return _commit(draft, data, draft.active, draft.keyframe)


def rotation_text(rotation: tuple[float, float, float] | list[float] | None) -> str:
    """A rotation as the page says it, its nonzero axes only ("yaw 90°"); "" for none."""
    return ", ".join(
        f"{axis} {angle:g}°"
        for axis, angle in zip(ROTATION_AXES, rotation or (0.0, 0.0, 0.0), strict=True)
        if angle
    )


def remove_path_point(draft: Draft) -> Draft:
    """Remove the selected path point of the active object (the rest are re-spaced)."""
    obj = _require_active(draft, "pick a path point")
    path = list(obj.get("trajectory", []))
    if draft.keyframe is None or not 0 <= draft.keyframe < len(path):
        raise InputError(f"object {obj['id']} has no path point to remove", WHERE)
    del path[draft.keyframe]
    data = _edit_object(draft, obj["id"], trajectory=_retimed(path))
    keyframe = min(draft.keyframe, len(path) - 1) if path else None
    return _commit(draft, data, obj["id"], keyframe)


def clear_path(draft: Draft) -> Draft:
    """Remove the active object's path (it stays in place, still occluding)."""
    obj = _require_active(draft, "clear its path")
    data = _edit_object(draft, obj["id"], trajectory=[])
    return _commit(draft, data, obj["id"], None)


# --------------------------------------------------------------------------- camera, settings


def _scaled_preset(preset: str, strength: float) -> dict[str, Any] | None:
    """A preset's camera at ``strength``, normalised as the spec stores it (defaults filled)."""
    camera = CAMERA_PRESETS[preset]
    if camera is None:
        return None
    scaled = dict(camera)
    for key in ("x", "y", "distance", "degrees"):
        if key in scaled:
            scaled[key] = round(scaled[key] * strength, 6)
    if "factor" in scaled:
        scaled["factor"] = round(scaled["factor"] ** strength, 6)
    return TypeAdapter(Camera).validate_python(scaled).model_dump(exclude_none=True)


def set_camera(draft: Draft, preset: str, strength: float = 1.0) -> Draft:
    """Set the camera move to a preset of `CAMERA_PRESETS` scaled by ``strength``."""
    data = dict(_require_image(draft))
    if preset not in CAMERA_PRESETS:
        raise InputError(
            f"unknown camera preset '{preset}' (use {', '.join(CAMERA_PRESETS)})", "camera"
        )
    low, high = STRENGTH_RANGE
    if not low <= float(strength) <= high:
        raise InputError(f"the strength must be in {low:g}..{high:g}, got {strength}", "camera")
    camera = _scaled_preset(preset, float(strength))
    if camera is None:
        data.pop("camera", None)
    else:
        data["camera"] = camera
    if data == draft.spec:
        return draft
    return _commit(draft, data, draft.active, draft.keyframe)


def camera_preset(draft: Draft) -> tuple[str, float]:
    """The preset and strength that give the draft's camera: ("static", 1) for none, and
    ("custom", 1) for a camera no preset gives (a loaded spec's keyframes, say)."""
    camera = (draft.spec or {}).get("camera")
    if camera is None:
        return "static", 1.0
    for name, preset in CAMERA_PRESETS.items():
        if preset is None or preset["type"] != camera["type"]:
            continue
        if "factor" in preset:
            ratio = math.log(camera["factor"]) / math.log(preset["factor"])
        else:
            key = next(k for k in ("x", "y", "distance", "degrees") if k in preset)
            ratio = camera.get(key, 0.0) / preset[key]
        strength = round(ratio, 4)
        low, high = STRENGTH_RANGE
        if low <= strength <= high and _close(_scaled_preset(name, strength), camera):
            return name, strength
    return "custom", 1.0


def _close(a: Any, b: Any) -> bool:
    """Equal JSON data, numbers compared to 1e-4."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
    return a == b


def set_settings(
    draft: Draft,
    num_frames: int | None = None,
    fps: float | None = None,
    seed: int | None = None,
    prompt: str | None = None,
) -> Draft:
    """Set the clip's frame count, frame rate, seed and prompt (None leaves one as it is)."""
    data = dict(_require_image(draft))
    changes = {"num_frames": num_frames, "fps": fps, "seed": seed, "prompt": prompt}
    for key, value in changes.items():
        if value is None:
            continue
        if key in {"num_frames", "seed"}:
            if float(value) != int(value):
                raise InputError(f"{key} must be a whole number, got {value}", key)
            value = int(value)
        elif key == "fps":
            value = float(value)
        data[key] = value
    if data == draft.spec:
        return draft
    return _commit(draft, data, draft.active, draft.keyframe)


def set_method(draft: Draft, name: str, options: dict[str, Any] | None = None) -> Draft:
    """Record the method a download's ``anima animate`` uses (`anima.methods.registry`), with
    ``options`` set over the spec's (e.g. the AnyI2V backbone whose weights are here). Options
    the method does not know are dropped (undo brings them back)."""
    from anima.methods.registry import get_method

    data = dict(_require_image(draft))
    known = get_method(name, "method").options_model.model_fields
    kept = {k: v for k, v in (data.get("options") or {}).items() if k in known}
    kept |= options or {}
    if data.get("method") == name and kept == (data.get("options") or {}):
        return draft
    data["method"] = name
    data["options"] = kept
    return _commit(draft, data, draft.active, draft.keyframe)


def preview_spec(draft: Draft, max_frames: int) -> MotionSpec:
    """The spec the preview renders: method ``coarse`` with only the options it knows, and at
    most ``max_frames`` frames (``anima animate SPEC --method coarse --frames N`` renders the
    same)."""
    from anima.methods.registry import get_method

    data = dict(_require_image(draft))
    known = get_method("coarse").options_model.model_fields
    data["options"] = {k: v for k, v in data.get("options", {}).items() if k in known}
    data["method"] = "coarse"
    data["num_frames"] = min(int(data.get("num_frames", 16)), max_frames)
    return parse_spec(data, WHERE, base_dir=Path(draft.workdir))


# --------------------------------------------------------------------------- undo


def undo(draft: Draft) -> Draft:
    """The state before the last edit."""
    if not draft.history:
        raise InputError("nothing to undo", WHERE)
    last = draft.history[-1]
    return Draft(
        workdir=draft.workdir,
        spec=last.spec,
        size=last.size,
        active=last.active,
        keyframe=last.keyframe,
        polygon=last.polygon,
        box_corner=last.box_corner,
        history=draft.history[:-1],
    )


# --------------------------------------------------------------------------- descriptions


def object_choices(draft: Draft) -> list[tuple[str, int]]:
    """(label, id) of every object, for a picker."""
    choices = []
    for obj in draft.objects:
        how = _selection_kind(obj).replace("mask file", "mask")
        points = len(obj.get("trajectory", []))
        name = f"{obj['id']}: {obj['label']}" if obj.get("label") else f"object {obj['id']}"
        choices.append(
            (f"{name} ({how}, {points} path point{'s' if points != 1 else ''})", obj["id"])
        )
    return choices


def keyframe_choices(draft: Draft) -> list[tuple[str, int]]:
    """(label, index) of the active object's path points, for a picker."""
    choices = []
    for i, k in enumerate(draft.path):
        label = f"{i + 1}: ({k['x']:g}, {k['y']:g}) depth {k['depth']:g}"
        turned = rotation_text(k.get("rotation"))
        choices.append((f"{label}, {turned}" if turned else label, i))
    return choices
