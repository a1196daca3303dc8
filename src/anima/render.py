"""A pure-torch z-buffer point renderer (pytorch3d cannot be installed here).

This is LeviTor's 3D step (§3.3, Eq. 7-8) generalised: every object's pixels are unprojected,
moved by their per-frame rigid transform, seen by the per-frame camera and splatted back with a
z-test, giving per frame RGB, planar distance, instance ids (0 = background) and visibility.

- **Background plate.** The image with every selected object removed (a diffusion inpainting
  pipeline from the weights' ``inpaint/`` when present, else OpenCV; `anima.perception.inpaint`)
  is computed once. Its pixels under the objects are a guess, not an observation: they never
  occlude anything (their z-test depth is pushed to infinity) and render as not visible.
- **No holes when things come nearer.** A point group whose image-space magnification over the
  clip reaches m is supersampled with ceil(m) x ceil(m) sub-points per pixel, spaced at most one
  target pixel apart, so rounding to pixel centres leaves no gaps (the role of LeviTor's
  "10 points per pixel and radius growing as the object nears").
- **Footprints past the supersampling cap.** Where even ``MAX_SUPERSAMPLE`` sub-points per
  source pixel would be more than a target pixel apart (an object brought from 5 to 0.5 is
  magnified about 10 x), the source pixel stays one point and is splatted with a footprint, as
  in surface splatting (Zwicker et al., "Surface Splatting", SIGGRAPH 2001, §3-4: a splat's
  screen footprint is its surface cell mapped by the local Jacobian of the projection): here
  the pixel centres in the box bounding its one-pixel cell mapped through this frame's
  Jacobian. A point magnified k times thus covers about k x k pixels and the surface stays
  filled; the exact silhouette and the colours still come from the backward look-up below.
  Within a footprint the z-test uses the point's own depth. Footprints are clipped to the frame,
  capped at ``MAX_FOOTPRINT`` pixels a side, generated at most ``_FOOTPRINT_BUDGET`` (point,
  pixel) pairs at a time and reduced into a per-group z-buffer at once, so memory stays bounded
  however near a surface comes.
- **Near plane.** As a camera would (Hartley & Zisserman, "Multiple View Geometry", §6.2.3:
  only points of positive depth are in front of the camera; rasterisers also clip at a near
  plane), points nearer than ``NEAR_FRACTION`` times the scene's nearest distance, or behind
  the camera, are not drawn.
- **z-buffer.** Each sub-point becomes a 64-bit key: the bits of its positive float32 depth in the
  high word (positive IEEE floats order like integers) and its index in the low word. One
  ``scatter_reduce(amin)`` per frame then selects the nearest point of every pixel exactly and
  deterministically, with no per-pixel Python.
- With a static camera the plate is not re-rendered: it initialises the z-buffer as is, so an
  identity trajectory reproduces the input image exactly. With a moving camera the plate is
  splatted like any point group; pixels nothing lands on (frame borders, parallax gaps) are
  inpainted per frame and marked not visible.
- **Colours looked up backwards.** Splatting rounds every point to a pixel centre, which alone
  would shift moving texture by up to half a pixel (nearest-neighbour warping). The z-buffer
  only decides *which* surface a pixel shows; its colour is then looked up backwards: with the
  winning point's source position s, its projection p and the local Jacobian J of the warp
  (projections of s + (1, 0) and s + (0, 1)), the pixel centre c comes from s + J^-1 (c - p),
  sampled bilinearly among the group's own source pixels (an object never takes the colour
  of what surrounds it).
- **Meshes.** An object with a 3D model (``objects[i].mesh``, `anima.mesh`; I2V3D §3.1) is drawn
  by the triangle rasteriser (`anima.raster`) instead of its point group, moved by its
  trajectory's rotation and translation. Its fragments and the points meet per pixel by depth:
  a mesh fragment wins where it is nearer than the point z-buffer's winner (guessed plate
  pixels never occlude it), and shows the object's id, its planar distance and, as the
  reconstruction covers it, visible (I2V3D's visibility: covered by the scene's geometry).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from anima.animation import Animation
from anima.camera import project, transform_points, unproject
from anima.mesh import PlacedMesh, mesh_poses
from anima.perception.inpaint import Inpainter, plate_inpainter
from anima.raster import Fragments, rasterise, shade
from anima.scene import Scene

MAX_SUPERSAMPLE = 6
MAX_FOOTPRINT = 257  # widest footprint side in target pixels: magnification 257 (the near
# plane stops the scene's nearest surface at 1 / NEAR_FRACTION = 200)
NEAR_FRACTION = 0.005  # near plane, as a fraction of the scene's nearest distance
_FOOTPRINT_BUDGET = 1 << 21  # (point, pixel) pairs generated at once
_EMPTY = torch.iinfo(torch.int64).max
_HIDDEN_DEPTH = 1e30  # z-test depth of guessed (inpainted) plate pixels: they never occlude


@dataclass
class RenderFrame:
    """One rendered frame: what `RenderResult` holds for every frame."""

    rgb: torch.Tensor  # (3, H, W) float32 in [0, 1]
    distance: torch.Tensor  # (H, W) float32 planar distance
    instance: torch.Tensor  # (H, W) int64, object id or 0
    visible: torch.Tensor  # (H, W) bool: the pixel shows an observed scene point


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

    def frame(self, f: int) -> RenderFrame:
        return RenderFrame(self.rgb[f], self.distance[f], self.instance[f], self.visible[f])

    def __iter__(self) -> Iterator[RenderFrame]:
        for f in range(self.num_frames):
            yield self.frame(f)

    @classmethod
    def stack(cls, frames: Iterable[RenderFrame]) -> RenderResult:
        """The frames of a `Renderer` (or any frames) held together."""
        frames = list(frames)
        return cls(
            torch.stack([frame.rgb for frame in frames]),
            torch.stack([frame.distance for frame in frames]),
            torch.stack([frame.instance for frame in frames]),
            torch.stack([frame.visible for frame in frames]),
        )


@dataclass
class BackgroundPlate:
    """The scene without its selected objects, computed once per scene."""

    rgb: torch.Tensor  # (3, H, W)
    distance: torch.Tensor  # (H, W)
    observed: torch.Tensor  # (H, W) bool, False where the objects were


def background_plate(
    scene: Scene, radius: int = 5, margin: int = 3, inpainter: Inpainter | None = None
) -> BackgroundPlate:
    """Inpaint the objects away in colour and distance (once per scene: a `Renderer` keeps it).

    Colour: ``inpainter``, else the run's (`anima.perception.inpaint.plate_inpainter`: the
    weights' ``inpaint/`` diffusion pipeline, as I2V3D §3.1 inpaints the background with SDXL
    inpainting, else OpenCV Telea); distance: OpenCV Telea. The inpainting region is the
    objects' mask dilated by ``margin`` pixels, so that mixed edge pixels do not seed the fill;
    outside the exact masks the original pixels are kept, bit for bit."""
    objects = (scene.instance > 0).numpy()
    if not objects.any():
        return BackgroundPlate(
            scene.image.clone(),
            scene.distance.clone(),
            torch.ones_like(scene.instance, dtype=torch.bool),
        )
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    region = cv2.dilate(objects.astype(np.uint8), kernel)
    fill = inpainter or plate_inpainter(radius)
    filled = fill(scene.image, torch.from_numpy(region > 0))
    depth = cv2.inpaint(
        scene.distance.numpy().astype(np.float32), region, radius, cv2.INPAINT_TELEA
    )
    keep = torch.from_numpy(~objects)
    rgb = torch.where(keep, scene.image, filled.to(scene.image.dtype))
    distance = torch.where(keep, scene.distance, torch.from_numpy(depth))
    return BackgroundPlate(rgb, distance, keep)


@dataclass
class _PointGroup:
    """Sub-sampled surface points that move together: the plate or one object.

    ``world_dx``/``world_dy`` are the world points one source pixel to the right of and below
    each point (on the plate's interpolated surface, or, for an object, at the point's own
    distance: a fronto-parallel patch), giving the warp's local Jacobian in every frame."""

    world: torch.Tensor  # (M, 3) float32 world points (first frame's camera coordinates)
    rgb: torch.Tensor  # (M, 3)
    observed: torch.Tensor  # (M,) bool
    instance: int
    pose: torch.Tensor  # (F, 4, 4) float64
    source_xy: torch.Tensor  # (M, 2) sub-pixel positions in the first frame
    world_dx: torch.Tensor  # (M, 3)
    world_dy: torch.Tensor  # (M, 3)
    colours: torch.Tensor  # (3, H, W) the image the group's colours are looked up in
    support: torch.Tensor  # (H, W) float: 1 on the group's own source pixels
    wide: torch.Tensor  # (W,) int64: points splatted with footprints (module docstring)


def _sub_offsets(factor: int) -> torch.Tensor:
    steps = (torch.arange(factor, dtype=torch.float32) + 0.5) / factor - 0.5
    oy, ox = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([ox.reshape(-1), oy.reshape(-1)], dim=-1)


def _bilinear(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear values (M, C) of (M, 2) sub-pixel positions in a (C, H, W) image."""
    height, width = image.shape[-2:]
    grid = torch.stack([xy[:, 0] / max(width - 1, 1), xy[:, 1] / max(height - 1, 1)], -1) * 2 - 1
    out = torch.nn.functional.grid_sample(
        image[None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=True
    )
    return out[0, :, 0].T


def _in_support(support: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """(M,) bool: the positions (M, 2) fall in a support pixel's square (a mask pixel covers
    its whole unit square, so corners stay square)."""
    height, width = support.shape
    px, py = (xy[:, 0] + 0.5).floor().long(), (xy[:, 1] + 0.5).floor().long()
    inside = (px >= 0) & (px < width) & (py >= 0) & (py < height)
    return inside & (support[py.clamp(0, height - 1), px.clamp(0, width - 1)] > 0)


def _supported_colour(
    colours: torch.Tensor, support: torch.Tensor, xy: torch.Tensor, fallback: torch.Tensor
) -> torch.Tensor:
    """Bilinear colour (M, 3) from the ``support`` pixels only (an object's colour never mixes
    with what surrounds it); ``fallback`` (M, 3) where no supported pixel is near."""
    weighted = _bilinear(torch.cat([colours * support, support[None]]), xy)
    weight = weighted[:, 3:]
    return torch.where(weight > 1e-6, weighted[:, :3] / weight.clamp_min(1e-6), fallback)


def _surface_steps(
    mask: torch.Tensor,
    distance: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    points: torch.Tensor,
    intrinsics: torch.Tensor,
    smooth_surface: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The surface's 3D step (N, 3) per source pixel in x and in y at each masked pixel: a
    central difference of the unprojected distance map over masked neighbours (one-sided at
    the mask's edge). A neighbour across a depth jump (> 25 %, another surface) is not used;
    with no usable neighbour the patch is taken fronto-parallel. ``smooth_surface``: every
    pixel counts as masked (the plate's distance is complete)."""
    height, width = mask.shape
    usable_mask = torch.ones_like(mask) if smooth_surface else mask
    depth = distance[ys, xs].float()
    steps = []
    for dx, dy in ((1, 0), (0, 1)):
        sides = []
        for sign in (1, -1):
            nx, ny = xs + sign * dx, ys + sign * dy
            inside = (nx >= 0) & (nx < width) & (ny >= 0) & (ny < height)
            nx, ny = nx.clamp(0, width - 1), ny.clamp(0, height - 1)
            neighbour_depth = distance[ny, nx].float()
            ok = inside & usable_mask[ny, nx] & ((neighbour_depth - depth).abs() < 0.25 * depth)
            neighbour = unproject(torch.stack([nx, ny], -1).float(), neighbour_depth, intrinsics)
            sides.append((ok, (neighbour - points) * sign))
        (ok_plus, plus), (ok_minus, minus) = sides
        flat = unproject(torch.stack([xs + dx, ys + dy], -1).float(), depth, intrinsics) - points
        both = ok_plus & ok_minus
        step = torch.where(both[:, None], (plus + minus) / 2, flat)
        step = torch.where((ok_plus & ~ok_minus)[:, None], plus, step)
        steps.append(torch.where((ok_minus & ~ok_plus)[:, None], minus, step))
    return steps[0], steps[1]


def _magnification(
    points: torch.Tensor,
    step_x: torch.Tensor,
    step_y: torch.Tensor,
    pose: torch.Tensor,
    animation: Animation,
    size: tuple[int, int],
    near: float,
) -> torch.Tensor:
    """Largest image-space length (N,) of a one-pixel step of each point's surface over the
    frames where the point is beyond the near plane and its pixel cell reaches into the image:
    the warp's local Jacobian, so a surface seen at a grazing angle in the first frame and
    head-on later counts as magnified (foreshortening), not only one that comes nearer."""
    height, width = size
    best = torch.ones(len(points))
    for f in range(animation.num_frames):
        cam = (animation.world_to_camera[f] @ pose[f]).float()
        intrinsics = animation.intrinsics[f].float()
        xy, z = project(transform_points(cam, points), intrinsics)
        length = torch.zeros(len(points))
        seen = z > near
        for step in (step_x, step_y):
            moved, moved_z = project(transform_points(cam, points + step), intrinsics)
            length = torch.maximum(length, (moved - xy).norm(dim=-1))
            seen &= moved_z > near
        reach = 1 + length.clamp(max=float(height + width))
        seen &= (xy[:, 0] > -reach) & (xy[:, 0] < width - 1 + reach)
        seen &= (xy[:, 1] > -reach) & (xy[:, 1] < height - 1 + reach)
        best = torch.where(seen, torch.maximum(best, length), best)
    return best


def near_plane(scene: Scene) -> float:
    """The near clipping distance: ``NEAR_FRACTION`` times the scene's nearest distance."""
    return max(NEAR_FRACTION * float(scene.distance.min()), 1e-6)


def _point_group(
    scene: Scene,
    mask: torch.Tensor,
    colours: torch.Tensor,
    distance: torch.Tensor,
    observed: torch.Tensor,
    instance: int,
    pose: torch.Tensor,
    animation: Animation,
    smooth_surface: bool,
) -> _PointGroup:
    """The pixels under ``mask`` as points, each supersampled by its own magnification on its
    surface's tangent plane. ``smooth_surface``: see `_surface_steps` (the plate)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    xy = torch.stack([xs, ys], dim=-1).float()
    k0 = scene.intrinsics.float()
    points = unproject(xy, distance[ys, xs].float(), k0)
    step_x, step_y = _surface_steps(mask, distance, ys, xs, points, k0, smooth_surface)
    magnification = _magnification(
        points, step_x, step_y, pose, animation, scene.size, near_plane(scene)
    )
    # Sub-points spaced <= 1/1.1 target pixel: rounding to pixel centres then skips none, even
    # with float error at exact integer magnifications. Unmagnified points stay single.
    factor = (magnification * 1.1).ceil().clamp(1, MAX_SUPERSAMPLE).long()
    factor[magnification <= 1.0 + 1e-3] = 1
    # Past the cap, sub-points could land more than a pixel apart: such a pixel stays a single
    # point and is drawn with a footprint instead (module docstring).
    needs_footprint = magnification * 1.1 > MAX_SUPERSAMPLE
    factor[needs_footprint] = 1
    parts: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("xy", "world", "sx", "sy", "obs", "wide")
    }
    for level in factor.unique().tolist():
        chosen = factor == level
        offsets = _sub_offsets(level)
        count = len(offsets)
        sx, sy = step_x[chosen][:, None], step_y[chosen][:, None]  # (n, 1, 3)
        ox, oy = offsets[None, :, :1], offsets[None, :, 1:]  # (1, K, 1)
        parts["xy"].append((xy[chosen][:, None, :] + offsets[None]).reshape(-1, 2))
        parts["world"].append((points[chosen][:, None] + ox * sx + oy * sy).reshape(-1, 3))
        parts["sx"].append(sx.expand(-1, count, -1).reshape(-1, 3))
        parts["sy"].append(sy.expand(-1, count, -1).reshape(-1, 3))
        parts["obs"].append(observed[ys[chosen], xs[chosen]].repeat_interleave(count))
        parts["wide"].append(needs_footprint[chosen].repeat_interleave(count))
    sub_xy, world = torch.cat(parts["xy"]), torch.cat(parts["world"])
    support = (mask & observed).float()
    pixel = (sub_xy + 0.5).floor().long()
    own_colour = colours[:, pixel[:, 1], pixel[:, 0]].T
    wide = torch.nonzero(torch.cat(parts["wide"]))[:, 0]
    return _PointGroup(
        world=world,
        rgb=_supported_colour(colours, support, sub_xy, own_colour),
        observed=torch.cat(parts["obs"]),
        instance=instance,
        pose=pose,
        source_xy=sub_xy,
        world_dx=world + torch.cat(parts["sx"]),
        world_dy=world + torch.cat(parts["sy"]),
        colours=colours,
        support=support,
        wide=wide,
    )


def _source_positions(
    group: _PointGroup,
    cam: torch.Tensor,
    intrinsics: torch.Tensor,
    projected: torch.Tensor,
    winner: torch.Tensor,
    pixel_xy: torch.Tensor,
) -> torch.Tensor:
    """First-frame positions (N, 2) of the pixel centres ``pixel_xy`` (N, 2) won by the group's
    points ``winner``: s + J^-1 (c - p) (module docstring), where ``projected`` (M, 2) are the
    group's projections in this frame."""
    p = projected[winner]
    step_x = project(transform_points(cam, group.world_dx[winner]), intrinsics)[0] - p
    step_y = project(transform_points(cam, group.world_dy[winner]), intrinsics)[0] - p
    jacobian = torch.stack([step_x, step_y], dim=-1)  # (N, 2, 2), columns = unit steps
    usable = torch.linalg.det(jacobian).abs() > 1e-3
    safe = torch.where(usable[:, None, None], jacobian, torch.eye(2).expand_as(jacobian))
    delta = torch.linalg.solve(safe, (pixel_xy - p)[..., None])[..., 0]
    # A winner lies within half a pixel of the centre; larger steps only come from a
    # degenerate (edge-on) Jacobian, where staying at the point is the better guess.
    delta = torch.where(usable[:, None], delta.clamp(-1.0, 1.0), torch.zeros_like(delta))
    return group.source_xy[winner] + delta


def _groups(
    scene: Scene,
    animation: Animation,
    plate: BackgroundPlate,
    splat_plate: bool,
    skip: frozenset[int] = frozenset(),
):
    """The objects' point groups (but those in ``skip``: drawn as meshes), then the plate's
    when it is splatted (a moving camera). The order is the z-buffer's tie-break (lower table
    index wins): an object exactly as far as the surface behind it (a flat depth map) stays in
    front of it."""
    groups = []
    all_observed = torch.ones(scene.size, dtype=torch.bool)
    for object_id in scene.object_ids:
        if object_id in skip:
            continue
        if not bool(scene.mask(object_id).any()):
            continue  # too small to cover a pixel centre at this size: nothing to draw
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
                smooth_surface=False,
            )
        )
    if splat_plate:
        identity = torch.eye(4, dtype=torch.float64).expand(animation.num_frames, 4, 4)
        everywhere = torch.ones(scene.size, dtype=torch.bool)
        groups.append(
            _point_group(
                scene,
                everywhere,
                plate.rgb,
                plate.distance,
                plate.observed,
                0,
                identity,
                animation,
                smooth_surface=True,
            )
        )
    return groups


def _depth_keys(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """64-bit z-buffer keys: positive float32 depth bits (high word) | point index (low word)."""
    return (z.float().contiguous().view(torch.int32).to(torch.int64) << 32) | index


def _footprint_splats(
    group: _PointGroup,
    cam: torch.Tensor,
    intrinsics: torch.Tensor,
    xy: torch.Tensor,
    z: torch.Tensor,
    test_z: torch.Tensor,
    start: int,
    near: float,
    size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Footprint splats (pixel indices, z-buffer keys) of the group's ``wide`` points.

    Each point covers the pixel centres in the box bounding its one-source-pixel surface cell
    mapped by this frame's Jacobian (Zwicker et al., "Surface Splatting", SIGGRAPH 2001, §4), at
    least its nearest pixel and at most ``MAX_FOOTPRINT`` pixels a side, clipped to the frame.
    Pairs are made ``_FOOTPRINT_BUDGET`` at a time and reduced per pixel at once (the nearest
    key), so at most one splat per pixel is returned: the two-pass silhouette test only ever
    filters splats by pixel, so this loses nothing."""
    height, width = size
    wide = group.wide
    p, pz = xy[wide], z[wide]
    dx, dx_z = project(transform_points(cam, group.world_dx[wide]), intrinsics)
    dy, dy_z = project(transform_points(cam, group.world_dy[wide]), intrinsics)
    step_x, step_y = dx - p, dy - p
    # Half the cell's bounding box; a neighbour behind the near plane gives no usable Jacobian.
    usable = (pz > near) & (dx_z > near) & (dy_z > near)
    half = (step_x.abs() + step_y.abs()) / 2
    half = torch.where(usable[:, None], half, torch.zeros_like(half))
    half = half.clamp(0.5, (MAX_FOOTPRINT - 1) / 2) + 1e-4
    # Far off-frame positions are pulled in (their footprints still miss the frame), so that the
    # integer pixel bounds cannot overflow.
    far = float(2 * (height + width + MAX_FOOTPRINT))
    p = p.clamp(-far, far)
    lo = torch.ceil(p - half).clamp_min(0).long()
    hi = torch.floor(p + half).long()
    hi = torch.minimum(hi, torch.tensor([width - 1, height - 1]))
    extent = (hi - lo + 1).clamp_min(0)
    count = extent[:, 0] * extent[:, 1]
    count = torch.where((pz > near) & torch.isfinite(p).all(-1), count, 0)
    drawn = torch.nonzero(count)[:, 0]
    keys = torch.full((height * width,), _EMPTY, dtype=torch.int64)
    if len(drawn) == 0:
        return torch.zeros(0, dtype=torch.int64), keys[:0]
    lo, extent, count = lo[drawn], extent[drawn], count[drawn]
    point_keys = _depth_keys(test_z[wide][drawn], wide[drawn] + start)
    ends = count.cumsum(0)
    first = 0
    while first < len(drawn):
        base = int(ends[first - 1]) if first else 0
        last = int(torch.searchsorted(ends, base + _FOOTPRINT_BUDGET, right=True))
        last = max(last, first + 1)
        chunk = torch.arange(first, last)
        owner = torch.repeat_interleave(chunk, count[first:last])
        offset = torch.arange(base, base + len(owner)) - (ends[owner] - count[owner])
        columns = extent[owner, 0]
        target = (lo[owner, 1] + offset // columns) * width + lo[owner, 0] + offset % columns
        keys.scatter_reduce_(0, target, point_keys[owner], reduce="amin")
        first = last
    target = torch.nonzero(keys != _EMPTY)[:, 0]
    return target, keys[target]


class Renderer:
    """Renders an animation frame by frame: iterate it, or ask for `frame` (f).

    The point groups and their attribute tables are built once; each frame is then computed on
    its own, so a clip of any length needs the memory of one frame (issue "Photos as people
    take them", part 1: frames stream to the encoder and the dump).

    With a static camera, the plate is the frame wherever no object lands: the z-buffer then
    runs only on the pixels that objects' splats reach (sorted and indexed with
    ``searchsorted``), seeded with the plate's depths there, and the frame is the plate with
    those pixels replaced, so the cost of a frame follows the objects' pixels, not the photo's.
    With a moving camera every pixel takes part.

    ``meshes`` (`anima.mesh.scene_meshes`, by object id) are drawn instead of those objects'
    point groups (module docstring, "Meshes"); they are in 3D, so the same meshes serve the
    scene and animation at any size."""

    def __init__(
        self,
        scene: Scene,
        animation: Animation,
        plate: BackgroundPlate | None = None,
        fill_holes: bool = True,
        meshes: Mapping[int, PlacedMesh] | None = None,
    ) -> None:
        self.animation = animation
        self.size = scene.size
        self.fill_holes = fill_holes
        self.plate = plate if plate is not None else background_plate(scene)
        self.splat_plate = not animation.camera_static
        self.meshes = _MeshLayer(meshes, animation) if meshes else None
        skip = frozenset(meshes or ())
        self.groups = _groups(scene, animation, self.plate, self.splat_plate, skip)
        self.near = near_plane(scene)
        # Table indices: group g's points from starts[g]; without plate splatting, the plate's
        # pixel i is index plate_start + i (after the objects: they win ties, `_groups`).
        self.starts = []
        first = 0
        for group in self.groups:
            self.starts.append(first)
            first += len(group.rgb)
        self.plate_start = first
        if not self.splat_plate:
            observed = self.plate.observed.reshape(-1)
            plate_z = self.plate.distance.reshape(-1).float()
            self.seed_z = torch.where(observed, plate_z, torch.tensor(_HIDDEN_DEPTH))

    @property
    def num_frames(self) -> int:
        return self.animation.num_frames

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[RenderFrame]:
        for f in range(self.num_frames):
            yield self.frame(f)

    def _splats(self, f: int) -> list[tuple[torch.Tensor, ...]]:
        """Per group: (camera, projections (M, 2), depths (M,), target pixels, z-buffer keys)."""
        height, width = self.size
        intrinsics = self.animation.intrinsics[f].float()
        splats = []
        for group, start in zip(self.groups, self.starts, strict=True):
            cam = (self.animation.world_to_camera[f] @ group.pose[f]).float()
            xy, z = project(transform_points(cam, group.world), intrinsics)
            px = torch.floor(xy[:, 0] + 0.5).long()
            py = torch.floor(xy[:, 1] + 0.5).long()
            inside = (z > self.near) & (px >= 0) & (px < width) & (py >= 0) & (py < height)
            test_z = torch.where(group.observed, z, torch.tensor(_HIDDEN_DEPTH))
            if len(group.wide):
                inside[group.wide] = False
            target = (py * width + px)[inside]
            key = _depth_keys(test_z[inside], torch.nonzero(inside)[:, 0] + start)
            if len(group.wide):
                wide_target, wide_key = _footprint_splats(
                    group, cam, intrinsics, xy, z, test_z, start, self.near, self.size
                )
                target, key = torch.cat([target, wide_target]), torch.cat([key, wide_key])
            splats.append((cam, xy, z, target, key))
        return splats

    def frame(self, f: int) -> RenderFrame:
        """Frame ``f`` (see the module docstring for the method)."""
        height, width = self.size
        num_pixels = height * width
        intrinsics = self.animation.intrinsics[f].float()
        splats = self._splats(f)
        if self.splat_plate:  # every pixel is in play; local index = pixel index
            pixels = None
            seed = torch.full((num_pixels,), _EMPTY, dtype=torch.int64)
            targets = [target for *_, target, _ in splats]
        else:
            touched = [target for *_, target, _ in splats]
            no_pixel = torch.zeros(0, dtype=torch.int64)
            pixels = torch.unique(torch.cat(touched)) if touched else no_pixel
            seed = _depth_keys(self.seed_z[pixels], pixels + self.plate_start)
            targets = [torch.searchsorted(pixels, target) for target in touched]
        # Pass 1 splats everything; an object whose surface does not reach a pixel's centre
        # (its winner maps back outside the object's mask) is then taken out of that pixel,
        # and pass 2 lets the surface behind show: silhouettes are exact, not rounded.
        uncovered: list[torch.Tensor | None] = [None] * len(self.groups)
        for attempt in range(2):
            keys = seed.clone()
            for target, (*_, key), skip in zip(targets, splats, uncovered, strict=True):
                if skip is not None:
                    keep = ~skip[target]
                    target, key = target[keep], key[keep]
                keys.scatter_reduce_(0, target, key, reduce="amin")
            empty = keys == _EMPTY
            winner = torch.where(empty, torch.zeros_like(keys), keys & 0xFFFFFFFF)
            won_by = []
            for group, start, (cam, xy, *_) in zip(self.groups, self.starts, splats, strict=True):
                won = torch.nonzero(~empty & (winner >= start) & (winner < start + len(xy)))[:, 0]
                at = won if pixels is None else pixels[won]
                pixel_xy = torch.stack([at % width, at // width], dim=-1).float()
                index = winner[won] - start
                source = _source_positions(group, cam, intrinsics, xy, index, pixel_xy)
                won_by.append((won, at, index, source))
            if attempt == 1:
                break
            for g, (group, (won, _, _, source)) in enumerate(zip(self.groups, won_by, strict=True)):
                if group.instance == 0:
                    continue
                outside = ~_in_support(group.support, source)
                if bool(outside.any()):
                    uncovered[g] = torch.zeros(len(keys), dtype=torch.bool)
                    uncovered[g][won[outside]] = True
            if all(u is None for u in uncovered):
                break

        if self.splat_plate:
            rgb = torch.zeros(3, num_pixels)
            distance = torch.zeros(num_pixels)
            visible = torch.zeros(num_pixels, dtype=torch.bool)
        else:
            rgb = self.plate.rgb.reshape(3, -1).clone()
            distance = self.plate.distance.reshape(-1).float().clone()
            visible = self.plate.observed.reshape(-1).clone()
        instance = torch.zeros(num_pixels, dtype=torch.int64)
        for group, (*_, z, _, _), (_, at, index, source) in zip(
            self.groups, splats, won_by, strict=True
        ):
            fallback = group.rgb[index]
            rgb[:, at] = _supported_colour(group.colours, group.support, source, fallback).T
            distance[at] = z[index]
            instance[at] = group.instance
            visible[at] = group.observed[index]
        if self.meshes is not None:
            drawn = self._draw_meshes(f, keys, pixels, rgb, distance, instance, visible)
            if self.splat_plate:
                empty = empty & ~drawn
        frame = RenderFrame(
            rgb.reshape(3, height, width).clamp_(0, 1),
            distance.reshape(height, width),
            instance.reshape(height, width),
            visible.reshape(height, width),
        )
        if self.splat_plate and self.fill_holes and bool(empty.any()):
            _fill_holes(frame, empty.reshape(height, width))
        return frame

    def _draw_meshes(
        self,
        f: int,
        keys: torch.Tensor,
        pixels: torch.Tensor | None,
        rgb: torch.Tensor,
        distance: torch.Tensor,
        instance: torch.Tensor,
        visible: torch.Tensor,
    ) -> torch.Tensor:
        """Draw the meshes of frame ``f`` over the points' frame (flat buffers, in place) where
        they are nearer than the point z-buffer's winners ``keys`` (local to ``pixels``, or
        every pixel); returns the (H * W,) bool pixels they took (module docstring)."""
        assert self.meshes is not None
        height, width = self.size
        fragments, colours, ids = self.meshes.draw(f, self.size, self.near)
        point_z = _key_depths(keys)
        if pixels is not None:  # untouched pixels show the plate (seeded depths)
            point_z = self.seed_z.clone().index_copy_(0, pixels, point_z)
        front = fragments.depth < point_z[fragments.pixel]
        at = fragments.pixel[front]
        rgb[:, at] = colours[front].T
        distance[at] = fragments.depth[front]
        instance[at] = ids[front]
        visible[at] = True
        drawn = torch.zeros(height * width, dtype=torch.bool)
        drawn[at] = True
        return drawn


def _key_depths(keys: torch.Tensor) -> torch.Tensor:
    """The z-test depths (float32) in z-buffer keys (`_depth_keys`); infinity where empty."""
    depth = (keys >> 32).to(torch.int32).view(torch.float32)
    return torch.where(keys == _EMPTY, torch.tensor(float("inf")), depth)


class _MeshLayer:
    """The scene's meshes as one triangle list, drawn frame by frame (`anima.raster`), each
    moved by its object's per-frame transform (`anima.mesh.mesh_poses`)."""

    def __init__(self, meshes: Mapping[int, PlacedMesh], animation: Animation) -> None:
        placed = [meshes[object_id] for object_id in sorted(meshes)]
        self.animation = animation
        self.vertices = [p.mesh.vertices.double() for p in placed]
        self.poses = [mesh_poses(p, animation) for p in placed]
        vertex_starts = np.cumsum([0] + [len(v) for v in self.vertices[:-1]])
        texture_starts = np.cumsum([0] + [len(p.mesh.textures) for p in placed[:-1]])
        self.faces = torch.cat(
            [p.mesh.faces + int(v) for p, v in zip(placed, vertex_starts, strict=True)]
        )
        self.corner_colours = torch.cat([p.mesh.corner_colours for p in placed])
        self.corner_uv = torch.cat([p.mesh.corner_uv for p in placed])
        self.face_texture = torch.cat(
            [
                torch.where(p.mesh.face_texture >= 0, p.mesh.face_texture + int(t), -1)
                for p, t in zip(placed, texture_starts, strict=True)
            ]
        )
        self.textures = [texture for p in placed for texture in p.mesh.textures]
        self.face_instance = torch.cat(
            [torch.full((len(p.mesh.faces),), p.instance, dtype=torch.int64) for p in placed]
        )

    def draw(
        self, f: int, size: tuple[int, int], near: float
    ) -> tuple[Fragments, torch.Tensor, torch.Tensor]:
        """Frame ``f``'s fragments, their colours (N, 3) and object ids (N,)."""
        world_to_camera = self.animation.world_to_camera[f].double()
        vertices = torch.cat(
            [
                transform_points(world_to_camera @ pose[f], points)
                for points, pose in zip(self.vertices, self.poses, strict=True)
            ]
        )
        fragments = rasterise(vertices, self.faces, self.animation.intrinsics[f], size, near)
        colours = shade(
            fragments, self.corner_colours, self.corner_uv, self.face_texture, self.textures
        )
        return fragments, colours, self.face_instance[fragments.face]


def render(
    scene: Scene,
    animation: Animation,
    plate: BackgroundPlate | None = None,
    fill_holes: bool = True,
    meshes: Mapping[int, PlacedMesh] | None = None,
) -> RenderResult:
    """Every frame of ``animation`` at once (`Renderer`; for methods that need the whole clip,
    at the size they work at; ``meshes``: `anima.mesh.scene_meshes`)."""
    return RenderResult.stack(Renderer(scene, animation, plate, fill_holes, meshes))


def _fill_holes(frame: RenderFrame, holes: torch.Tensor, radius: int = 3) -> None:
    """Inpaint the pixels no point landed on (camera moves only), in place."""
    hole = holes.numpy().astype(np.uint8)
    rgb8 = (frame.rgb.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    filled = torch.from_numpy(cv2.inpaint(rgb8, hole, radius, cv2.INPAINT_TELEA))
    depth = frame.distance.numpy().astype(np.float32).copy()
    depth[hole > 0] = 0.0
    depth = torch.from_numpy(cv2.inpaint(depth, hole, radius, cv2.INPAINT_TELEA))
    frame.rgb[:] = torch.where(holes, filled.permute(2, 0, 1).float() / 255, frame.rgb)
    frame.distance[:] = torch.where(holes, depth, frame.distance)
