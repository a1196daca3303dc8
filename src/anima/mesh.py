"""Meshes in the scene: an object's 3D model read from a file and placed where the object is.

I2V3D §3.1 lifts the photo into meshes (InstantMesh for the foreground object) and animates
them in a 3D engine, so that a turned object shows its back. Here an object of the MotionSpec
may name such a model (``objects[i].mesh``: OBJ, GLB or PLY, read with trimesh); the renderer
draws it instead of the object's pixels (`anima.render`, `anima.raster`; docs/architecture.md,
"Data flow").

- **Reading** (`load_mesh`): every triangle of the file (all the geometries of a GLB scene, with
  their node transforms), with per-corner colours: a UV texture where a geometry has one (the
  texture alone, unlit and baked, as I2V3D renders; material colour factors are not applied),
  else its vertex or face colours, else its material's colour, else a flat grey.
- **Axes.** Models are taken as 3D tools export them (glTF's convention): y up, the front facing
  +z, towards a viewer. The scene's camera has y down and looks along +z, so a model enters the
  scene turned half a turn about x, (x, y, z) -> (x, -y, -z): its front faces the camera.
- **Placement** (`place_mesh`): the model's x-y bounding box is fitted inside the bounding box of
  the object's mask at the working size, centred on it, at the object's median distance; then
  the whole model is scaled about the camera centre (which leaves its projection unchanged) so
  that the median distance of its visible surface in the photo's view is the median distance of
  the object's pixels: the model sits where the photo says the object's surface is.
- **Motion** (`mesh_poses`): the trajectory's rotation R(t) and translation T(t) of the object
  (LeviTor §3.3, Eq. 7, `anima.animation`), the rotation about the model's own centre m:
  p' = R (p - m) + m + T. The object's points turn about the centroid of its visible surface,
  the best centre they have; a model has its true one, so a half turn shows its back in place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from anima.animation import Animation
from anima.camera import unproject
from anima.errors import InputError
from anima.raster import rasterise
from anima.scene import Scene
from anima.spec import MotionSpec

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply")
FLAT_GREY = 0.5
_TO_CAMERA_AXES = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)  # y up -> y down


@dataclass
class Mesh:
    """Triangles with their colours: per-corner colours, or a texture sampled at per-corner
    UVs where ``face_texture`` >= 0."""

    vertices: torch.Tensor  # (V, 3) float64
    faces: torch.Tensor  # (T, 3) int64
    corner_colours: torch.Tensor  # (T, 3, 3) float32 in [0, 1]
    corner_uv: torch.Tensor  # (T, 3, 2) float32 (zeros on untextured triangles)
    face_texture: torch.Tensor  # (T,) int64 index into ``textures``, -1 = none
    textures: list[torch.Tensor]  # (3, h, w) float32 in [0, 1]


@dataclass
class PlacedMesh:
    """A mesh in the scene's world coordinates (the first frame's camera), as object
    ``instance``; ``centre`` is the point it turns about."""

    mesh: Mesh
    instance: int
    centre: torch.Tensor  # (3,) float64


def _rgb(colours: np.ndarray) -> torch.Tensor:
    """uint8 or float RGB(A) rows (..., 3|4) as float32 RGB in [0, 1]."""
    values = np.asarray(colours)[..., :3]
    scale = 255.0 if values.dtype == np.uint8 else 1.0
    return torch.from_numpy(values.astype(np.float32) / scale)


def _texture_image(material) -> torch.Tensor | None:
    """The material's colour texture (3, h, w), if any (glTF base colour or OBJ map_Kd)."""
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is None:
        return None
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def _part(geometry, transform: np.ndarray, textures: list[torch.Tensor]) -> Mesh:
    """One trimesh geometry as a `Mesh`, with ``transform`` (its scene node's) applied; its
    texture, if any, is appended to ``textures``."""
    vertices = np.asarray(geometry.vertices, dtype=np.float64)
    vertices = vertices @ transform[:3, :3].T + transform[:3, 3]
    faces = torch.from_numpy(np.asarray(geometry.faces, dtype=np.int64))
    count = len(faces)
    colours = torch.full((count, 3, 3), FLAT_GREY)
    corner_uv = torch.zeros(count, 3, 2)
    face_texture = torch.full((count,), -1, dtype=torch.int64)
    visual = geometry.visual
    if visual.kind == "texture":
        material = getattr(visual, "material", None)
        texture = _texture_image(material) if material is not None else None
        uv = getattr(visual, "uv", None)
        if texture is not None and uv is not None and len(uv) == len(vertices):
            corner_uv = torch.from_numpy(np.asarray(uv, dtype=np.float32))[faces]
            face_texture[:] = len(textures)
            textures.append(texture)
        elif material is not None:
            colours[:] = _rgb(np.asarray(material.main_color))
    elif visual.kind == "vertex":
        colours = _rgb(visual.vertex_colors)[faces]
    elif visual.kind == "face":
        colours = _rgb(visual.face_colors)[:, None].expand(count, 3, 3).clone()
    return Mesh(torch.from_numpy(vertices), faces, colours, corner_uv, face_texture, [])


def load_mesh(path: Path, where: str) -> Mesh:
    """Every triangle of the OBJ, GLB or PLY file at ``path`` with its colours (module
    docstring). A missing, unreadable or triangle-less file raises `InputError` naming the
    file and ``where`` (the spec field, ``objects[i].mesh``)."""
    import trimesh  # a heavy import, only for specs with meshes

    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise InputError(f"unsupported mesh format: {path} (use .obj, .glb or .ply)", where)
    if not path.is_file():
        raise InputError(f"mesh file not found: {path}", where)
    try:
        scene = trimesh.load(path, force="scene")
        nodes = [scene.graph[name] for name in scene.graph.nodes_geometry]
    except Exception as exc:  # noqa: BLE001 - trimesh's parsers raise anything on a bad file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read mesh file {path}: {reason}", where) from None
    textures: list[torch.Tensor] = []
    parts = []
    for transform, name in nodes:
        geometry = scene.geometry.get(name)
        if isinstance(geometry, trimesh.Trimesh) and len(geometry.faces):
            parts.append(_part(geometry, np.asarray(transform, dtype=np.float64), textures))
    if not parts:
        raise InputError(f"mesh file has no triangles: {path}", where)
    offsets = np.cumsum([0] + [len(part.vertices) for part in parts[:-1]])
    mesh = Mesh(
        vertices=torch.cat([part.vertices for part in parts]),
        faces=torch.cat([part.faces + int(o) for part, o in zip(parts, offsets, strict=True)]),
        corner_colours=torch.cat([part.corner_colours for part in parts]),
        corner_uv=torch.cat([part.corner_uv for part in parts]),
        face_texture=torch.cat([part.face_texture for part in parts]),  # global already
        textures=textures,
    )
    if not bool(torch.isfinite(mesh.vertices).all()):
        raise InputError(f"mesh file has vertices that are not finite numbers: {path}", where)
    return mesh


def place_mesh(mesh: Mesh, scene: Scene, object_id: int, where: str = "mesh") -> PlacedMesh:
    """``mesh`` (in its file's coordinates) placed on object ``object_id`` of ``scene`` (module
    docstring, "Axes" and "Placement")."""
    mask = scene.mask(object_id)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        raise InputError("the object's selection is empty at the working size", where)
    k = scene.intrinsics.double()
    distance = float(scene.distance[mask].double().median())
    vertices = mesh.vertices * _TO_CAMERA_AXES
    low, high = vertices.amin(0), vertices.amax(0)
    extent = high - low
    if float(extent[:2].max()) <= 0.0:
        raise InputError(
            "the mesh has no extent across the view (all its points on one line)", where
        )
    # Mask bounding box in world units at the object's distance (pixel cells, not centres).
    box_width = (float(xs.max() - xs.min()) + 1.0) * distance / float(k[0, 0])
    box_height = (float(ys.max() - ys.min()) + 1.0) * distance / float(k[1, 1])
    fits = [box_width / float(extent[0]) if extent[0] > 0 else np.inf]
    fits.append(box_height / float(extent[1]) if extent[1] > 0 else np.inf)
    scale = min(fits)
    box_centre = torch.tensor(
        [(float(xs.min()) + float(xs.max())) / 2, (float(ys.min()) + float(ys.max())) / 2],
        dtype=torch.float64,
    )
    centre = unproject(box_centre, torch.tensor(distance + scale * float(extent[2]) / 2), k)
    placed = (vertices - (low + high) / 2) * scale + centre
    seen = rasterise(placed, mesh.faces, k, scene.size, near=1e-9)
    if len(seen.depth):
        placed = placed * (distance / float(seen.depth.double().median()))
    return PlacedMesh(
        replace(mesh, vertices=placed), object_id, (placed.amin(0) + placed.amax(0)) / 2
    )


def scene_meshes(spec: MotionSpec, scene: Scene) -> dict[int, PlacedMesh]:
    """The meshes of the spec's objects that have one, read and placed on ``scene`` (the
    working size), by object id: what `anima.render.Renderer` takes as ``meshes``. They are in
    3D, so they serve the scene at any size (`Scene.resized`)."""
    meshes = {}
    for i, obj in enumerate(spec.objects):
        if obj.mesh is not None:
            where = f"objects[{i}].mesh"
            mesh = load_mesh(spec.resolve(obj.mesh), where)
            meshes[obj.id] = place_mesh(mesh, scene, obj.id, where)
    return meshes


def mesh_poses(placed: PlacedMesh, animation: Animation) -> torch.Tensor:
    """(F, 4, 4) float64 world transforms of the mesh: the object's rotation R(t) and
    translation T(t) (`anima.animation.object_poses`), turning about the mesh's centre m:
    p' = R (p - m) + m + T (module docstring, "Motion").

    T(t) is the 3D displacement of the object's anchor path, unprojected with the first
    frame's intrinsics (the pixel grid of ``animation``'s anchors), so a resized animation
    gives the same motion."""
    poses = animation.object_poses[placed.instance].double()
    anchors = animation.anchors[placed.instance].double()
    k0 = animation.intrinsics[0].double()
    path = unproject(anchors[:, :2], anchors[:, 2], k0)
    translation = path - path[:1]
    rotation = poses[:, :3, :3]
    m = placed.centre.double()
    out = poses.clone()
    out[:, :3, 3] = m - (rotation @ m) + translation
    return out
