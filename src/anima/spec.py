"""MotionSpec: the one user-facing description of an animation.

(docs/architecture.md, "Data flow")

A MotionSpec is a versioned JSON document. Every method reads it; the CLI, the studio and the
Python API produce and consume it. Unknown fields are rejected, and every validation error is
reported as one line naming the JSON path, e.g. ``objects[0].trajectory[2].depth: must be > 0``.

Coordinates follow the project's conventions: pixels x right, y down, in the grid of the image
after resizing to ``size``; time ``t`` in [0, 1] over the clip; ``depth`` is a DISTANCE from the
camera in scene units (the units of the scene's distance map), so an object moved from distance
d0 to d1 is scaled by d0/d1 in the image. An object moves by the 3D displacement of its
trajectory from the first keyframe (LeviTor Eq. 7), so the first keyframe sits on the object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from anima.errors import InputError

SPEC_VERSION = 1
SCHEMA_ID = "https://anima.dev/schema/motionspec/v1.json"

Vec3 = tuple[float, float, float]

SELECTIONS = ("mask", "box", "points", "polygon")
"""The ways to select an object; a `SceneObject` has exactly one."""


class _Strict(BaseModel):
    """Base for every spec model: unknown fields are errors, values are checked on assignment."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, strict=True
    )


def _check_increasing(times: list[float]) -> None:
    """Keyframe times must strictly increase. The message starts with the item's sub-path,
    which `_message` joins onto the list's JSON path."""
    for i in range(1, len(times)):
        if times[i] <= times[i - 1]:
            raise ValueError(
                f"[{i}].t: must be greater than the previous keyframe's t ({times[i - 1]:g})"
            )


class Keyframe(_Strict):
    """One trajectory keyframe of an object's anchor point."""

    t: float = Field(ge=0.0, le=1.0, description="Time in [0, 1] over the clip.")
    x: float = Field(description="Anchor x in pixels (may leave the image).")
    y: float = Field(description="Anchor y in pixels (may leave the image).")
    depth: float = Field(gt=0.0, description="Anchor distance from the camera, scene units.")
    rotation: Vec3 | None = Field(
        default=None,
        description="Rotation about the object's centre, degrees about the camera's x, y, z "
        "axes (applied in that order). Missing means (0, 0, 0).",
    )


def polygon_area(vertices: list[tuple[float, float]]) -> float:
    """The area a polygon encloses (shoelace formula; vertices in either order)."""
    total = 0.0
    for (x0, y0), (x1, y1) in zip(vertices, [*vertices[1:], vertices[0]], strict=True):
        total += x0 * y1 - x1 * y0
    return abs(total) / 2.0


class SceneObject(_Strict):
    """An object to animate: a selection (mask | box | points | polygon) and a trajectory.

    ``mask`` and ``polygon`` are exact (no perception runs), ``box`` and ``points`` are
    automatic (GrabCut or SAM find the object)."""

    id: int = Field(gt=0, le=255, description="Instance id (1..255), unique in the spec.")
    label: str | None = Field(default=None, description="Free text, for people.")
    mask: str | None = Field(
        default=None,
        description="Exact selection: a mask image path, relative to the spec (nonzero pixels "
        "are the object), with the image's aspect ratio.",
    )
    box: tuple[float, float, float, float] | None = Field(
        default=None,
        description="Selection box [x0, y0, x1, y1] in pixels (GrabCut finds the object "
        "inside it).",
    )
    points: list[tuple[float, float]] | None = Field(
        default=None,
        min_length=1,
        description="Selection clicks [[x, y], ...] in pixels (SAM, else GrabCut, finds the "
        "object under them).",
    )
    polygon: list[tuple[float, float]] | None = Field(
        default=None,
        min_length=3,
        description="Exact selection outline [[x, y], ...], at least 3 vertices in pixels "
        "(integer coordinates are pixel centres; vertices may lie outside the image). The "
        "vertices are rounded to the nearest pixel centre and the object is every pixel inside "
        "the polygon or on its outline; it is not grown.",
    )
    trajectory: list[Keyframe] = Field(
        default_factory=list,
        description="Keyframes; empty means the object stays where it is (still an instance).",
    )
    mesh: str | None = Field(
        default=None,
        min_length=1,
        description="A 3D model of the object (OBJ, GLB or PLY path, relative to the spec; "
        "y up, its front facing +z, as 3D tools export): it replaces the object's pixels, "
        "placed at the selection's position and distance, scaled to its silhouette and turned "
        "by the trajectory's rotations, so a turn shows its back (I2V3D §3.1).",
    )

    @field_validator("box")
    @classmethod
    def _box_ordered(cls, box: tuple[float, float, float, float] | None):
        if box is not None and not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError("must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
        return box

    @field_validator("polygon")
    @classmethod
    def _polygon_has_area(cls, polygon: list[tuple[float, float]] | None):
        if polygon is not None and polygon_area(polygon) == 0.0:
            raise ValueError("must enclose an area (its vertices lie on one line)")
        return polygon

    @field_validator("trajectory")
    @classmethod
    def _trajectory_increasing(cls, keyframes: list[Keyframe]):
        _check_increasing([k.t for k in keyframes])
        return keyframes

    @model_validator(mode="after")
    def _one_selection(self):
        chosen = [n for n in SELECTIONS if getattr(self, n) is not None]
        if len(chosen) != 1:
            found = ", ".join(chosen) if chosen else "none"
            raise ValueError(f"needs exactly one of {', '.join(SELECTIONS)} (found: {found})")
        return self

    @property
    def moves(self) -> bool:
        """Whether the trajectory displaces or rotates the object at all."""
        if len(self.trajectory) < 2:
            return False
        first = self.trajectory[0]
        first_rot = first.rotation or (0.0, 0.0, 0.0)
        return any(
            (k.x, k.y, k.depth) != (first.x, first.y, first.depth)
            or (k.rotation or (0.0, 0.0, 0.0)) != first_rot
            for k in self.trajectory[1:]
        )


class CameraKeyframe(_Strict):
    """A camera pose at time t. Frame 0 always shows the photo: the pose the keyframes give at
    t = 0 is the reference every frame's pose is taken relative to."""

    t: float = Field(ge=0.0, le=1.0, description="Time in [0, 1] over the clip.")
    position: Vec3 = Field(
        default=(0.0, 0.0, 0.0),
        description="Camera centre (x right, y down, z forward), scene units. Relative: the "
        "camera moves by its displacement from the position at t = 0, taken in the frame of "
        "the camera at t = 0, which is the photo's camera.",
    )
    rotation: Vec3 = Field(
        default=(0.0, 0.0, 0.0),
        description="Camera rotation, degrees about x (tilt), y (pan), z (roll), in that order. "
        "Relative: the camera turns by its rotation from the rotation at t = 0.",
    )
    zoom: float = Field(
        default=1.0,
        gt=0.0,
        description="Focal-length multiplier, relative to the zoom at t = 0 (the photo's focal "
        "length).",
    )


class KeyframeCamera(_Strict):
    """Camera path from keyframes, interpolated by PCHIP like object trajectories and held
    before the first keyframe and after the last. Frame 0 always shows the photo: the pose at
    t = 0 (the first keyframe's when it starts later) is the reference, and every frame's pose
    is taken relative to it."""

    type: Literal["keyframes"]
    keyframes: list[CameraKeyframe] = Field(
        min_length=1,
        description="Camera poses, relative to the pose at t = 0: frame 0 is always the photo.",
    )

    @field_validator("keyframes")
    @classmethod
    def _keyframes_increasing(cls, keyframes: list[CameraKeyframe]):
        _check_increasing([k.t for k in keyframes])
        return keyframes


class PanCamera(_Strict):
    """Translate the camera parallel to the image plane (a truck/pedestal move)."""

    type: Literal["pan"]
    x: float = Field(default=0.0, description="Rightward travel, fraction of the median distance.")
    y: float = Field(default=0.0, description="Downward travel, fraction of the median distance.")


class DollyCamera(_Strict):
    """Move the camera along its optical axis."""

    type: Literal["dolly"]
    distance: float = Field(
        lt=1.0, description="Forward travel as a fraction of the median distance (< 0 = back)."
    )


class ZoomCamera(_Strict):
    """Change the focal length; the camera does not move."""

    type: Literal["zoom"]
    factor: float = Field(gt=0.0, description="Focal-length multiplier reached at t = 1.")


class OrbitCamera(_Strict):
    """Rotate the camera around a pivot on the optical axis, looking at the pivot."""

    type: Literal["orbit"]
    degrees: float = Field(ge=-180.0, le=180.0, description="Orbit angle reached at t = 1.")
    axis: Literal["x", "y"] = Field(default="y", description="y: horizontal orbit, x: vertical.")
    pivot: float | None = Field(
        default=None, gt=0.0, description="Pivot distance; default the median scene distance."
    )


Camera = Annotated[
    KeyframeCamera | PanCamera | DollyCamera | ZoomCamera | OrbitCamera,
    Field(discriminator="type"),
]


class PoseDrive(_Strict):
    """A driving pose (and face) sequence for human animation (X-Dyna, ``--method xdyna``).

    The driving body, hands and face come from OpenPose keypoints (``keypoints``) or are found
    in a driving ``video`` with mediapipe (the ``pose`` extra); the S-Face condition crops the
    driving video's frames, so it needs ``video``. With ``align`` the driving skeleton is mapped
    onto the person in the image (scale and offset from the first frames), whose keypoints come
    from ``reference_keypoints`` or are found in the image with mediapipe.

    A ready-made ``skeleton_video`` (such as the release's own skeleton videos) replaces the
    keypoints: its frames are the pose condition as they are (resized to the generation size,
    never aligned); with ``video`` as well, the face condition comes from that video."""

    video: str | None = Field(default=None, description="Driving video path.")
    keypoints: str | None = Field(
        default=None, description="Driving keypoints: OpenPose JSON file or folder."
    )
    reference_keypoints: str | None = Field(
        default=None, description="OpenPose JSON of the person in the image (for alignment)."
    )
    align: bool = Field(default=True, description="Align the driving skeleton to the person.")
    face: bool = Field(default=True, description="Use the face condition when available.")
    start: int = Field(default=0, ge=0, description="First driving frame used.")
    stride: int = Field(default=1, ge=1, le=100, description="Use every n-th driving frame.")
    skeleton_video: str | None = Field(
        default=None,
        description="Ready-made skeleton video (mp4, gif or folder of frames), the pose "
        "condition as it is; not aligned.",
    )

    @model_validator(mode="after")
    def _has_source(self) -> PoseDrive:
        if self.video is None and self.keypoints is None and self.skeleton_video is None:
            raise ValueError("needs 'video' or 'keypoints', or a ready 'skeleton_video'")
        if self.skeleton_video is not None:
            for name in ("keypoints", "reference_keypoints"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"'skeleton_video' is the pose condition as it is: drop '{name}'"
                    )
        return self


class MotionSpec(_Strict):
    """The animation of one image (JSON document, version 1)."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        allow_inf_nan=False,
        strict=True,
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    version: Literal[1] = Field(description="Spec format version.")
    image: str = Field(min_length=1, description="Input image path, relative to the spec file.")
    size: (
        tuple[Annotated[int, Field(ge=16, le=4096)], Annotated[int, Field(ge=16, le=4096)]] | None
    ) = Field(default=None, description="Working size [H, W]; default the image's own size.")
    num_frames: int = Field(default=16, ge=2, le=1024)
    fps: float = Field(default=8.0, gt=0.0, le=240.0)
    seed: int = Field(default=0, ge=0, lt=2**63)
    prompt: str = ""
    negative_prompt: str = ""
    depth: str | None = Field(
        default=None,
        description="Distance map path: .npy float distances or 16-bit PNG (value / 1000).",
    )
    render: str | None = Field(
        default=None,
        min_length=1,
        description="Guidance render folder in I2V3D's layout (ani/, depth/, fg_mask/, mask/: "
        "one PNG a frame), relative to the spec file: methods are guided by it instead of "
        "anima's own render.",
    )
    fov: float = Field(
        default=60.0, gt=1.0, lt=179.0, description="Horizontal field of view, degrees."
    )
    objects: list[SceneObject] = Field(default_factory=list)
    camera: Camera | None = Field(default=None, description="Camera motion; none = static.")
    pose: PoseDrive | None = Field(
        default=None, description="Driving pose sequence (human animation: xdyna)."
    )
    method: str | None = Field(default=None, description="Method name; default from weights.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Method options, validated by the method."
    )

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str = PrivateAttr(default="spec")

    @field_validator("objects")
    @classmethod
    def _unique_ids(cls, objects: list[SceneObject]):
        seen: set[int] = set()
        for i, obj in enumerate(objects):
            if obj.id in seen:
                raise ValueError(f"[{i}].id: {obj.id} is already used by another object")
            seen.add(obj.id)
        return objects

    @property
    def base_dir(self) -> Path:
        """The directory relative paths in the spec are resolved against."""
        return self._base_dir

    def with_base_dir(self, base_dir: Path) -> MotionSpec:
        self._base_dir = Path(base_dir)
        return self

    @property
    def where(self) -> str:
        """Where this spec came from, for error messages (``in path/to/spec.json``)."""
        return self._source

    def with_source(self, where: str) -> MotionSpec:
        self._source = where
        return self

    def resolve(self, relative: str) -> Path:
        """A path from the spec, resolved against the spec file's directory."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self._base_dir / path

    @property
    def moved_ids(self) -> set[int]:
        return {obj.id for obj in self.objects if obj.moves}


# ---------------------------------------------------------------------------------------------
# Loading, saving, error messages


def _json_path(loc: tuple[Any, ...]) -> str:
    """('objects', 0, 'trajectory', 2, 'depth') -> 'objects[0].trajectory[2].depth'."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and loc[i - 1] == "camera" and part in _CAMERA_TYPES:
            continue  # the discriminated-union tag pydantic inserts; not part of the JSON path
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


_CAMERA_TYPES = {"keyframes", "pan", "dolly", "zoom", "orbit"}


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _message(error: dict[str, Any]) -> str:
    """A short, human message for one pydantic error."""
    kind, ctx = error["type"], error.get("ctx", {})
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}"
    comparisons = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
    comparisons["less_than_equal"] = "<="
    if kind in comparisons:
        bound = next(iter(ctx.values()))
        return f"must be {comparisons[kind]} {bound:g}"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"must be {ctx.get('expected', 'one of the allowed values')}"
    if kind in {"too_short", "too_long"}:
        return error["msg"][0].lower() + error["msg"][1:]
    if kind == "union_tag_invalid":
        return f"unknown type {ctx.get('tag')!r} (expected {ctx.get('expected_tags')})"
    if kind == "union_tag_not_found":
        return f"needs a 'type' field (one of {', '.join(sorted(_CAMERA_TYPES))})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "finite_number":
        return "must be a finite number"
    return error["msg"][0].lower() + error["msg"][1:]


def format_validation_error(exc: ValidationError) -> str:
    """The first error as ``json.path: message`` (with a count of the others)."""
    errors = exc.errors()
    first = errors[0]
    path, message = _json_path(first["loc"]), _message(first)
    if message.startswith("["):  # a list validator naming the item: join it onto the path
        item, _, message = message.partition(": ")
        path += item
    text = f"{path}: {message}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return text


def parse_spec(data: Any, where: str = "spec", base_dir: Path | None = None) -> MotionSpec:
    """Validate a decoded JSON document; raise `InputError` naming the JSON path."""
    if not isinstance(data, dict):
        raise InputError("the spec must be a JSON object", where)
    try:
        # Validated as JSON text, in strict mode: "16" is not a number and true is not an
        # integer, exactly as the published JSON Schema says; arrays fill tuples.
        spec = MotionSpec.model_validate_json(json.dumps(data, allow_nan=True))
    except ValidationError as exc:
        raise InputError(format_validation_error(exc), where) from None
    except (TypeError, ValueError) as exc:  # not JSON-serialisable (Python callers only)
        raise InputError(f"the spec is not JSON data: {exc}", where) from None
    return spec.with_base_dir(base_dir or Path.cwd()).with_source(where)


def read_json_file(path: Path, kind: str) -> Any:
    """The JSON in the ``kind`` file at ``path`` ("spec", "suite"); an unreadable file or
    invalid JSON is one `InputError` naming the file (and the line and column)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is allowed
    except FileNotFoundError:
        raise InputError(f"{kind} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {kind} file {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", f"in {path}"
        ) from None


def load_spec(path: str | Path) -> MotionSpec:
    """Read and validate a spec file; relative paths inside resolve against its directory."""
    path = Path(path)
    data = read_json_file(path, "spec")
    return parse_spec(data, f"in {path}", base_dir=path.resolve().parent)


def spec_to_json(spec: MotionSpec) -> str:
    """The spec as indented JSON (defaults included, None fields left out)."""
    return spec.model_dump_json(indent=2, exclude_none=True)


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of MotionSpec v1."""
    schema = MotionSpec.model_json_schema()
    return {"$schema": schema.pop("$schema"), "$id": SCHEMA_ID, **schema}


def chosen_object(spec: MotionSpec, object_id: int | None, where: str) -> SceneObject | None:
    """The object a method that works on one object takes: ``object_id``'s (an `InputError`
    at ``where`` when the spec has none), else the first that moves, else the first; None
    for a spec without objects."""
    if object_id is not None:
        for obj in spec.objects:
            if obj.id == object_id:
                return obj
        raise InputError(f"the spec has no object with id {object_id}", where)
    if not spec.objects:
        return None
    moved = [obj for obj in spec.objects if obj.moves]
    return (moved or spec.objects)[0]
