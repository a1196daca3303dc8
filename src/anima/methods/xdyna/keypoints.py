"""Driving keypoints: COCO-18 body joints, 21-point hands and iBUG-68 face landmarks per frame.

X-Dyna (§3 and Fig. 2) is driven by a pose sequence ``P_i`` (a 2D body skeleton per
frame, for the Pose ControlNet) and the driving frames' faces (for the S-Face ControlNet).
`DrivingKeypoints` holds what both need, in the project's pixel convention: floats, x right,
y down, pixel ``(row, col)`` has its centre at ``(x=col, y=row)``, sizes ``(H, W)``.

Body joints are COCO-18 in the OpenPose order (`anima.world.figure.JOINT_NAMES`)::

     0 nose        1 neck         2 r_shoulder   3 r_elbow    4 r_wrist   5 l_shoulder
     6 l_elbow     7 l_wrist      8 r_hip        9 r_knee    10 r_ankle  11 l_hip
    12 l_knee     13 l_ankle     14 r_eye       15 l_eye     16 r_ear    17 l_ear

Hands are OpenPose's 21-point layout (the same as DWPose's and MediaPipe Hands'): wrist 0, then
four points a finger from its base to its tip: thumb 1-4, index 5-8, middle 9-12, ring 13-16,
little 17-20; ``hands[:, 0]`` is the subject's left hand, ``hands[:, 1]`` the right. Face
landmarks are the iBUG-68 layout (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67;
see `anima.methods.xdyna.face`). Each point has a confidence in [0, 1]; 0 means missing. A
point counts as visible when its confidence exceeds a threshold: 0.3 for the body and the hands
(`BODY_THRESHOLD`, `HAND_THRESHOLD`: what DWPose, which drew the release's skeleton videos,
keeps), OpenPose's ``--face_render_threshold`` 0.4 for the face.

Accepted OpenPose JSON (`load_openpose`):

- a FOLDER of per-frame files named ``*_keypoints.json`` as OpenPose's ``--write_json`` writes
  them, read in natural name order (``..._2_keypoints.json`` before ``..._10_...``);
- a single ``.json`` FILE holding either one such frame object, a list of frame objects, or
  an object ``{"size": [H, W], "frames": [frame, ...]}`` (what `save_openpose` writes).

A frame object is ``{"people": [person, ...], ...}``; other keys are ignored except the
optional ``canvas_height`` / ``canvas_width`` (written by some OpenPose-format exporters),
which give the image size. Of ``people``, the entry ``person`` (default 0) is used; a frame
with fewer people is a frame with every point missing. In a person:

- ``pose_keypoints_2d``: flat ``[x, y, c] * 18`` (54 numbers, COCO-18) or ``[x, y, c] * 25``
  (75 numbers, OpenPose BODY_25, whose joints are mapped to COCO-18: BODY_25 adds mid-hip 8
  and the feet 19-24, otherwise the same joints); empty or absent means missing;
- ``face_keypoints_2d`` (optional): flat ``[x, y, c] * 70`` (OpenPose's face: iBUG-68 plus
  the two pupils 68-69, which are dropped) or ``* 68``; empty or absent means missing;
- ``hand_left_keypoints_2d`` / ``hand_right_keypoints_2d`` (optional): flat ``[x, y, c] * 21``
  each; empty or absent means missing.

OpenPose stores no image size: it comes from the ``size`` argument, else the file's ``size``,
else the first frame's ``canvas_height``/``canvas_width``. Coordinates are pixels unless
``normalized=True`` (values in [0, 1] over the image, OpenPose ``--keypoint_scale 3``, mapped
by ``x * W - 0.5``). Anything malformed raises `InputError` with one line naming the file and
the field.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anima.errors import InputError
from anima.world.figure import JOINT_NAMES

if TYPE_CHECKING:
    from anima.world.clip import ToyClip

PathLike = str | os.PathLike[str]

NUM_BODY = len(JOINT_NAMES)  # 18
NUM_FACE = 68
NUM_HAND = 21
#: The OpenPose JSON field of each hand, in the order of `DrivingKeypoints.hands`.
HAND_FIELDS = ("hand_left_keypoints_2d", "hand_right_keypoints_2d")
BODY_THRESHOLD = 0.3
"""A body joint is visible when its confidence exceeds this (DWPose draws joints above 0.3)."""
HAND_THRESHOLD = 0.3
"""A hand point is visible when its confidence exceeds this (DWPose's threshold, as the body)."""
FACE_THRESHOLD = 0.4
"""A face landmark is visible when its confidence exceeds this (``--face_render_threshold``)."""

#: BODY_25 index of each COCO-18 joint (BODY_25 inserts mid-hip at 8 and feet after 18).
BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
OPENPOSE_FACE_POINTS = 70  # iBUG-68 + two pupils
OPENPOSE_VERSION = 1.3


@dataclass
class DrivingKeypoints:
    """Per-frame body joints and optional face landmarks and hands of one person.

    ``body`` (F, 18, 2), ``face`` (F, 68, 2) and ``hands`` (F, 2, 21, 2: left, right) are
    float64 pixel coordinates in an image of ``size`` (H, W); ``body_confidence`` (F, 18),
    ``face_confidence`` (F, 68) and ``hands_confidence`` (F, 2, 21) are in [0, 1], 0 = missing.
    ``face`` and ``face_confidence`` are both None when there are no face landmarks at all, and
    so are ``hands`` and ``hands_confidence`` without hands. Shapes are checked on
    construction (a wrong shape is a ValueError: a programming error, not bad user input).
    """

    body: np.ndarray
    body_confidence: np.ndarray
    size: tuple[int, int]
    face: np.ndarray | None = None
    face_confidence: np.ndarray | None = None
    hands: np.ndarray | None = None
    hands_confidence: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.body = np.asarray(self.body, dtype=np.float64)
        self.body_confidence = np.asarray(self.body_confidence, dtype=np.float64)
        frames = self.body.shape[0] if self.body.ndim == 3 else -1
        if self.body.shape != (frames, NUM_BODY, 2) or frames < 1:
            raise ValueError(f"body must be (F>0, {NUM_BODY}, 2), got {self.body.shape}")
        self.body_confidence = _checked(self.body_confidence, (frames, NUM_BODY), "body_confidence")
        self.size = (int(self.size[0]), int(self.size[1]))
        if min(self.size) <= 0:
            raise ValueError(f"size must be a positive (H, W), got {self.size}")
        self.face, self.face_confidence = _optional_points(
            self.face, self.face_confidence, (frames, NUM_FACE), "face"
        )
        self.hands, self.hands_confidence = _optional_points(
            self.hands, self.hands_confidence, (frames, 2, NUM_HAND), "hands"
        )

    @property
    def num_frames(self) -> int:
        return int(self.body.shape[0])

    def body_visible(self, threshold: float = BODY_THRESHOLD) -> np.ndarray:
        """(F, 18) bool: confidence above ``threshold`` and finite coordinates."""
        return (self.body_confidence > threshold) & np.isfinite(self.body).all(axis=-1)

    def face_visible(self, threshold: float = FACE_THRESHOLD) -> np.ndarray:
        """(F, 68) bool (all False without face landmarks)."""
        if self.face is None or self.face_confidence is None:
            return np.zeros((self.num_frames, NUM_FACE), dtype=bool)
        return (self.face_confidence > threshold) & np.isfinite(self.face).all(axis=-1)

    def hands_visible(self, threshold: float = HAND_THRESHOLD) -> np.ndarray:
        """(F, 2, 21) bool (all False without hands)."""
        if self.hands is None or self.hands_confidence is None:
            return np.zeros((self.num_frames, 2, NUM_HAND), dtype=bool)
        return (self.hands_confidence > threshold) & np.isfinite(self.hands).all(axis=-1)

    def mapped(
        self, move: Callable[[np.ndarray], np.ndarray], size: tuple[int, int]
    ) -> DrivingKeypoints:
        """Every point (body, face, hands) moved by ``move`` into an image of ``size``;
        confidences are kept."""

        def copy(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array.copy()

        return DrivingKeypoints(
            body=move(self.body),
            body_confidence=self.body_confidence.copy(),
            size=size,
            face=None if self.face is None else move(self.face),
            face_confidence=copy(self.face_confidence),
            hands=None if self.hands is None else move(self.hands),
            hands_confidence=copy(self.hands_confidence),
        )

    def transformed(
        self, scale: float, offset: np.ndarray, size: tuple[int, int]
    ) -> DrivingKeypoints:
        """Every point mapped by ``x' = scale * x + offset`` into an image of ``size``."""
        offset = np.asarray(offset, dtype=np.float64).reshape(2)
        return self.mapped(lambda points: scale * points + offset, size)

    def resized(self, size: tuple[int, int]) -> DrivingKeypoints:
        """The same points in the pixel grid of the image resized to ``size`` (H, W).

        Pixel centres map onto pixel centres: ``x' = (x + 0.5) * W' / W - 0.5`` (same for y).
        """
        factor = np.array([size[1] / self.size[1], size[0] / self.size[0]])
        return self.mapped(lambda points: (points + 0.5) * factor - 0.5, size)

    def frames(self, index: list[int]) -> DrivingKeypoints:
        """The frames ``index`` (in that order) of every point set."""

        def pick(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[index]

        return DrivingKeypoints(
            self.body[index],
            self.body_confidence[index],
            self.size,
            pick(self.face),
            pick(self.face_confidence),
            pick(self.hands),
            pick(self.hands_confidence),
        )


def _checked(array: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``array`` as float64, or a ValueError when it is not ``shape``."""
    array = np.asarray(array, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"{name} must be {shape}, got {array.shape}")
    return array


def _optional_points(
    points: np.ndarray | None,
    confidence: np.ndarray | None,
    shape: tuple[int, ...],
    name: str,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Optional points ``shape + (2,)`` with confidences ``shape``: both or neither."""
    if (points is None) != (confidence is None):
        raise ValueError(f"{name} and {name}_confidence must both be given or both be None")
    if points is None or confidence is None:
        return None, None
    return _checked(points, (*shape, 2), name), _checked(confidence, shape, f"{name}_confidence")


# --------------------------------------------------------------------------- toy world


def from_toy_clip(clip: ToyClip, figure: int = 0) -> DrivingKeypoints:
    """The COCO-18 keypoints of toy-world figure ``figure`` of ``clip`` (no face landmarks).

    A keypoint's confidence is 1 where the clip marks it visible, else 0.
    """
    count = int(clip.keypoints.shape[0])
    if not 0 <= figure < count:
        raise InputError(
            f"toy clip has {count} figure(s), figure {figure} requested", f"toy clip {clip.seed}"
        )
    return DrivingKeypoints(
        body=clip.keypoints[figure].astype(np.float64),
        body_confidence=clip.keypoint_visible[figure].astype(np.float64),
        size=clip.size,
    )


# --------------------------------------------------------------------------- OpenPose JSON


def _natural_key(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read OpenPose JSON '{path}': {err.__class__.__name__}") from err
    except json.JSONDecodeError as err:
        raise InputError(
            f"cannot read OpenPose JSON '{path}': invalid JSON at line {err.lineno}"
        ) from err


def _points(values: Any, counts: dict[int, str], field: str, where: str) -> np.ndarray | None:
    """A flat ``[x, y, c] * n`` list as an (n, 3) array; None when empty or absent."""
    if values is None or (isinstance(values, list) and len(values) == 0):
        return None
    if not isinstance(values, list):
        raise InputError(f"{field} must be a list of numbers", where)
    if len(values) not in counts:
        expected = " or ".join(f"{n} ({name})" for n, name in counts.items())
        raise InputError(f"{field} has {len(values)} values, expected {expected}", where)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise InputError(f"{field} must hold only numbers", where)
    array = np.asarray(values, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(array).all():
        raise InputError(f"{field} holds a non-finite value", where)
    if (array[:, 2] < 0).any():
        raise InputError(f"{field} holds a negative confidence", where)
    return array


@dataclass
class _Frame:
    """One parsed OpenPose frame: (n, 3) ``[x, y, c]`` arrays, None where missing."""

    body: np.ndarray
    face: np.ndarray | None = None
    hands: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    canvas: tuple[int, int] | None = None


def _canvas(frame: dict[str, Any], where: str) -> tuple[int, int] | None:
    """The optional ``canvas_height`` / ``canvas_width`` of a frame object."""
    if "canvas_height" not in frame or "canvas_width" not in frame:
        return None
    h, w = frame["canvas_height"], frame["canvas_width"]
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise InputError("canvas_height/canvas_width must be positive integers", where)
    return h, w


def _parse_person(entry: Any, canvas: tuple[int, int] | None, at: str) -> _Frame:
    """One person object: its body (COCO-18), face (iBUG-68) and hands."""
    if not isinstance(entry, dict):
        raise InputError("a person must be an object", at)
    pose = _points(
        entry.get("pose_keypoints_2d"),
        {3 * NUM_BODY: "COCO-18", 75: "BODY_25"},
        "pose_keypoints_2d",
        f"{at}.pose_keypoints_2d",
    )
    body = np.zeros((NUM_BODY, 3))
    if pose is not None:
        body = pose if len(pose) == NUM_BODY else pose[list(BODY25_TO_COCO18)]
    face = _points(
        entry.get("face_keypoints_2d"),
        {3 * OPENPOSE_FACE_POINTS: "OpenPose face", 3 * NUM_FACE: "iBUG-68"},
        "face_keypoints_2d",
        f"{at}.face_keypoints_2d",
    )
    left, right = (
        _points(entry.get(field), {3 * NUM_HAND: "OpenPose hand"}, field, f"{at}.{field}")
        for field in HAND_FIELDS
    )
    return _Frame(body, None if face is None else face[:NUM_FACE], (left, right), canvas)


def _parse_frame(frame: Any, person: int, where: str) -> _Frame:
    """One OpenPose frame object; a frame without person ``person`` has every point missing."""
    if not isinstance(frame, dict) or not isinstance(frame.get("people"), list):
        raise InputError("not an OpenPose frame: no 'people' list", where)
    canvas = _canvas(frame, where)
    people = frame["people"]
    if len(people) <= person:
        return _Frame(np.zeros((NUM_BODY, 3)), canvas=canvas)
    return _parse_person(people[person], canvas, f"{where}: people[{person}]")


def _frames_of(path: Path) -> tuple[list[tuple[Any, str]], tuple[int, int] | None]:
    """The frame objects of a folder or file, each with its location, and a stored size."""
    if path.is_dir():
        files = sorted(path.glob("*_keypoints.json"), key=lambda f: _natural_key(f.name))
        if not files:
            raise InputError(f"no '*_keypoints.json' files in OpenPose folder '{path}'")
        return [(_read_json(f), str(f)) for f in files], None
    if not path.is_file():
        raise InputError(f"OpenPose JSON '{path}' does not exist")
    data = _read_json(path)
    if isinstance(data, list):
        if not data:
            raise InputError("OpenPose JSON holds an empty list of frames", str(path))
        return [(frame, f"{path}: [{i}]") for i, frame in enumerate(data)], None
    if isinstance(data, dict) and "frames" in data:
        frames, size = data["frames"], data.get("size")
        if not isinstance(frames, list) or not frames:
            raise InputError("'frames' must be a non-empty list", f"{path}: frames")
        stored = None
        if size is not None:
            ok = isinstance(size, list) and len(size) == 2
            if not ok or not all(isinstance(v, int) and v > 0 for v in size):
                raise InputError("'size' must be [H, W], positive integers", f"{path}: size")
            stored = (size[0], size[1])
        return [(frame, f"{path}: frames[{i}]") for i, frame in enumerate(frames)], stored
    return [(data, str(path))], None


def _stack_optional(parts: list[np.ndarray | None], shape: tuple[int, ...]) -> np.ndarray | None:
    """Per-frame arrays stacked, zeros (confidence 0) where a frame has none; None if none has."""
    if all(part is None for part in parts):
        return None
    return np.stack([np.zeros(shape) if part is None else part for part in parts])


def load_openpose(
    path: PathLike,
    size: tuple[int, int] | None = None,
    person: int = 0,
    normalized: bool = False,
) -> DrivingKeypoints:
    """Read OpenPose JSON (a folder of ``*_keypoints.json`` or one file; see the module doc).

    ``size`` (H, W) is the image size the coordinates refer to, needed unless the JSON stores
    it. ``face`` (``hands``) is None when no frame has face landmarks (hands); otherwise the
    frames without them have confidence 0. Bad input raises `InputError` naming the file and
    field.
    """
    path = Path(path)
    frames, stored = _frames_of(path)
    parsed = [_parse_frame(frame, person, where) for frame, where in frames]
    canvas = next((p.canvas for p in parsed if p.canvas is not None), None)
    size = size or stored or canvas
    if size is None:
        raise InputError(
            "image size unknown: OpenPose JSON stores none, pass size=(H, W)", str(path)
        )
    body = np.stack([p.body for p in parsed])
    face = _stack_optional([p.face for p in parsed], (NUM_FACE, 3))
    hand = (NUM_HAND, 3)
    sides = [_stack_optional([p.hands[side] for p in parsed], hand) for side in (0, 1)]
    hands = None
    if any(side is not None for side in sides):
        blank = np.zeros((len(parsed), *hand))
        hands = np.stack([blank if side is None else side for side in sides], axis=1)
    if normalized:
        scale = np.array([size[1], size[0]], dtype=np.float64)
        for points in (body, face, hands):
            if points is not None:
                points[..., :2] = points[..., :2] * scale - 0.5
    return DrivingKeypoints(
        body=body[..., :2],
        body_confidence=body[..., 2],
        size=size,
        face=None if face is None else face[..., :2],
        face_confidence=None if face is None else face[..., 2],
        hands=None if hands is None else hands[..., :2],
        hands_confidence=None if hands is None else hands[..., 2],
    )


def _flat(points: np.ndarray, confidence: np.ndarray) -> list[float]:
    return [float(v) for v in np.concatenate([points, confidence[:, None]], axis=1).reshape(-1)]


def _person(keypoints: DrivingKeypoints, f: int) -> dict[str, Any]:
    """Frame ``f`` of ``keypoints`` as an OpenPose person object (pupils written missing)."""
    person: dict[str, Any] = {
        "person_id": [-1],
        "pose_keypoints_2d": _flat(keypoints.body[f], keypoints.body_confidence[f]),
        "face_keypoints_2d": [],
        HAND_FIELDS[0]: [],
        HAND_FIELDS[1]: [],
    }
    if keypoints.face is not None and keypoints.face_confidence is not None:
        pupils = [0.0] * (3 * (OPENPOSE_FACE_POINTS - NUM_FACE))
        person["face_keypoints_2d"] = (
            _flat(keypoints.face[f], keypoints.face_confidence[f]) + pupils
        )
    if keypoints.hands is not None and keypoints.hands_confidence is not None:
        for side, field in enumerate(HAND_FIELDS):
            person[field] = _flat(keypoints.hands[f, side], keypoints.hands_confidence[f, side])
    return person


def openpose_frames(keypoints: DrivingKeypoints) -> list[dict[str, Any]]:
    """The OpenPose frame objects of ``keypoints`` (COCO-18 body, 70-point face, hands).

    Each frame has one person; the two pupils (face points 68-69) are written missing. The
    image size is added as ``canvas_height`` / ``canvas_width``.
    """
    return [
        {
            "version": OPENPOSE_VERSION,
            "canvas_height": keypoints.size[0],
            "canvas_width": keypoints.size[1],
            "people": [_person(keypoints, f)],
        }
        for f in range(keypoints.num_frames)
    ]


def save_openpose(path: PathLike, keypoints: DrivingKeypoints, prefix: str = "frame") -> None:
    """Write ``keypoints`` as OpenPose JSON that `load_openpose` reads back exactly.

    A path ending in ``.json`` gets one file ``{"size": [H, W], "frames": [...]}``; any other
    path becomes a folder of ``{prefix}_{f:012d}_keypoints.json`` files, as OpenPose names
    them. Written atomically (`anima.io.atomic_path` / `atomic_dir`).
    """
    from anima.io import atomic_dir, atomic_path

    path = Path(path)
    frames = openpose_frames(keypoints)
    if path.suffix.lower() == ".json":
        document = {"size": list(keypoints.size), "frames": frames}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(document), encoding="utf-8")
        return
    width = max(12, int(math.log10(max(len(frames), 1))) + 1)
    with atomic_dir(path) as tmp:
        for f, frame in enumerate(frames):
            name = f"{prefix}_{f:0{width}d}_keypoints.json"
            (tmp / name).write_text(json.dumps(frame), encoding="utf-8")
