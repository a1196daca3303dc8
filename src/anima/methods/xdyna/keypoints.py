"""Driving keypoints: COCO-18 body joints and iBUG-68 face landmarks per frame.

X-Dyna (§3 and Fig. 2) is driven by a pose sequence ``P_i`` (a 2D body skeleton per
frame, for the Pose ControlNet) and the driving frames' faces (for the S-Face ControlNet).
`DrivingKeypoints` holds what both need, in the project's pixel convention: floats, x right,
y down, pixel ``(row, col)`` has its centre at ``(x=col, y=row)``, sizes ``(H, W)``.

Body joints are COCO-18 in the OpenPose order (`anima.world.figure.JOINT_NAMES`)::

     0 nose        1 neck         2 r_shoulder   3 r_elbow    4 r_wrist   5 l_shoulder
     6 l_elbow     7 l_wrist      8 r_hip        9 r_knee    10 r_ankle  11 l_hip
    12 l_knee     13 l_ankle     14 r_eye       15 l_eye     16 r_ear    17 l_ear

Face landmarks are the iBUG-68 layout (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth
48-67; see `anima.methods.xdyna.face`). Each point has a confidence in [0, 1]; 0 means
missing. A point counts as visible when its confidence exceeds a threshold; the defaults are
OpenPose's render thresholds (``--render_threshold 0.05`` for the body,
``--face_render_threshold 0.4`` for the face).

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
  the two pupils 68-69, which are dropped) or ``* 68``; empty or absent means missing.

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
BODY_THRESHOLD = 0.05
"""A body joint is visible when its confidence exceeds this (OpenPose ``--render_threshold``)."""
FACE_THRESHOLD = 0.4
"""A face landmark is visible when its confidence exceeds this (``--face_render_threshold``)."""

#: BODY_25 index of each COCO-18 joint (BODY_25 inserts mid-hip at 8 and feet after 18).
BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
OPENPOSE_FACE_POINTS = 70  # iBUG-68 + two pupils
OPENPOSE_VERSION = 1.3


@dataclass
class DrivingKeypoints:
    """Per-frame body joints and optional face landmarks of one person.

    ``body`` (F, 18, 2) and ``face`` (F, 68, 2) are float64 pixel coordinates in an image of
    ``size`` (H, W); ``body_confidence`` (F, 18) and ``face_confidence`` (F, 68) are in
    [0, 1], 0 = missing. ``face`` and ``face_confidence`` are both None when there are no face
    landmarks at all. Shapes are checked on construction (a wrong shape is a ValueError: a
    programming error, not bad user input).
    """

    body: np.ndarray
    body_confidence: np.ndarray
    size: tuple[int, int]
    face: np.ndarray | None = None
    face_confidence: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.body = np.asarray(self.body, dtype=np.float64)
        self.body_confidence = np.asarray(self.body_confidence, dtype=np.float64)
        frames = self.body.shape[0] if self.body.ndim == 3 else -1
        if self.body.shape != (frames, NUM_BODY, 2) or frames < 1:
            raise ValueError(f"body must be (F>0, {NUM_BODY}, 2), got {self.body.shape}")
        if self.body_confidence.shape != (frames, NUM_BODY):
            raise ValueError(
                f"body_confidence must be ({frames}, {NUM_BODY}), got {self.body_confidence.shape}"
            )
        self.size = (int(self.size[0]), int(self.size[1]))
        if min(self.size) <= 0:
            raise ValueError(f"size must be a positive (H, W), got {self.size}")
        if (self.face is None) != (self.face_confidence is None):
            raise ValueError("face and face_confidence must both be given or both be None")
        if self.face is not None and self.face_confidence is not None:
            self.face = np.asarray(self.face, dtype=np.float64)
            self.face_confidence = np.asarray(self.face_confidence, dtype=np.float64)
            if self.face.shape != (frames, NUM_FACE, 2):
                raise ValueError(f"face must be ({frames}, {NUM_FACE}, 2), got {self.face.shape}")
            if self.face_confidence.shape != (frames, NUM_FACE):
                raise ValueError(
                    f"face_confidence must be ({frames}, {NUM_FACE}), "
                    f"got {self.face_confidence.shape}"
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

    def transformed(
        self, scale: float, offset: np.ndarray, size: tuple[int, int]
    ) -> DrivingKeypoints:
        """Every point mapped by ``x' = scale * x + offset`` into an image of ``size``."""
        offset = np.asarray(offset, dtype=np.float64).reshape(2)
        face = None if self.face is None else scale * self.face + offset
        return DrivingKeypoints(
            body=scale * self.body + offset,
            body_confidence=self.body_confidence.copy(),
            size=size,
            face=face,
            face_confidence=None if self.face_confidence is None else self.face_confidence.copy(),
        )

    def resized(self, size: tuple[int, int]) -> DrivingKeypoints:
        """The same points in the pixel grid of the image resized to ``size`` (H, W).

        Pixel centres map onto pixel centres: ``x' = (x + 0.5) * W' / W - 0.5`` (same for y).
        """
        sy, sx = size[0] / self.size[0], size[1] / self.size[1]
        factor = np.array([sx, sy])

        def move(points: np.ndarray) -> np.ndarray:
            return (points + 0.5) * factor - 0.5

        return DrivingKeypoints(
            body=move(self.body),
            body_confidence=self.body_confidence.copy(),
            size=size,
            face=None if self.face is None else move(self.face),
            face_confidence=None if self.face_confidence is None else self.face_confidence.copy(),
        )


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


def _parse_frame(
    frame: Any, person: int, where: str
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int] | None]:
    """One OpenPose frame object -> body (18, 3), face (68, 3) or None, canvas size or None."""
    if not isinstance(frame, dict) or not isinstance(frame.get("people"), list):
        raise InputError("not an OpenPose frame: no 'people' list", where)
    canvas = None
    if "canvas_height" in frame and "canvas_width" in frame:
        h, w = frame["canvas_height"], frame["canvas_width"]
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise InputError("canvas_height/canvas_width must be positive integers", where)
        canvas = (h, w)
    body = np.zeros((NUM_BODY, 3))
    people = frame["people"]
    if len(people) <= person:
        return body, None, canvas
    entry = people[person]
    at = f"{where}: people[{person}]"
    if not isinstance(entry, dict):
        raise InputError("a person must be an object", at)
    pose = _points(
        entry.get("pose_keypoints_2d"),
        {3 * NUM_BODY: "COCO-18", 75: "BODY_25"},
        "pose_keypoints_2d",
        f"{at}.pose_keypoints_2d",
    )
    if pose is not None:
        body = pose if len(pose) == NUM_BODY else pose[list(BODY25_TO_COCO18)]
    face = _points(
        entry.get("face_keypoints_2d"),
        {3 * OPENPOSE_FACE_POINTS: "OpenPose face", 3 * NUM_FACE: "iBUG-68"},
        "face_keypoints_2d",
        f"{at}.face_keypoints_2d",
    )
    return body, None if face is None else face[:NUM_FACE], canvas


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


def load_openpose(
    path: PathLike,
    size: tuple[int, int] | None = None,
    person: int = 0,
    normalized: bool = False,
) -> DrivingKeypoints:
    """Read OpenPose JSON (a folder of ``*_keypoints.json`` or one file; see the module doc).

    ``size`` (H, W) is the image size the coordinates refer to, needed unless the JSON stores
    it. ``face`` is None when no frame has face landmarks; otherwise frames without them have
    confidence 0. Bad input raises `InputError` naming the file and field.
    """
    path = Path(path)
    frames, stored = _frames_of(path)
    bodies, faces, canvas = [], [], None
    for frame, where in frames:
        body, face, frame_canvas = _parse_frame(frame, person, where)
        bodies.append(body)
        faces.append(face)
        canvas = canvas or frame_canvas
    size = size or stored or canvas
    if size is None:
        raise InputError(
            "image size unknown: OpenPose JSON stores none, pass size=(H, W)", str(path)
        )
    body = np.stack(bodies)
    face = None
    if any(f is not None for f in faces):
        face = np.stack([np.zeros((NUM_FACE, 3)) if f is None else f for f in faces])
    if normalized:
        scale = np.array([size[1], size[0]], dtype=np.float64)
        body[..., :2] = body[..., :2] * scale - 0.5
        if face is not None:
            face[..., :2] = face[..., :2] * scale - 0.5
    return DrivingKeypoints(
        body=body[..., :2],
        body_confidence=body[..., 2],
        size=size,
        face=None if face is None else face[..., :2],
        face_confidence=None if face is None else face[..., 2],
    )


def _flat(points: np.ndarray, confidence: np.ndarray) -> list[float]:
    return [float(v) for v in np.concatenate([points, confidence[:, None]], axis=1).reshape(-1)]


def openpose_frames(keypoints: DrivingKeypoints) -> list[dict[str, Any]]:
    """The OpenPose frame objects of ``keypoints`` (COCO-18 body, 70-point face).

    Each frame has one person; the two pupils (face points 68-69) are written missing. The
    image size is added as ``canvas_height`` / ``canvas_width``.
    """
    out = []
    pupils = [0.0] * (3 * (OPENPOSE_FACE_POINTS - NUM_FACE))
    for f in range(keypoints.num_frames):
        person: dict[str, Any] = {
            "person_id": [-1],
            "pose_keypoints_2d": _flat(keypoints.body[f], keypoints.body_confidence[f]),
            "face_keypoints_2d": [],
            "hand_left_keypoints_2d": [],
            "hand_right_keypoints_2d": [],
        }
        if keypoints.face is not None and keypoints.face_confidence is not None:
            face = _flat(keypoints.face[f], keypoints.face_confidence[f])
            person["face_keypoints_2d"] = face + pupils
        out.append(
            {
                "version": OPENPOSE_VERSION,
                "canvas_height": keypoints.size[0],
                "canvas_width": keypoints.size[1],
                "people": [person],
            }
        )
    return out


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
