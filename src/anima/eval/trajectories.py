"""What a spec says a generated video should show, for `anima.eval.video`: the input image, the
condition image and where the spec takes points of each moved object.

(README, "Evaluation"; LeviTor §4.1: ObjMC re-tracks points of the moved objects and measures
their distance to the intended trajectories; AnyI2V's appendix: structure similarity of frame 0
to the condition.)

The intended tracks are exact: points of each moved object's mask are lifted with the scene's
depth and moved with the spec's animation (`anima.animation.build_animation`, seen at the video's
size with `Animation.resized`), the same transforms the renderer draws with, then projected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from anima.weights import Weights

#: Points tracked per moved object (LeviTor's evaluation tracks a grid of each object's points).
POINTS_PER_OBJECT = 16
#: Mask erosion (px at the scene's size) so that tracked points are not on the object's edge.
EDGE_MARGIN = 2


@dataclass
class SpecInputs:
    image: Tensor  # (3, H, W) at the video's size
    condition: Tensor  # (3, H, W)
    tracks: Tensor | None  # (N, F, 2) pixels of the video's size, x then y
    valid: Tensor | None  # (N, F) bool: in the frame and in front of the camera


def _resized(image: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="area")[0].clamp(0, 1)


def _grid_points(mask: Tensor, count: int, margin: int) -> Tensor:
    """Up to ``count`` pixel positions (x, y) spread over ``mask`` eroded by ``margin``."""
    eroded = mask.float()[None, None]
    if margin > 0:
        eroded = -F.max_pool2d(-eroded, 2 * margin + 1, stride=1, padding=margin)
    ys, xs = torch.nonzero(eroded[0, 0] > 0.5, as_tuple=True)
    if xs.numel() == 0:
        ys, xs = torch.nonzero(mask, as_tuple=True)
    if xs.numel() == 0:
        return torch.zeros(0, 2)
    order = torch.linspace(0, xs.numel() - 1, min(count, xs.numel())).round().long()
    return torch.stack([xs[order], ys[order]], dim=-1).float()


def intended_tracks(
    scene, animation, size: tuple[int, int], points_per_object: int = POINTS_PER_OBJECT
) -> tuple[Tensor, Tensor] | None:
    """(N, F, 2) positions at ``size`` of points of each moved object and (N, F) validity;
    None when the spec moves no object."""
    from anima.camera import project, transform_points, unproject

    if not animation.moved_ids:
        return None
    seen = animation.resized(size)
    tracks, valid = [], []
    k0 = scene.intrinsics.double()
    for object_id in sorted(animation.moved_ids):
        xy0 = _grid_points(scene.mask(object_id), points_per_object, EDGE_MARGIN)
        if xy0.shape[0] == 0:
            continue
        ys, xs = xy0[:, 1].long(), xy0[:, 0].long()
        world = unproject(xy0.double(), scene.distance[ys, xs].double(), k0)
        cams = seen.world_to_camera.double() @ animation.object_poses[object_id].double()
        xy, z = project(transform_points(cams, world[None]), seen.intrinsics.double()[:, None])
        inside = (xy[..., 0] >= 0) & (xy[..., 0] <= size[1] - 1)
        inside &= (xy[..., 1] >= 0) & (xy[..., 1] <= size[0] - 1) & (z > 1e-6)
        tracks.append(xy.transpose(0, 1).float())  # (n, F, 2)
        valid.append(inside.transpose(0, 1))
    if not tracks:
        return None
    return torch.cat(tracks), torch.cat(valid)


def spec_inputs(spec, size: tuple[int, int], num_frames: int, weights: Weights) -> SpecInputs:
    """The image, condition and intended tracks of a resolved ``spec`` at the video's ``size``
    (H, W); the spec's frame count must be the video's (`InputError` otherwise)."""
    from anima.animation import build_animation
    from anima.errors import InputError
    from anima.perception.condition_maps import condition_map
    from anima.scene import build_scene

    if spec.num_frames != num_frames:
        raise InputError(
            f"the spec has {spec.num_frames} frames, the generated video {num_frames}", "--spec"
        )
    scene = build_scene(spec, weights)
    image = _resized(scene.image, size)
    kind = spec.options.get("condition") if isinstance(spec.options, dict) else None
    condition = image if kind in (None, "as_is") else _resized(condition_map(kind, scene), size)
    found = intended_tracks(scene, build_animation(spec, scene), size)
    tracks, valid = found if found is not None else (None, None)
    return SpecInputs(image=image, condition=condition, tracks=tracks, valid=valid)
