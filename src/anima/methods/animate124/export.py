"""What an Animate124 run exports: the release's orbit videos and a mesh per time.

(README, "Animate124", outputs: 10 views on a circle, polar 90, 36 deg apart, x 64 frames;
docs/architecture.md, "The CLI's promises".) ``anima export animate124 RUN -o DIR`` writes,
from the run's last finished stage (`anima.methods.animate124.train.load_stage_field`):

- ``view_00.mp4`` .. ``view_09.mp4``: `orbit_videos`, view k at azimuth 36 k deg, polar 90,
  radius 1.8, fov 40 (`cameras.orbit_cameras`), frame f at time f / (F - 1), rendered at a
  chosen size on white (albedo, or the release's lambertian with a light at the camera);
- ``mesh_t0.000.glb`` ...: `field_mesh` at each chosen time: the density sampled on a
  ``resolution``^3 lattice of the box [-1, 1]^3, marching cubes (scikit-image) at
  ``threshold`` (stable-dreamfusion's mesh export: density 10), vertex colours the albedo at
  the vertices, written as GLB by trimesh. The release's world is mirrored (the reference
  camera's image right is world -x, `cameras`); meshes are written with x negated (and the
  faces' winding reversed) so that a viewer looking from +z, y up, sees the photo's side as
  the photo shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from anima.methods.animate124.cameras import FOV, RADIUS, orbit_cameras
from anima.methods.animate124.field import Field4D
from anima.methods.animate124.volume import RELEASE_STEPS, RenderOptions, Shading, render

#: The release's export: 10 views, 64 frames.
NUM_VIEWS, NUM_FRAMES = 10, 64
#: stable-dreamfusion's density threshold of a mesh's surface.
DENSITY_THRESHOLD = 10.0


def frame_times(num_frames: int) -> Tensor:
    """Frame f at t = f / (F - 1) (docs/architecture.md, Conventions); one frame at t = 0."""
    if num_frames == 1:
        return torch.zeros(1)
    return torch.arange(num_frames, dtype=torch.float32) / (num_frames - 1)


@torch.no_grad()
def orbit_videos(
    field: Field4D,
    size: int = 256,
    num_frames: int = NUM_FRAMES,
    num_views: int = NUM_VIEWS,
    *,
    shading: Literal["albedo", "lambertian"] = "albedo",
    march_steps: int = RELEASE_STEPS,
    radius: float = RADIUS,
    fov: float = FOV,
    on_frame: Callable[[int, int], None] | None = None,
) -> list[Tensor]:
    """``num_views`` videos (F, 3, size, size) in [0, 1] of ``field`` on the release's orbit."""
    cameras = orbit_cameras(num_views, radius=radius, fov=fov)
    times = frame_times(num_frames)
    options = RenderOptions(num_steps=march_steps)
    videos = []
    for view in range(num_views):
        pose = cameras.poses[view]
        look = Shading("albedo")
        if shading == "lambertian":
            light = tuple(float(v) for v in pose[:3, 3] / pose[:3, 3].norm())
            look = Shading("lambertian", 0.3, light)  # type: ignore[arg-type]
        frames = []
        for index, t in enumerate(times):
            out = render(field, pose, fov, (size, size), t, shading=look, options=options)
            frames.append(out.rgb.clamp(0, 1).cpu())
            if on_frame is not None:
                on_frame(view * num_frames + index + 1, num_views * num_frames)
        videos.append(torch.stack(frames))
    return videos


@torch.no_grad()
def density_grid(field: Field4D, t: float, resolution: int = 128, chunk: int = 1 << 16) -> Tensor:
    """Density (R, R, R) of ``field`` at time ``t`` on the lattice x_i = -1 + 2 i / (R - 1),
    indexed [x, y, z]."""
    device = next(field.parameters()).device
    axis = torch.linspace(-1.0, 1.0, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    values = [
        field.density(points[start : start + chunk].to(device), t).float().cpu()
        for start in range(0, points.shape[0], chunk)
    ]
    return torch.cat(values).reshape(resolution, resolution, resolution)


@torch.no_grad()
def field_mesh(
    field: Field4D, t: float, resolution: int = 128, threshold: float = DENSITY_THRESHOLD
) -> Any:
    """The surface of ``field`` at time ``t`` as a `trimesh.Trimesh` with vertex colours
    (module docstring); an empty mesh when no density reaches ``threshold``."""
    import trimesh
    from skimage.measure import marching_cubes

    density = density_grid(field, t, resolution).numpy()
    if not (density.min() < threshold < density.max()):
        return trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), dtype=np.int64))
    vertices, faces, _normals, _values = marching_cubes(density, level=threshold)
    vertices = vertices / (resolution - 1) * 2.0 - 1.0
    device = next(field.parameters()).device
    _density, albedo = field(torch.from_numpy(vertices).float().to(device), t)
    colours = (albedo.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    colours = np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], 1)
    mirrored = vertices * np.array([-1.0, 1.0, 1.0])
    return trimesh.Trimesh(
        vertices=mirrored, faces=faces[:, ::-1].copy(), vertex_colors=colours, process=False
    )


def mesh_name(t: float) -> str:
    return f"mesh_t{t:.3f}.glb"


def export_run(
    field: Field4D,
    out: Path,
    *,
    size: int = 256,
    num_frames: int = NUM_FRAMES,
    fps: float = 8.0,
    times: Sequence[float] = (0.0,),
    resolution: int = 128,
    threshold: float = DENSITY_THRESHOLD,
    shading: Literal["albedo", "lambertian"] = "albedo",
    march_steps: int = RELEASE_STEPS,
    staging: Any = None,
    on_stage: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the orbit videos and the meshes of ``field`` into folder ``out`` through
    ``staging`` (`anima.io.Staging`: moved into place together when it commits); returns the
    paths written."""
    from anima.io import write_video

    say = on_stage or (lambda _text: None)
    folder = staging.folder(out) if staging is not None else Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def progress(done: int, total: int) -> None:
        say(f"animate124 export: frame {done}/{total}")

    videos = orbit_videos(
        field, size, num_frames, shading=shading, march_steps=march_steps, on_frame=progress
    )
    for index, video in enumerate(videos):
        path = folder / f"view_{index:02d}.mp4"
        write_video(path, video, fps)
        written.append(Path(out) / path.name)
    for t in times:
        say(f"animate124 export: mesh at t = {t:g}")
        mesh = field_mesh(field, float(t), resolution, threshold)
        path = folder / mesh_name(float(t))
        path.write_bytes(mesh.export(file_type="glb"))
        written.append(Path(out) / path.name)
    return written


__all__ = [
    "DENSITY_THRESHOLD",
    "NUM_FRAMES",
    "NUM_VIEWS",
    "density_grid",
    "export_run",
    "field_mesh",
    "frame_times",
    "mesh_name",
    "orbit_videos",
]
