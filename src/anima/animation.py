"""Animation: spec keyframes -> per-frame object and camera transforms.

Keyframes are interpolated with a monotone cubic (PCHIP) in x, y, depth (and rotation angles),
as both reference UIs do, and held constant outside the first and last keyframe. Frame f sits at
t = f / (F - 1).

Objects (LeviTor §3.3, Eq. 7): the anchor pixel (x, y) at distance ``depth`` is unprojected to
P(t) = K^-1 [x, y, 1]^T depth; the object's points move rigidly by T(t) = P(t) - P(t_0), and
optionally rotate by R(t) about the object's 3D centroid c: p' = R (p - c) + c + T.

Camera: world coordinates are the first frame's camera coordinates, and frame 0 always shows the
photo. Presets are expressed as fractions of the scene's median distance so that they mean the
same on any depth scale; zoom multiplies the focal length geometrically (factor ** t). Camera
keyframes are interpolated like object keyframes (zoom in log space), and the pose they give at
frame 0 (t = 0; held from the first keyframe when that comes later) is the reference: every
frame's camera-to-world transform C_f becomes C_0^-1 C_f and its zoom zoom_f / zoom_0, so a path
that starts later than t = 0, or at a pose other than the identity, still starts at the photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.interpolate import PchipInterpolator

from anima.camera import rigid, rotation_matrix, unproject
from anima.scene import Scene, pixel_mapping
from anima.spec import (
    DollyCamera,
    KeyframeCamera,
    MotionSpec,
    OrbitCamera,
    PanCamera,
    ZoomCamera,
)


@dataclass
class Animation:
    """Per-frame transforms of each object and of the camera, for F frames."""

    num_frames: int
    anchors: dict[int, torch.Tensor]  # id -> (F, 3): anchor pixel x, y and distance
    object_poses: dict[int, torch.Tensor]  # id -> (F, 4, 4) world transform of the object
    world_to_camera: torch.Tensor  # (F, 4, 4)
    intrinsics: torch.Tensor  # (F, 3, 3)
    moved_ids: set[int]
    size: tuple[int, int]  # (H, W) of the pixel grid of ``anchors`` and ``intrinsics``

    @property
    def camera_static(self) -> bool:
        eye = torch.eye(4, dtype=self.world_to_camera.dtype)
        same_k = torch.allclose(self.intrinsics, self.intrinsics[:1].expand_as(self.intrinsics))
        return bool(
            torch.allclose(self.world_to_camera, eye.expand_as(self.world_to_camera)) and same_k
        )

    def resized(self, size: tuple[int, int]) -> Animation:
        """The same motion seen at another pixel size (H, W), to render with
        ``scene.resized(size)`` (`anima.scene.Scene.resized`, issue "Photos as people take
        them", part 2).

        Pixel quantities follow the scene's pixel mapping (`anima.scene.pixel_mapping`): the
        anchors' x, y become (x + 0.5) W' / W - 0.5 and (y + 0.5) H' / H - 0.5, every frame's
        intrinsics K' = A K. 3D quantities (the anchors' distances, the object poses, the
        camera poses) do not depend on the resolution and are kept.

        This is the one correct way to get the animation at another size:
        ``build_animation(spec, scene.resized(size))`` would read the spec's trajectory pixels,
        which are pixels of the WORKING size, in the grid of ``size`` and so move objects to
        the wrong 3D places. Given a spec whose pixels are mapped too, it agrees with this up
        to what is measured on the resampled scene (a still object's anchor, a rotation's
        centre, the median distance camera presets scale with). The same size returns
        ``self``."""
        size = (int(size[0]), int(size[1]))
        if size == self.size:
            return self
        mapping = pixel_mapping(self.size, size)
        anchors = {}
        for object_id, anchor in self.anchors.items():
            moved = anchor.clone()
            xy = anchor[:, :2].to(mapping.dtype)
            moved[:, :2] = (xy @ mapping[:2, :2].T + mapping[:2, 2]).to(anchor.dtype)
            anchors[object_id] = moved
        return Animation(
            num_frames=self.num_frames,
            anchors=anchors,
            object_poses=self.object_poses,
            world_to_camera=self.world_to_camera,
            intrinsics=(mapping @ self.intrinsics.double()).to(self.intrinsics.dtype),
            moved_ids=set(self.moved_ids),
            size=size,
        )


def frame_times(num_frames: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, num_frames)


def interpolate_keyframes(times: list[float], values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """PCHIP through (times, values[K, D]) evaluated at ``at``, clamped outside the keyframes."""
    values = np.asarray(values, dtype=np.float64)
    if len(times) == 1:
        return np.repeat(values[:1], len(at), axis=0)
    clamped = np.clip(at, times[0], times[-1])
    return PchipInterpolator(np.asarray(times), values, axis=0)(clamped)


def object_poses(spec: MotionSpec, scene: Scene) -> tuple[dict, dict]:
    """Anchors (F, 3) and world transforms (F, 4, 4) of every object (Eq. 7)."""
    at = frame_times(spec.num_frames)
    k = scene.intrinsics
    anchors, poses = {}, {}
    for obj in spec.objects:
        if not obj.trajectory:
            mask = scene.mask(obj.id)
            ys, xs = torch.nonzero(mask, as_tuple=True)
            centre = torch.tensor(
                [
                    xs.double().mean(),
                    ys.double().mean(),
                    float(scene.distance[mask].double().median()),
                ]
            )
            anchors[obj.id] = centre.expand(spec.num_frames, 3).clone()
            poses[obj.id] = torch.eye(4, dtype=torch.float64).expand(spec.num_frames, 4, 4).clone()
            continue
        times = [kf.t for kf in obj.trajectory]
        xyd = np.array([[kf.x, kf.y, kf.depth] for kf in obj.trajectory])
        path = torch.from_numpy(interpolate_keyframes(times, xyd, at))
        anchors[obj.id] = path
        path_3d = unproject(path[:, :2], path[:, 2], k)
        first = unproject(torch.from_numpy(xyd[0, :2]), torch.tensor(xyd[0, 2]), k)
        translation = path_3d - first

        angles = np.array([kf.rotation or (0.0, 0.0, 0.0) for kf in obj.trajectory])
        rotation = rotation_matrix(torch.from_numpy(interpolate_keyframes(times, angles, at)))
        rotation = rotation @ rotation_matrix(torch.from_numpy(angles[0])).transpose(-1, -2)
        ys, xs = torch.nonzero(scene.mask(obj.id), as_tuple=True)
        pixels = torch.stack([xs, ys], dim=-1).double()
        centre = unproject(pixels, scene.distance[ys, xs].double(), k).mean(dim=0)
        offset = centre - (rotation @ centre) + translation
        poses[obj.id] = rigid(rotation, offset)
    return anchors, poses


def _median_distance(scene: Scene) -> float:
    return float(scene.distance.double().median())


def camera_path(spec: MotionSpec, scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera transforms (F, 4, 4) and intrinsics (F, 3, 3) from the spec's camera."""
    frames = spec.num_frames
    at = torch.from_numpy(frame_times(frames))
    k0 = scene.intrinsics
    eye = torch.eye(3, dtype=torch.float64).expand(frames, 3, 3)
    rotation, centre, zoom = eye.clone(), torch.zeros(frames, 3, dtype=torch.float64), None
    cam, median = spec.camera, _median_distance(scene)

    if isinstance(cam, PanCamera):
        centre = at[:, None] * torch.tensor([cam.x, cam.y, 0.0], dtype=torch.float64) * median
    elif isinstance(cam, DollyCamera):
        centre[:, 2] = at * cam.distance * median
    elif isinstance(cam, ZoomCamera):
        zoom = cam.factor**at
    elif isinstance(cam, OrbitCamera):
        pivot = torch.tensor([0.0, 0.0, cam.pivot or median], dtype=torch.float64)
        angles = torch.zeros(frames, 3, dtype=torch.float64)
        # Orbiting right (positive degrees about y) turns the camera towards -x to keep the pivot.
        angles[:, 1 if cam.axis == "y" else 0] = -at * cam.degrees
        rotation = rotation_matrix(angles)
        centre = pivot - (rotation @ pivot)
    elif isinstance(cam, KeyframeCamera):
        times = [kf.t for kf in cam.keyframes]
        at_np = at.numpy()
        centre = torch.from_numpy(
            interpolate_keyframes(times, np.array([kf.position for kf in cam.keyframes]), at_np)
        )
        angles = interpolate_keyframes(
            times, np.array([kf.rotation for kf in cam.keyframes]), at_np
        )
        rotation = rotation_matrix(torch.from_numpy(angles))
        log_zoom = np.log([[kf.zoom] for kf in cam.keyframes])
        zoom = torch.from_numpy(np.exp(interpolate_keyframes(times, log_zoom, at_np))[:, 0])

    rotation, centre, zoom = _relative_to_first_frame(rotation, centre, zoom)
    # camera-to-world is [R | c]; its inverse maps world points into the frame's camera.
    world_to_camera = rigid(
        rotation.transpose(-1, -2), -(rotation.transpose(-1, -2) @ centre[..., None])[..., 0]
    )
    intrinsics = k0.expand(frames, 3, 3).clone()
    if zoom is not None:
        intrinsics[:, 0, 0] *= zoom
        intrinsics[:, 1, 1] *= zoom
    return world_to_camera, intrinsics


def _relative_to_first_frame(
    rotation: torch.Tensor, centre: torch.Tensor, zoom: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Camera poses (F, 3, 3) rotations and (F, 3) centres of camera-to-world transforms C_f,
    and zooms (F,), re-expressed relative to frame 0: C_f' = C_0^-1 C_f, zoom_f / zoom_0.
    Frame 0 is then exactly the identity, i.e. the photo."""
    first_t = rotation[0].transpose(-1, -2)
    rotation = first_t @ rotation
    centre = (first_t @ (centre - centre[0])[..., None])[..., 0]
    rotation[0] = torch.eye(3, dtype=rotation.dtype)
    centre[0] = 0.0
    if zoom is not None:
        zoom = zoom / zoom[0]
    return rotation, centre, zoom


def build_animation(spec: MotionSpec, scene: Scene) -> Animation:
    """All per-frame transforms of the spec's objects and camera, in the pixel grid of
    ``scene`` (the working size: the spec's trajectory pixels are read in it). For another size,
    `Animation.resized`."""
    anchors, poses = object_poses(spec, scene)
    world_to_camera, intrinsics = camera_path(spec, scene)
    return Animation(
        spec.num_frames, anchors, poses, world_to_camera, intrinsics, spec.moved_ids, scene.size
    )
