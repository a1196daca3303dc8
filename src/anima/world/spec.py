"""The MotionSpec of a toy clip: the first frame as the image, object paths as trajectories.

- ``image`` = ``frames/0000.png``, ``depth`` = ``depth/0000.png`` (the exact distance map),
  ``size``, ``fov``, ``num_frames``, ``fps``, ``seed`` of the clip;
- every object visible in frame 0 is listed with its first-frame mask ``masks/object_<id>.png``
  and a label (``sphere``, ``box``, ``sprite``, ``occluder``, ``figure``):
  rigid movers have a keyframe per frame (t = f / (F - 1)) of their anchor, the object's centre:
  x, y = its projection by the FIRST camera (the world frame of `anima.animation`, Eq. 7) and
  depth = its planar distance there. With a static camera this is the image trajectory; with a
  moving camera it is the world path as seen from the first view (the image track is in
  ``tracks.npz``). Occluders have no trajectory (still instances). A figure's anchor is its
  pelvis: the coarse method moves the figure rigidly, which only approximates its limbs;
- a moving camera is a ``keyframes`` camera with a keyframe per frame: the camera centre in the
  first camera's coordinates and the camera-to-world rotation as x, y, z Euler degrees
  (R = Rz Ry Rx, `anima.camera.rotation_matrix`).

Objects hidden in frame 0 (no mask pixels) are left out: a spec cannot select them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from anima.world.clip import ToyClip, _World


def euler_xyz(rotation: np.ndarray) -> tuple[float, float, float]:
    """Degrees (x, y, z) with rotation = Rz @ Ry @ Rx."""
    beta = np.arcsin(np.clip(-rotation[2, 0], -1.0, 1.0))
    alpha = np.arctan2(rotation[2, 1], rotation[2, 2])
    gamma = np.arctan2(rotation[1, 0], rotation[0, 0])
    return tuple(float(np.degrees(a)) for a in (alpha, beta, gamma))  # type: ignore[return-value]


def _r(value: float) -> float:
    return round(float(value), 6)


def mask_name(object_id: int) -> str:
    return f"masks/object_{object_id}.png"


def clip_spec(clip: ToyClip, world: _World) -> dict[str, Any]:
    frames = clip.num_frames
    k = clip.intrinsics
    times = [_r(f / (frames - 1)) for f in range(frames)]
    present = set(np.unique(clip.instance[0]).tolist())
    anchors: dict[int, np.ndarray] = {obj.instance: obj.centre for obj in world.movers}
    anchors.update({fig.instance: fig.anchor for fig in world.figures})
    objects = []
    for info in clip.objects:
        if info["id"] not in present:
            continue
        entry: dict[str, Any] = {"id": info["id"], "label": info["label"], "mask": ""}
        entry["mask"] = mask_name(info["id"])
        if info["id"] in anchors:
            world_points = world.camera.stage_to_world(anchors[info["id"]])
            z = world_points[:, 2]
            x = world_points[:, 0] / z * k[0, 0] + k[0, 2]
            y = world_points[:, 1] / z * k[1, 1] + k[1, 2]
            entry["trajectory"] = [
                {"t": times[f], "x": _r(x[f]), "y": _r(y[f]), "depth": _r(z[f])}
                for f in range(frames)
            ]
        objects.append(entry)
    spec: dict[str, Any] = {
        "version": 1,
        "image": "frames/0000.png",
        "depth": "depth/0000.png",
        "size": [clip.size[0], clip.size[1]],
        "num_frames": frames,
        "fps": float(clip.config.fps),
        "seed": int(clip.seed) % (2**63),
        "fov": float(clip.config.fov),
        "objects": objects,
    }
    if world.camera.kind != "static":
        cam, keyframes = world.camera, []
        for f in range(frames):
            rotation = cam.rotation[0].T @ cam.rotation[f]  # camera f -> world
            position = cam.stage_to_world(cam.centre[f])
            keyframes.append(
                {
                    "t": times[f],
                    "position": [_r(v) for v in position],
                    "rotation": [_r(v) for v in euler_xyz(rotation)],
                }
            )
        spec["camera"] = {"type": "keyframes", "keyframes": keyframes}
    return spec
