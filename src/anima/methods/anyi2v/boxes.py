"""AnyI2V's box trajectories and query points, from the MotionSpec.

AnyI2V (appendix, "Controlling multiple objects", "camera motion") moves each object by a box per
frame and finds the object inside its box from a few query points. anima derives both from the
same MotionSpec as every method (docs/architecture.md, "Data flow"):

- the start box is the object's ``box``, or the bounding box of its mask (from a mask, points or
  a polygon);
- the box follows the object's anchor (`anima.animation.Animation.anchors`): its centre moves
  with the anchor's x, y and its size scales by d0 / d(t), the anchor's distance at frame 0 over
  that at frame t (perspective, as the coarse render scales the object), or it reaches an
  explicit end box, its size interpolated linearly around the moving anchor as the release does;
- query points are given (the method's options), else the object's selection ``points``, else
  K-means control points of its mask in the first frame (`anima.control_points`, LeviTor's
  rule);
- with a camera preset, a whole-frame box follows the camera (appendix, Fig. 10): the frame's
  corners at the scene's median distance, seen by each frame's camera.

Boxes are ``(x0, y0, x1, y1)`` in float pixels of the working size, pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anima.animation import Animation
from anima.camera import project, transform_points, unproject
from anima.control_points import compute_control_points
from anima.errors import InputError
from anima.scene import Scene
from anima.spec import MotionSpec, SceneObject

#: Object id of the whole-frame box a camera preset moves.
CAMERA_TRACK_ID = 0


@dataclass
class BoxTrack:
    """One object's boxes over the clip and the points that say which pixels are the object."""

    object_id: int
    boxes: torch.Tensor  # (F, 4) float64 x0, y0, x1, y1
    query_points: torch.Tensor  # (P, 2) float64 x, y in the first frame

    def visible(self, size: tuple[int, int]) -> torch.Tensor:
        """(F,) bool: the box overlaps the image (H, W) by at least one pixel."""
        height, width = size
        x0, y0, x1, y1 = self.boxes.unbind(-1)
        return (x1 >= 0) & (y1 >= 0) & (x0 <= width - 1) & (y0 <= height - 1)


def start_box(obj: SceneObject, scene: Scene) -> torch.Tensor:
    """(4,) the object's box in the first frame: its ``box``, else its mask's bounding box
    (pixel centres, so a one-pixel object is a zero-size box)."""
    if obj.box is not None:
        return torch.tensor(obj.box, dtype=torch.float64)
    ys, xs = torch.nonzero(scene.mask(obj.id), as_tuple=True)
    if len(xs) == 0:
        raise InputError("the object's selection covers no pixel", f"objects id {obj.id}")
    return torch.tensor([xs.min(), ys.min(), xs.max(), ys.max()], dtype=torch.float64)


def follow_anchor(
    box: torch.Tensor, anchor: torch.Tensor, end_box: torch.Tensor | None = None
) -> torch.Tensor:
    """(F, 4) boxes: ``box`` moved with the anchor (F, 3: x, y, distance) and scaled about it by
    d0 / d(t); with ``end_box``, the size goes linearly from the start box's to the end box's
    over the frames instead, and the offset of the box from the anchor scales with it."""
    frames = anchor.shape[0]
    anchor = anchor.double()
    start_xy = anchor[0, :2]
    corners = box.view(2, 2) - start_xy  # the box's corners about the anchor
    if end_box is None:
        scale = (anchor[0, 2] / anchor[:, 2])[:, None, None].expand(frames, 1, 2)
    else:
        size0 = box[2:] - box[:2]
        size1 = end_box[2:] - end_box[:2]
        at = torch.linspace(0.0, 1.0, frames, dtype=torch.float64)[:, None]
        scale = ((size0 + at * (size1 - size0)) / size0.clamp_min(1e-9))[:, None, :]
    moved = anchor[:, None, :2] + corners[None] * scale
    return moved.reshape(frames, 4)


def query_points(obj: SceneObject, scene: Scene, seed: int = 0) -> torch.Tensor:
    """(P, 2) the object's selection ``points``, else its mask's K-means control points (the
    first frame's, `anima.control_points.compute_control_points`, at least 3)."""
    if obj.points:
        return torch.tensor(obj.points, dtype=torch.float64)
    instance = (scene.instance == obj.id).long()[None] * obj.id
    points = compute_control_points(instance, scene.distance[None].float(), {obj.id}, seed=seed)
    return points.xy[0].double()


def _inside(points: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """(P,) bool: the points (P, 2) fall in the box's pixels (half a pixel around its centres)."""
    x, y = points.unbind(-1)
    return (x >= box[0] - 0.5) & (x <= box[2] + 0.5) & (y >= box[1] - 0.5) & (y <= box[3] + 0.5)


def camera_track(scene: Scene, animation: Animation) -> BoxTrack:
    """The whole-frame box a camera move gives (appendix, Fig. 10): the image's corners at the
    scene's median distance, seen by each frame's camera; its query point is the centre."""
    height, width = scene.size
    corners = torch.tensor(
        [[0.0, 0.0], [width - 1.0, 0.0], [0.0, height - 1.0], [width - 1.0, height - 1.0]],
        dtype=torch.float64,
    )
    depth = torch.full((4,), float(scene.distance.double().median()), dtype=torch.float64)
    world = unproject(corners, depth, scene.intrinsics.double())
    boxes = []
    for f in range(animation.num_frames):
        xy, _ = project(
            transform_points(animation.world_to_camera[f].double(), world),
            animation.intrinsics[f].double(),
        )
        boxes.append(torch.cat([xy.min(dim=0).values, xy.max(dim=0).values]))
    centre = torch.tensor([[(width - 1) / 2, (height - 1) / 2]], dtype=torch.float64)
    return BoxTrack(CAMERA_TRACK_ID, torch.stack(boxes), centre)


def box_tracks(
    spec: MotionSpec,
    scene: Scene,
    animation: Animation,
    end_boxes: dict[int, tuple[float, float, float, float]] | None = None,
    given_points: dict[int, list[tuple[float, float]]] | None = None,
) -> list[BoxTrack]:
    """Every object's `BoxTrack` (objects in spec order), and the camera's when the spec moves
    the camera; ``end_boxes`` and ``given_points`` by object id. Raises `InputError` for a box
    that is outside the image in every frame and for query points outside their start box."""
    end_boxes, given_points = end_boxes or {}, given_points or {}
    tracks = []
    for obj in spec.objects:
        box = start_box(obj, scene)
        end = end_boxes.get(obj.id)
        end_box = None if end is None else torch.tensor(end, dtype=torch.float64)
        boxes = follow_anchor(box, animation.anchors[obj.id], end_box)
        given = given_points.get(obj.id)
        if given is not None:
            points = torch.tensor(given, dtype=torch.float64).reshape(-1, 2)
        else:
            points = query_points(obj, scene, spec.seed)
        track = BoxTrack(obj.id, boxes, points)
        where = f"objects id {obj.id}"
        if not bool(track.visible(scene.size).any()):
            raise InputError("the object's box is outside the image in every frame", where)
        if not bool(_inside(points, box).all()):
            raise InputError("a query point lies outside the object's start box", where)
        tracks.append(track)
    if not animation.camera_static:
        tracks.append(camera_track(scene, animation))
    return tracks
