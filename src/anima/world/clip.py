"""`make_clip(seed, config) -> ToyClip`: one toy-world clip with exact ground truth.

The world is analytic (`anima.world.objects`), so every frame is rendered EXACTLY by casting one
ray through each pixel centre (integer pixel coordinates, the project's pinhole camera from
`anima.camera.intrinsics_from_fov`) and keeping the nearest hit: the colour, the distance (the
ray parameter is the planar distance), the instance id and the surface that was hit all come
from the same hit, so they agree by construction. No anti-aliasing: colour is sampled at the
pixel centre (textures are smooth and band-limited instead).

Why ray casting rather than the foundation's point renderer: the point renderer re-renders an
image that exists; here there is no image yet, and casting against the analytic surfaces gives
the exact distance, the true disoccluded background and exact visibility of any 3D point, which
the ground truth needs. The foundation's renderer is what `coarse` uses to *reproduce* a clip
from its MotionSpec, and the tests check that it does.

Ground truth per clip (`ToyClip`): frames, distance, instance (0 background, rigid movers 1..N,
then figures, then occluders), ``dynamic`` (pixels of time-varying texture: water), ``covisible``
(pixels whose surface point was observed in frame 0: the point is carried back to frame 0 by its
object's rigid motion (background: not at all), a ray from the first camera must reach it
unobstructed and inside the image, and the frame-0 pixel it falls in must show its surface;
figures are never covisible since they are not rigid),
point tracks of sample points on every rigid mover (visible = inside the image and the first
hit along the ray to the point is the point itself), the camera, figure keypoints (COCO-18, a
keypoint is visible when the first hit on its ray is its own figure, at most 0.12 x height in
front of the joint) and the MotionSpec (``spec``, a dict; see `anima.world.writer`).

Determinism: everything is drawn from ``numpy.random.default_rng(seed)`` in a fixed order; the
rendering is plain float64 numpy. A drawn scene is rejected and redrawn (from the same stream)
when a mover or figure covers < 6 pixels in frame 0 or is visible in fewer than half the frames,
covers > 30 % of the image, or comes nearer than 1.2 units to the camera; after 40 draws the last
one is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from anima.camera import intrinsics_from_fov
from anima.world.figure import NUM_KEYPOINTS, Figure
from anima.world.objects import Backdrop, Box, Ground, RigidObject, Sphere, Sprite, Surface
from anima.world.paths import CAMERA_MOVES, CameraPath, camera_path, object_path, rot_y
from anima.world.textures import GroundTexture, SkyTexture, SolidTexture, WaterRegion

WORLD_VERSION = 1
GROUND_Y = 1.0  # camera height above the ground (stage y is down)
BACKDROP_Z = 30.0  # distance of the sky backdrop (fits the 16-bit depth PNG: 65.5 units)
MIN_PIXELS = 6
MAX_COVER = 0.30
MIN_DISTANCE = 1.2
MAX_ATTEMPTS = 40


class WorldConfig(BaseModel):
    """How clips are drawn. Stored in ``world_index.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: tuple[int, int] = Field(default=(64, 64), description="(H, W) of the clips.")
    num_frames: int = Field(default=8, ge=2, le=1024)
    fps: float = Field(default=8.0, gt=0)
    fov: float = Field(default=55.0, gt=1.0, lt=179.0, description="Horizontal FOV, degrees.")
    tilt: float = Field(default=8.0, ge=0.0, le=30.0, description="Camera looks down, degrees.")
    max_objects: int = Field(default=3, ge=1, le=3, description="Rigid movers: 1..max.")
    figures: bool = Field(default=True, description="Allow an articulated figure.")
    figure_prob: float = Field(default=0.35, ge=0.0, le=1.0)
    occluder_prob: float = Field(default=0.7, ge=0.0, le=1.0)
    water_prob: float = Field(default=0.35, ge=0.0, le=1.0)
    camera_move_prob: float = Field(default=0.4, ge=0.0, le=1.0)


@dataclass
class ToyClip:
    """One clip and its ground truth (shapes: F frames, H x W, N tracks, P figures)."""

    seed: int
    config: WorldConfig
    frames: np.ndarray  # (F, 3, H, W) float32 in [0, 1]
    distance: np.ndarray  # (F, H, W) float32 planar distance
    instance: np.ndarray  # (F, H, W) int64
    dynamic: np.ndarray  # (F, H, W) bool, time-varying texture
    covisible: np.ndarray  # (F, H, W) bool, surface point visible in frame 0
    tracks: np.ndarray  # (N, F, 2) float64 pixels (x, y)
    visible: np.ndarray  # (N, F) bool
    track_depth: np.ndarray  # (N, F) float64 planar distance of the track point
    track_object: np.ndarray  # (N,) int64 instance id of each track
    world_to_camera: np.ndarray  # (F, 4, 4), world = the first camera's coordinates
    intrinsics: np.ndarray  # (3, 3)
    keypoints: np.ndarray  # (P, F, 18, 2)
    keypoint_visible: np.ndarray  # (P, F, 18) bool
    keypoint_figure: np.ndarray  # (P,) int64 instance ids
    objects: list[dict[str, Any]] = field(default_factory=list)
    camera_move: str = "static"
    attempts: int = 1
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[2]), int(self.frames.shape[3])

    @property
    def fov(self) -> float:
        return self.config.fov


@dataclass
class _World:
    """A drawn scene: surfaces (ground, sky, objects, figure limbs) and the camera path."""

    surfaces: list[Surface]
    movers: list[RigidObject]
    occluders: list[RigidObject]
    figures: list[Figure]
    camera: CameraPath


def _intrinsics(config: WorldConfig) -> np.ndarray:
    return intrinsics_from_fov(tuple(config.size), config.fov).numpy()


def _draw_world(rng: np.random.Generator, config: WorldConfig, k: np.ndarray) -> _World:
    frames, width = config.num_frames, config.size[1]
    focal = float(k[0, 0])
    water = None
    if rng.random() < config.water_prob:
        centre = (rng.uniform(-1.5, 1.5), rng.uniform(2.5, 5.0))
        water = WaterRegion(rng, centre, (rng.uniform(1.0, 2.0), rng.uniform(0.8, 1.5)))
    surfaces: list[Surface] = [
        Ground(GROUND_Y, GroundTexture(rng), water),
        Backdrop(BACKDROP_Z, SkyTexture(rng, horizon_y=GROUND_Y, scale=12.0)),
    ]
    kind = "static"
    if rng.random() < config.camera_move_prob:
        kind = str(rng.choice(CAMERA_MOVES[1:]))
    camera = camera_path(rng, kind, frames, config.tilt, pivot_z=5.0)

    occluder_spot = None
    occluders: list[RigidObject] = []
    if rng.random() < config.occluder_prob:
        half = np.array([rng.uniform(0.2, 0.5), rng.uniform(0.5, 0.8), rng.uniform(0.15, 0.3)])
        x, z = rng.uniform(-0.8, 0.8), rng.uniform(4.0, 6.0)
        centre = np.tile([x, GROUND_Y - half[1], z], (frames, 1))
        axes = rot_y(rng.uniform(-20, 20))
        occluders.append(
            Box(0, centre, SolidTexture(rng, 0.5), "box", "occluder", "static", half, axes)
        )
        occluder_spot = (x, z, float(np.hypot(half[0], half[2])))

    movers: list[RigidObject] = []
    for _ in range(int(rng.integers(1, config.max_objects + 1))):
        label = str(rng.choice(["sphere", "box", "sprite"]))
        size = rng.uniform(0.35, 0.65)
        choices = ["approach", "recede", "orbit"]
        choices += ["pass_behind", "pass_front"] if occluder_spot else ["pass"]
        path_kind = str(rng.choice(choices))
        lift = rng.uniform(0.0, 0.3) if label == "sprite" else 0.0
        centre = object_path(
            rng, path_kind, frames, focal, width, size, GROUND_Y, lift, occluder_spot
        )
        texture = SolidTexture(rng, size)
        if label == "sphere":
            obj: RigidObject = Sphere(0, centre, texture, path=path_kind, radius=size)
        elif label == "box":
            half = size * rng.uniform(0.7, 1.0, size=3)
            half[1] = size
            axes = rot_y(rng.uniform(-30, 30))
            obj = Box(0, centre, texture, path=path_kind, half=half, axes=axes)
        else:
            shape = str(rng.choice(["disc", "star", "diamond", "blob"]))
            obj = Sprite(0, centre, texture, path=path_kind, half_size=size, shape=shape)
        movers.append(obj)

    figures: list[Figure] = []
    if config.figures and rng.random() < config.figure_prob:
        t = np.linspace(0.0, 1.0, frames)
        height_units = rng.uniform(1.3, 1.6)
        motion = str(rng.choice(["walk", "wave"]))
        z_mid = rng.uniform(3.5, 6.0)
        if motion == "walk":
            heading = rng.uniform(-np.pi, np.pi)
            travel = rng.uniform(0.6, 1.4)
            start = np.array([rng.uniform(-0.8, 0.8), 0.0, z_mid])
            step = travel * np.array([np.sin(heading), 0.0, np.cos(heading)])
            root = start + (t[:, None] - 0.5) * step
            yaw = np.full(frames, heading)
        else:
            root = np.tile([rng.uniform(-1.0, 1.0), 0.0, z_mid], (frames, 1))
            yaw = np.full(frames, np.pi + rng.uniform(-0.4, 0.4))
        figures.append(Figure(rng, 0, root, yaw, motion, height_units, GROUND_Y))

    next_id = 1
    for obj in movers:
        obj.instance, next_id = next_id, next_id + 1
    for fig in figures:
        fig.instance, next_id = next_id, next_id + 1
        for part in fig.parts:
            part.instance = fig.instance
    for obj in occluders:
        obj.instance, next_id = next_id, next_id + 1
    surfaces += movers + occluders + [part for fig in figures for part in fig.parts]
    return _World(surfaces, movers, occluders, figures, camera)


# --------------------------------------------------------------------------- ray casting


def _pixel_rays(size: tuple[int, int], k: np.ndarray) -> np.ndarray:
    """(H*W, 3) camera-space ray directions K^-1 [x, y, 1] of the pixel centres."""
    height, width = size
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width), indexing="ij")
    x = (xs.reshape(-1) - k[0, 2]) / k[0, 0]
    y = (ys.reshape(-1) - k[1, 2]) / k[1, 1]
    return np.stack([x, y, np.ones_like(x)], axis=1)


def cast(surfaces: list[Surface], o: np.ndarray, d: np.ndarray, f: int):
    """Nearest hit of rays (o, d) in frame f: distance t (N,) and surface index (N,)."""
    best = np.full(len(d), np.inf)
    which = np.full(len(d), -1, dtype=np.int64)
    for i, surface in enumerate(surfaces):
        t = surface.intersect(o, d, f)
        nearer = t < best
        best = np.where(nearer, t, best)
        which = np.where(nearer, i, which)
    return best, which


def _project(camera: CameraPath, k: np.ndarray, p: np.ndarray, f: int):
    """Stage points (..., 3) -> pixels (..., 2), planar distance (...) in camera f."""
    cam = camera.stage_to_camera(p, f)
    z = cam[..., 2]
    safe = np.where(np.abs(z) < 1e-12, 1e-12, z)
    x = cam[..., 0] / safe * k[0, 0] + k[0, 2]
    y = cam[..., 1] / safe * k[1, 1] + k[1, 2]
    return np.stack([x, y], axis=-1), z


def _in_view(xy: np.ndarray, z: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    return (
        (z > 1e-6)
        & (xy[..., 0] >= -0.5)
        & (xy[..., 0] < width - 0.5)
        & (xy[..., 1] >= -0.5)
        & (xy[..., 1] < height - 0.5)
    )


def _rays_to(camera: CameraPath, p: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Stage directions (scaled to unit planar depth) from camera f to points p, and z."""
    cam = camera.stage_to_camera(p, f)
    z = cam[:, 2]
    d = (cam / np.where(np.abs(z) < 1e-12, 1e-12, z)[:, None]) @ camera.rotation[f].T
    return d, z


def _reaches(world: _World, k: np.ndarray, p: np.ndarray, surface: np.ndarray, f: int, size):
    """Whether the points p (stage, on surfaces ``surface``) are seen by camera f (bool (N,))."""
    xy, z = _project(world.camera, k, p, f)
    ok = _in_view(xy, z, size)
    if not ok.any():
        return ok
    d, _ = _rays_to(world.camera, p[ok], f)
    t, which = cast(world.surfaces, world.camera.centre[f], d, f)
    zz = z[ok]
    ok[ok] = (which == surface[ok]) & (np.abs(t - zz) <= 1e-6 * (1.0 + zz))
    return ok


def _observed_in_first_frame(
    world: _World, k: np.ndarray, p: np.ndarray, surface: np.ndarray, first: np.ndarray, size
) -> np.ndarray:
    """Whether the frame-0 image observed the points p (stage, on surfaces ``surface``): camera
    0 sees them (`_reaches`) and the pixel they fall in shows their surface (``first``: frame
    0's surface index per pixel). A point seen only between pixel centres (a sub-pixel band
    along an occlusion or silhouette edge) was not sampled by the image, so no re-render from
    it can know that point."""
    seen = _reaches(world, k, p, surface, 0, size)
    if not seen.any():
        return seen
    height, width = size
    xy, _ = _project(world.camera, k, p[seen], 0)
    px = np.clip(np.floor(xy[:, 0] + 0.5).astype(np.int64), 0, width - 1)
    py = np.clip(np.floor(xy[:, 1] + 0.5).astype(np.int64), 0, height - 1)
    seen[seen] = first[py * width + px] == surface[seen]
    return seen


def _geometry(world: _World, rays: np.ndarray, frames: int):
    """(F, N) distances and surface indices of the pixel rays."""
    ts, ids = [], []
    for f in range(frames):
        d = rays @ world.camera.rotation[f].T
        t, which = cast(world.surfaces, world.camera.centre[f], d, f)
        ts.append(t)
        ids.append(which)
    return np.stack(ts), np.stack(ids)


def _acceptable(world: _World, instance: np.ndarray, t: np.ndarray) -> bool:
    frames, pixels = instance.shape
    for obj_id in [o.instance for o in world.movers] + [fig.instance for fig in world.figures]:
        area = (instance == obj_id).sum(axis=1)
        if area[0] < MIN_PIXELS or (area >= 4).sum() < (frames + 1) // 2:
            return False
        if area.max() > MAX_COVER * pixels:
            return False
    return bool(t[instance > 0].min(initial=np.inf) >= MIN_DISTANCE)


def make_clip(seed: int, config: WorldConfig | None = None) -> ToyClip:
    """Draw and render the clip of ``seed`` (see the module docstring)."""
    config = config or WorldConfig()
    size, frames = tuple(config.size), config.num_frames
    k = _intrinsics(config)
    rng = np.random.default_rng(seed)
    rays = _pixel_rays(size, k)
    attempts = 0
    while True:
        attempts += 1
        world = _draw_world(rng, config, k)
        t, which = _geometry(world, rays, frames)
        inst_of = np.array([s.instance for s in world.surfaces], dtype=np.int64)
        instance = inst_of[which]
        if _acceptable(world, instance, t) or attempts == MAX_ATTEMPTS:
            break

    height, width = size
    rgb = np.zeros((frames, height * width, 3))
    dynamic = np.zeros((frames, height * width), dtype=bool)
    covisible = np.zeros((frames, height * width), dtype=bool)
    ground = world.surfaces[0]
    assert isinstance(ground, Ground)
    for f in range(frames):
        d = rays @ world.camera.rotation[f].T
        o = world.camera.centre[f]
        p = o + t[f][:, None] * d
        footprint = t[f] / k[0, 0] / np.maximum(np.abs(d[:, 1]) / np.linalg.norm(d, axis=1), 0.05)
        back = np.zeros((len(p), 3))
        time = f / (frames - 1)
        for i, surface in enumerate(world.surfaces):
            hit = which[f] == i
            if not hit.any():
                continue
            rgb[f, hit] = surface.shade(p[hit], f, time, footprint[hit])
            carried = surface.to_frame0(p[hit], f)
            if carried is None:
                back[hit] = np.nan
            else:
                back[hit] = carried
        dynamic[f] = (which[f] == 0) & ground.water_mask(p)
        rigid = ~np.isnan(back[:, 0])
        covisible[f, rigid] = _observed_in_first_frame(
            world, k, back[rigid], which[f][rigid], which[0], size
        )

    tracks, visible, track_depth, track_object = _tracks(world, k, size, frames)
    keypoints, kp_visible = _keypoints(world, k, size, frames)
    clip = ToyClip(
        seed=int(seed),
        config=config,
        frames=rgb.reshape(frames, height, width, 3).transpose(0, 3, 1, 2).astype(np.float32),
        distance=t.reshape(frames, height, width).astype(np.float32),
        instance=instance.reshape(frames, height, width),
        dynamic=dynamic.reshape(frames, height, width),
        covisible=covisible.reshape(frames, height, width),
        tracks=tracks,
        visible=visible,
        track_depth=track_depth,
        track_object=track_object,
        world_to_camera=world.camera.world_to_camera(),
        intrinsics=k,
        keypoints=keypoints,
        keypoint_visible=kp_visible,
        keypoint_figure=np.array([fig.instance for fig in world.figures], dtype=np.int64),
        objects=_describe(world),
        camera_move=world.camera.kind,
        attempts=attempts,
    )
    from anima.world.spec import clip_spec

    clip.spec = clip_spec(clip, world)
    return clip


def _tracks(world: _World, k: np.ndarray, size, frames: int):
    """Five surface points of every rigid mover: where the rays through its projected centre
    and four points half its apparent radius away meet the object in frame 0."""
    tracks, visible, depths, owner = [], [], [], []
    c0, r0 = world.camera.centre[0], world.camera.rotation[0]
    for obj in world.movers:
        index = world.surfaces.index(obj)
        xy, z = _project(world.camera, k, obj.centre[0], 0)
        radius = _size_of(obj) / max(float(z), 1e-6) * k[0, 0] * 0.5
        offsets = np.array([[0, 0], [radius, 0], [-radius, 0], [0, radius], [0, -radius]])
        pix = xy + offsets
        cam = np.stack(
            [(pix[:, 0] - k[0, 2]) / k[0, 0], (pix[:, 1] - k[1, 2]) / k[1, 1], np.ones(5)], 1
        )
        points, ok = obj.surface_points(c0, cam @ r0.T, 0)
        for point in points[ok]:
            path = point + obj.centre - obj.centre[0]  # (F, 3)
            projected = [_project(world.camera, k, path[f], f) for f in range(frames)]
            px = np.stack([xy for xy, _ in projected])
            vis = np.array(
                [
                    _reaches(world, k, path[f][None], np.array([index]), f, size)[0]
                    for f in range(frames)
                ]
            )
            tracks.append(px)
            visible.append(vis)
            depths.append(np.array([float(z) for _, z in projected]))
            owner.append(obj.instance)
    if not tracks:
        empty = np.zeros((0, frames))
        return np.zeros((0, frames, 2)), empty.astype(bool), empty, np.zeros(0, np.int64)
    return np.stack(tracks), np.stack(visible), np.stack(depths), np.array(owner, np.int64)


def _size_of(obj: RigidObject) -> float:
    if isinstance(obj, Sphere):
        return obj.radius
    if isinstance(obj, Box):
        return float(obj.half.max())
    assert isinstance(obj, Sprite)
    return obj.half_size


def _keypoints(world: _World, k: np.ndarray, size, frames: int):
    count = len(world.figures)
    points = np.zeros((count, frames, NUM_KEYPOINTS, 2))
    seen = np.zeros((count, frames, NUM_KEYPOINTS), dtype=bool)
    for i, fig in enumerate(world.figures):
        for f in range(frames):
            xy, z = _project(world.camera, k, fig.keypoints[f], f)
            points[i, f] = xy
            ok = _in_view(xy, z, size)
            d, _ = _rays_to(world.camera, fig.keypoints[f], f)
            t, which = cast(world.surfaces, world.camera.centre[f], d, f)
            owner = np.array([world.surfaces[w].instance if w >= 0 else 0 for w in which])
            seen[i, f] = ok & (owner == fig.instance) & (t >= z - 0.12 * fig.height)
    return points, seen


def _describe(world: _World) -> list[dict[str, Any]]:
    out = []
    for obj in world.movers + world.occluders:
        out.append(
            {
                "id": obj.instance,
                "label": obj.label,
                "role": obj.role,
                "path": obj.path,
                "size": round(_size_of(obj), 6),
            }
        )
    for fig in world.figures:
        out.append(
            {
                "id": fig.instance,
                "label": "figure",
                "role": "figure",
                "path": fig.motion,
                "size": round(fig.height, 6),
            }
        )
    return sorted(out, key=lambda item: item["id"])
