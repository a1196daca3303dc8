"""A pure-torch z-buffer point renderer (pytorch3d cannot be installed here).

This is LeviTor's 3D step (§3.3, Eq. 7-8) generalised: every object's pixels are unprojected,
moved by their per-frame rigid transform, seen by the per-frame camera and splatted back with a
z-test, giving per frame RGB, planar distance, instance ids (0 = background) and visibility.

- **Background plate.** The image with every selected object removed (OpenCV inpainting) is
  computed once. Its pixels under the objects are a guess, not an observation: they never
  occlude anything (their z-test depth is pushed to infinity) and render as not visible.
- **No holes when things come nearer.** A point group whose image-space magnification over the
  clip reaches m is supersampled with ceil(m) x ceil(m) sub-points per pixel, spaced at most one
  target pixel apart, so rounding to pixel centres leaves no gaps (the role of LeviTor's
  "10 points per pixel and radius growing as the object nears").
- **z-buffer.** Each sub-point becomes a 64-bit key: the bits of its positive float32 depth in the
  high word (positive IEEE floats order like integers) and its index in the low word. One
  ``scatter_reduce(amin)`` per frame then selects the nearest point of every pixel exactly and
  deterministically, with no per-pixel Python.
- With a static camera the plate is not re-rendered: it initialises the z-buffer as is, so an
  identity trajectory reproduces the input image exactly. With a moving camera the plate is
  splatted like any point group; pixels nothing lands on (frame borders, parallax gaps) are
  inpainted per frame and marked not visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from anima.animation import Animation, point_magnification
from anima.camera import project, transform_points, unproject
from anima.scene import Scene

MAX_SUPERSAMPLE = 6
_EMPTY = torch.iinfo(torch.int64).max
_HIDDEN_DEPTH = 1e30  # z-test depth of guessed (inpainted) plate pixels: they never occlude


@dataclass
class RenderResult:
    """Per-frame render of a scene: the geometric truth every 3D-aware method is guided by."""

    rgb: torch.Tensor  # (F, 3, H, W) float32 in [0, 1]
    distance: torch.Tensor  # (F, H, W) float32 planar distance
    instance: torch.Tensor  # (F, H, W) int64, object id or 0
    visible: torch.Tensor  # (F, H, W) bool: the pixel shows an observed scene point

    @property
    def num_frames(self) -> int:
        return int(self.rgb.shape[0])


@dataclass
class BackgroundPlate:
    """The scene without its selected objects, computed once per scene."""

    rgb: torch.Tensor  # (3, H, W)
    distance: torch.Tensor  # (H, W)
    observed: torch.Tensor  # (H, W) bool, False where the objects were


def background_plate(scene: Scene, radius: int = 5, margin: int = 3) -> BackgroundPlate:
    """Inpaint the objects away (OpenCV Telea) in colour and distance.

    The inpainting region is the objects' mask dilated by ``margin`` pixels, so that mixed edge
    pixels do not seed the fill; outside the exact masks the original pixels are kept."""
    objects = (scene.instance > 0).numpy()
    if not objects.any():
        return BackgroundPlate(
            scene.image.clone(),
            scene.distance.clone(),
            torch.ones_like(scene.instance, dtype=torch.bool),
        )
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    region = cv2.dilate(objects.astype(np.uint8), kernel)
    rgb8 = (scene.image.permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    filled = cv2.inpaint(rgb8, region, radius, cv2.INPAINT_TELEA)
    depth = cv2.inpaint(
        scene.distance.numpy().astype(np.float32), region, radius, cv2.INPAINT_TELEA
    )
    keep = torch.from_numpy(~objects)
    rgb = torch.where(keep, scene.image, torch.from_numpy(filled).permute(2, 0, 1).float() / 255)
    distance = torch.where(keep, scene.distance, torch.from_numpy(depth))
    return BackgroundPlate(rgb, distance, keep)


@dataclass
class _PointGroup:
    """Sub-sampled surface points that move together: the plate or one object."""

    world: torch.Tensor  # (M, 3) float32 world points (first frame's camera coordinates)
    rgb: torch.Tensor  # (M, 3)
    observed: torch.Tensor  # (M,) bool
    instance: int
    pose: torch.Tensor  # (F, 4, 4) float64


def _sub_offsets(factor: int) -> torch.Tensor:
    steps = (torch.arange(factor, dtype=torch.float32) + 0.5) / factor - 0.5
    oy, ox = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([ox.reshape(-1), oy.reshape(-1)], dim=-1)


def _sample_colour(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear colour of (M, 2) sub-pixel positions in a (3, H, W) image."""
    height, width = image.shape[-2:]
    grid = torch.stack([xy[:, 0] / max(width - 1, 1), xy[:, 1] / max(height - 1, 1)], -1) * 2 - 1
    out = torch.nn.functional.grid_sample(
        image[None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=True
    )
    return out[0, :, 0].T


def _point_group(
    scene: Scene,
    mask: torch.Tensor,
    colours: torch.Tensor,
    distance: torch.Tensor,
    observed: torch.Tensor,
    instance: int,
    pose: torch.Tensor,
    animation: Animation,
) -> _PointGroup:
    """The pixels under ``mask`` as points, each supersampled by its own magnification."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    xy = torch.stack([xs, ys], dim=-1).float()
    depth = distance[ys, xs].float()
    k0 = scene.intrinsics.float()
    points = unproject(xy, depth, k0)
    magnification = point_magnification(points.double(), pose, animation, scene.size)
    # Sub-points spaced <= 1/1.1 target pixel: rounding to pixel centres then skips none, even
    # with float error at exact integer magnifications. Unmagnified points stay single.
    factor = (magnification * 1.1).ceil().clamp(1, MAX_SUPERSAMPLE).long()
    factor[magnification <= 1.0 + 1e-3] = 1
    parts_xy, parts_depth, parts_observed, parts_rgb = [], [], [], []
    for level in factor.unique().tolist():
        chosen = factor == level
        offsets = _sub_offsets(level)
        sub_xy = (xy[chosen][:, None, :] + offsets[None]).reshape(-1, 2)
        parts_xy.append(sub_xy)
        parts_depth.append(depth[chosen].repeat_interleave(len(offsets)))
        parts_observed.append(observed[ys[chosen], xs[chosen]].repeat_interleave(len(offsets)))
        if level == 1:
            parts_rgb.append(colours[:, ys[chosen], xs[chosen]].T)
        else:  # magnified: bilinear colour between pixel centres, not blocks
            parts_rgb.append(_sample_colour(colours, sub_xy))
    sub_depth = torch.cat(parts_depth)
    world = unproject(torch.cat(parts_xy), sub_depth, k0)
    return _PointGroup(world, torch.cat(parts_rgb), torch.cat(parts_observed), instance, pose)


def _groups(scene: Scene, animation: Animation, plate: BackgroundPlate, splat_plate: bool):
    identity = torch.eye(4, dtype=torch.float64).expand(animation.num_frames, 4, 4)
    groups = []
    if splat_plate:
        everywhere = torch.ones(scene.size, dtype=torch.bool)
        groups.append(
            _point_group(
                scene, everywhere, plate.rgb, plate.distance, plate.observed, 0, identity, animation
            )
        )
    all_observed = torch.ones(scene.size, dtype=torch.bool)
    for object_id in scene.object_ids:
        groups.append(
            _point_group(
                scene,
                scene.mask(object_id),
                scene.image,
                scene.distance,
                all_observed,
                object_id,
                animation.object_poses[object_id],
                animation,
            )
        )
    return groups


def _depth_keys(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """64-bit z-buffer keys: positive float32 depth bits (high word) | point index (low word)."""
    return (z.float().contiguous().view(torch.int32).to(torch.int64) << 32) | index


def render(
    scene: Scene,
    animation: Animation,
    plate: BackgroundPlate | None = None,
    fill_holes: bool = True,
) -> RenderResult:
    """Render every frame of ``animation`` (see the module docstring for the method)."""
    plate = plate if plate is not None else background_plate(scene)
    height, width = scene.size
    num_pixels, frames = height * width, animation.num_frames
    splat_plate = not animation.camera_static
    groups = _groups(scene, animation, plate, splat_plate)

    # One attribute table for every point that can win a pixel. Without plate splatting, the
    # plate's pixels come first (index = pixel index) and seed the z-buffer.
    table_rgb, table_instance, table_observed = [], [], []
    if not splat_plate:
        table_rgb.append(plate.rgb.reshape(3, -1).T)
        table_instance.append(torch.zeros(num_pixels, dtype=torch.int64))
        table_observed.append(plate.observed.reshape(-1))
        plate_z = plate.distance.reshape(-1).float()
        seed_z = torch.where(plate.observed.reshape(-1), plate_z, torch.tensor(_HIDDEN_DEPTH))
        seed_keys = _depth_keys(seed_z, torch.arange(num_pixels))
    else:
        seed_keys = torch.full((num_pixels,), _EMPTY, dtype=torch.int64)
    starts = []
    for group in groups:
        starts.append(sum(len(t) for t in table_instance))
        table_rgb.append(group.rgb)
        table_instance.append(torch.full((len(group.rgb),), group.instance, dtype=torch.int64))
        table_observed.append(group.observed)
    table_rgb = torch.cat(table_rgb)
    table_instance = torch.cat(table_instance)
    table_observed = torch.cat(table_observed)
    table_size = len(table_instance)

    rgb = torch.empty(frames, 3, num_pixels)
    distance = torch.empty(frames, num_pixels)
    instance = torch.empty(frames, num_pixels, dtype=torch.int64)
    visible = torch.empty(frames, num_pixels, dtype=torch.bool)
    holes = torch.zeros(frames, num_pixels, dtype=torch.bool)
    for f in range(frames):
        keys = seed_keys.clone()
        depth_of = torch.empty(table_size)
        if not splat_plate:
            depth_of[:num_pixels] = plate_z
        for group, start in zip(groups, starts, strict=True):
            cam = (animation.world_to_camera[f] @ group.pose[f]).float()
            points = transform_points(cam, group.world)
            xy, z = project(points, animation.intrinsics[f].float())
            px = torch.floor(xy[:, 0] + 0.5).long()
            py = torch.floor(xy[:, 1] + 0.5).long()
            inside = (z > 1e-6) & (px >= 0) & (px < width) & (py >= 0) & (py < height)
            index = torch.arange(start, start + len(z))
            depth_of[start : start + len(z)] = z
            test_z = torch.where(group.observed, z, torch.tensor(_HIDDEN_DEPTH))
            key = _depth_keys(test_z[inside], index[inside])
            keys.scatter_reduce_(0, (py * width + px)[inside], key, reduce="amin")
        empty = keys == _EMPTY
        winner = torch.where(empty, torch.zeros_like(keys), keys & 0xFFFFFFFF)
        rgb[f] = table_rgb[winner].T
        distance[f] = depth_of[winner]
        instance[f] = torch.where(empty, 0, table_instance[winner])
        visible[f] = table_observed[winner] & ~empty
        holes[f] = empty

    result = RenderResult(
        rgb.reshape(frames, 3, height, width).clamp(0, 1),
        distance.reshape(frames, height, width),
        instance.reshape(frames, height, width),
        visible.reshape(frames, height, width),
    )
    if fill_holes and bool(holes.any()):
        _fill_holes(result, holes.reshape(frames, height, width))
    return result


def _fill_holes(result: RenderResult, holes: torch.Tensor, radius: int = 3) -> None:
    """Inpaint pixels no point landed on (camera moves only), in place."""
    for f in range(result.num_frames):
        hole = holes[f].numpy().astype(np.uint8)
        if not hole.any():
            continue
        rgb8 = (result.rgb[f].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
        filled = torch.from_numpy(cv2.inpaint(rgb8, hole, radius, cv2.INPAINT_TELEA))
        depth = result.distance[f].numpy().astype(np.float32).copy()
        depth[hole > 0] = 0.0
        depth = torch.from_numpy(cv2.inpaint(depth, hole, radius, cv2.INPAINT_TELEA))
        mask = holes[f]
        result.rgb[f] = torch.where(mask, filled.permute(2, 0, 1).float() / 255, result.rgb[f])
        result.distance[f] = torch.where(mask, depth, result.distance[f])
