"""Meshes in the scene (I2V3D §3.1): read with trimesh, placed on their object, rasterised with
the point scene by depth, turned to show their backs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from conftest import EXAMPLES, make_scene
from PIL import Image

from anima import raster
from anima.animation import build_animation
from anima.camera import intrinsics_from_fov, unproject
from anima.cli import main
from anima.errors import InputError
from anima.mesh import load_mesh, mesh_poses, scene_meshes
from anima.raster import rasterise
from anima.render import render
from anima.spec import load_spec, parse_spec

# Face colours of the test cube, by the outward normal in the file's axes (y up, front +z).
FRONT, BACK = (255, 0, 0), (0, 0, 255)
RIGHT, LEFT = (0, 255, 0), (255, 255, 0)
TOP, BOTTOM = (255, 255, 255), (0, 255, 255)


def coloured_cube() -> trimesh.Trimesh:
    """A unit cube whose six faces have their own colours (4 vertices a face, so the colours
    survive as vertex colours in any format)."""
    faces_by_normal = {
        (0, 0, 1): FRONT,
        (0, 0, -1): BACK,
        (1, 0, 0): RIGHT,
        (-1, 0, 0): LEFT,
        (0, 1, 0): TOP,
        (0, -1, 0): BOTTOM,
    }
    vertices, faces, colours = [], [], []
    for normal, colour in faces_by_normal.items():
        n = np.array(normal, dtype=float)
        u = np.roll(n, 1)
        v = np.cross(n, u)
        start = len(vertices)
        for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            vertices.append((n + a * u + b * v) / 2)
            colours.append((*colour, 255))
        faces += [(start, start + 1, start + 2), (start, start + 2, start + 3)]
    return trimesh.Trimesh(
        vertices=vertices, faces=faces, vertex_colors=np.array(colours), process=False
    )


def spec_with(objects: list[dict], base_dir: Path, num_frames: int = 3):
    data = {"version": 1, "image": "unused.png", "num_frames": num_frames, "objects": objects}
    return parse_spec(data, base_dir=base_dir)


def keyframes(*poses: tuple[float, float, float, float]) -> list[dict]:
    """(x, y, depth, degrees about y) at evenly spaced times."""
    times = np.linspace(0, 1, len(poses))
    return [
        {"t": float(t), "x": x, "y": y, "depth": d, "rotation": [0.0, r, 0.0]}
        for t, (x, y, d, r) in zip(times, poses, strict=True)
    ]


def colour_at(result, frame: int, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(c) for c in (result.rgb[frame, :, y, x] * 255).round().tolist())


def test_half_turn_shows_the_back_face_where_the_front_was(tmp_path: Path) -> None:
    coloured_cube().export(tmp_path / "cube.glb")
    box = (44, 28, 84, 68)
    scene = make_scene(size=(96, 128), objects={1: (box, 5.0)})
    obj = {"id": 1, "box": list(box), "mesh": "cube.glb"}
    obj["trajectory"] = keyframes((64, 48, 5, 0), (64, 48, 5, 90), (64, 48, 5, 180))
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        json.dumps({"version": 1, "image": "x.png", "num_frames": 3, "objects": [obj]})
    )
    spec = load_spec(spec_file)  # the mesh path resolves against the spec's folder
    meshes = scene_meshes(spec, scene)
    result = render(scene, build_animation(spec, scene), meshes=meshes)

    assert colour_at(result, 0, 64, 48) == FRONT
    assert colour_at(result, 1, 64, 48) in (RIGHT, LEFT)
    assert colour_at(result, 2, 64, 48) == BACK
    for f in (0, 2):  # turned about its own centre: the back is where the front was
        drawn = result.instance[f] == 1
        assert bool(result.visible[f][drawn].all())
        assert abs(float(result.distance[f][drawn].median()) - 5.0) < 0.05
        ys, xs = torch.nonzero(drawn, as_tuple=True)
        assert abs(float(xs.float().mean()) - 63.5) < 1.0
        assert abs(float(ys.float().mean()) - 47.5) < 1.0
        # fitted to the selection's box: about 40 pixels a side
        assert 36 <= int(xs.max() - xs.min()) + 1 <= 44


def test_mesh_replaces_the_object_pixels_and_keeps_its_id(tmp_path: Path) -> None:
    """A cube on a wide selection: the cube is the object; the rest of the selection shows the
    background plate (not visible), never the photo's object pixels."""
    coloured_cube().export(tmp_path / "cube.ply")
    box = (20, 40, 100, 60)  # 80 x 20 pixels; the cube fits its height
    scene = make_scene(size=(96, 128), objects={1: (box, 5.0)})
    spec = spec_with([{"id": 1, "box": list(box), "mesh": "cube.ply"}], tmp_path, num_frames=2)
    result = render(scene, build_animation(spec, scene), meshes=scene_meshes(spec, scene))
    for f in range(2):
        drawn = result.instance[f] == 1
        ys, xs = torch.nonzero(drawn, as_tuple=True)
        assert 17 <= int(xs.max() - xs.min()) + 1 <= 23  # the cube, not the 80-pixel box
        assert colour_at(result, f, 60, 50) == FRONT
        assert bool(result.visible[f][drawn].all())
        assert int(result.instance[f, 50, 25]) == 0 and not bool(result.visible[f, 50, 25])


def test_mesh_and_photo_occlude_each_other_by_depth(tmp_path: Path) -> None:
    cube = coloured_cube()
    cube.visual.vertex_colors = np.array([[*FRONT, 255]] * len(cube.vertices))
    cube.export(tmp_path / "cube.obj")
    scene = make_scene(size=(96, 160), objects={1: ((20, 30, 50, 60), 6.0)})
    scene.distance[:, 95:125] = 3.0  # a nearer pillar in the photo (not selected)
    start = (35, 45, 6, 0)
    behind = spec_with(
        [
            {
                "id": 1,
                "box": [20, 30, 50, 60],
                "mesh": "cube.obj",
                "trajectory": keyframes(start, (100, 45, 6, 0)),
            }
        ],
        tmp_path,
    )
    result = render(scene, build_animation(behind, scene), meshes=scene_meshes(behind, scene))
    last = result.frame(2)
    assert bool((last.instance[:, 95:125] == 0).all())  # hidden by the pillar
    assert torch.equal(last.rgb[:, :, 95:125], scene.image[:, :, 95:125])
    assert bool((last.instance[:, 88:95] == 1).any())  # still drawn where nothing is nearer

    in_front = spec_with(
        [
            {
                "id": 1,
                "box": [20, 30, 50, 60],
                "mesh": "cube.obj",
                "trajectory": keyframes(start, (110, 45, 2, 0)),
            }
        ],
        tmp_path,
    )
    result = render(scene, build_animation(in_front, scene), meshes=scene_meshes(in_front, scene))
    last = result.frame(2)
    assert int(last.instance[45, 110]) == 1
    assert colour_at(result, 2, 110, 45) == FRONT
    assert abs(float(last.distance[45, 110]) - 2.0) < 0.05
    assert bool(last.visible[45, 110])


@pytest.mark.parametrize("name", ["quad.obj", "quad.glb"])
def test_uv_texture_is_sampled_the_right_way_up(tmp_path: Path, name: str) -> None:
    quadrants = np.zeros((4, 4, 3), dtype=np.uint8)
    quadrants[:2, :2] = (255, 0, 0)  # image top-left
    quadrants[:2, 2:] = (0, 255, 0)  # top-right
    quadrants[2:, :2] = (0, 0, 255)  # bottom-left
    quadrants[2:, 2:] = (255, 255, 255)
    quad = trimesh.Trimesh(
        vertices=[[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]],
        faces=[[0, 1, 2], [0, 2, 3]],
        process=False,
    )
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    quad.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(quadrants))
    quad.export(tmp_path / name)  # an OBJ with its .mtl and .png beside it
    scene = make_scene(size=(96, 128), objects={1: ((34, 18, 94, 78), 4.0)})
    spec = spec_with([{"id": 1, "box": [34, 18, 94, 78], "mesh": name}], tmp_path, 2)
    meshes = scene_meshes(spec, scene)
    assert len(meshes[1].mesh.textures) == 1
    result = render(scene, build_animation(spec, scene), meshes=meshes)
    assert colour_at(result, 0, 40, 24) == (255, 0, 0)
    assert colour_at(result, 0, 88, 24) == (0, 255, 0)
    assert colour_at(result, 0, 40, 72) == (0, 0, 255)
    assert colour_at(result, 0, 88, 72) == (255, 255, 255)


def test_mesh_moves_exactly_like_the_object_points(tmp_path: Path) -> None:
    """Same translation as the object's points (LeviTor Eq. 7); a rotation turns about the
    mesh's centre instead of the visible surface's centroid."""
    coloured_cube().export(tmp_path / "cube.glb")
    scene = make_scene(size=(96, 128), objects={1: ((44, 28, 84, 68), 5.0)})
    trajectory = keyframes((64, 48, 5, 0), (30, 60, 8, 0))
    spec = spec_with(
        [{"id": 1, "box": [44, 28, 84, 68], "mesh": "cube.glb", "trajectory": trajectory}], tmp_path
    )
    animation = build_animation(spec, scene)
    placed = scene_meshes(spec, scene)[1]
    assert torch.allclose(mesh_poses(placed, animation), animation.object_poses[1], atol=1e-9)
    turned = spec_with(
        [
            {
                "id": 1,
                "box": [44, 28, 84, 68],
                "mesh": "cube.glb",
                "trajectory": keyframes((64, 48, 5, 0), (64, 48, 5, 70)),
            }
        ],
        tmp_path,
    )
    poses = mesh_poses(placed, build_animation(turned, scene))
    centre = torch.cat([placed.centre, torch.ones(1, dtype=torch.float64)])
    assert torch.allclose(poses[-1] @ centre, centre, atol=1e-9)


def test_rasteriser_depth_is_perspective_correct_and_chunking_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    size = (48, 64)
    k = intrinsics_from_fov(size, 60.0)
    # A plane tilted away to the right: z = 4 + 0.5 x, two big triangles across the view.
    corners = torch.tensor(
        [[-3.0, -3.0], [3.0, -3.0], [3.0, 3.0], [-3.0, 3.0]], dtype=torch.float64
    )
    vertices = torch.cat([corners, 4 + 0.5 * corners[:, :1]], dim=1)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    whole = rasterise(vertices, faces, k, size, near=0.1)
    assert len(whole.pixel) > 0.5 * size[0] * size[1]
    xy = torch.stack([whole.pixel % size[1], whole.pixel // size[1]], -1).double()
    # the ray through each pixel centre meets the plane at z = 4 / (1 - 0.5 (x - cx) / fx)
    ray = unproject(xy, torch.ones(len(xy), dtype=torch.float64), k)
    expected = 4 / (1 - 0.5 * ray[:, 0])
    assert torch.allclose(whole.depth.double(), expected, rtol=1e-5)
    monkeypatch.setattr(raster, "PAIR_BUDGET", 97)
    chunked = rasterise(vertices, faces, k, size, near=0.1)
    for a, b in zip(vars(whole).values(), vars(chunked).values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.obj", b"this is not an obj\n{}", "no triangles"),
        ("bad.ply", b"ply\nformat nonsense\n", "cannot read mesh file"),
        ("bad.glb", b"glTF\x02\x00\x00\x00garbage", "cannot read mesh file"),
        ("model.fbx", b"", "unsupported mesh format"),
    ],
)
def test_unreadable_mesh_is_one_input_error_naming_the_field(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    (tmp_path / name).write_bytes(content)
    scene = make_scene(size=(48, 64), objects={1: ((10, 10, 30, 30), 5.0)})
    spec = spec_with([{"id": 1, "box": [10, 10, 30, 30], "mesh": name}], tmp_path)
    with pytest.raises(InputError) as error:
        scene_meshes(spec, scene)
    assert error.value.where == "objects[0].mesh"
    assert message in error.value.what and name in error.value.what
    with pytest.raises(InputError, match="not found"):
        load_mesh(tmp_path / "missing.obj", "objects[0].mesh")


def test_cli_refuses_a_bad_mesh_before_any_work(tmp_path: Path, capsys) -> None:
    data = json.loads((EXAMPLES / "rocket_recede.json").read_text())
    data["image"] = str(EXAMPLES / "rocket.jpg")
    data["objects"][0]["mesh"] = "broken.ply"
    (tmp_path / "broken.ply").write_bytes(b"ply\nformat nonsense\n")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(data))
    out = tmp_path / "out" / "video.mp4"
    assert main(["animate", str(spec), "-o", str(out), "--dump", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "objects[0].mesh" in err and "broken.ply" in err
    assert not out.exists() and not (tmp_path / "d").exists()


def test_mesh_with_a_moving_camera_and_at_another_size(tmp_path: Path) -> None:
    """The plate is splatted and holes filled around the mesh, never over it; the placed mesh
    is 3D, so it serves the resized scene and animation too."""
    coloured_cube().export(tmp_path / "cube.glb")
    box = (44, 28, 84, 68)
    scene = make_scene(size=(96, 128), objects={1: (box, 5.0)})
    data = {
        "version": 1,
        "image": "x.png",
        "num_frames": 3,
        "camera": {"type": "orbit", "degrees": 20},
    }
    data["objects"] = [{"id": 1, "box": list(box), "mesh": "cube.glb"}]
    spec = parse_spec(data, base_dir=tmp_path)
    animation = build_animation(spec, scene)
    meshes = scene_meshes(spec, scene)
    for size in ((96, 128), (48, 64)):
        result = render(scene.resized(size), animation.resized(size), meshes=meshes)
        for f in range(3):
            drawn = result.instance[f] == 1
            area = int(drawn.sum())
            assert 0.6 * 40 * 40 * (size[0] / 96) ** 2 < area < 1.2 * 40 * 40 * (size[0] / 96) ** 2
            assert bool(result.visible[f][drawn].all())
            assert bool(torch.isfinite(result.distance[f]).all())
        ys, xs = torch.nonzero(result.instance[-1] == 1, as_tuple=True)
        centre = (int(ys.float().median()), int(xs.float().median()))
        assert int(result.instance[0, size[0] // 2, size[1] // 2]) == 1
        assert tuple(result.rgb[-1, :, centre[0], centre[1]].mul(255).round().int().tolist()) in (
            FRONT,
            RIGHT,
            LEFT,
        )


def test_anima_animate_draws_the_mesh_and_the_resolved_spec_reruns(tmp_path: Path) -> None:
    """`anima animate` (coarse) on a photo with a cube turning half round: the first frame
    shows the red front, the last the blue back, both in the dump's instance map; the dumped
    ``spec.resolved.json`` names the mesh by its absolute path, so it re-runs from elsewhere."""
    from anima.io import read_video

    coloured_cube().export(tmp_path / "cube.glb")
    Image.new("RGB", (128, 96), (128, 128, 128)).save(tmp_path / "grey.png")
    obj = {"id": 1, "box": [44, 28, 84, 68], "mesh": "cube.glb"}
    obj["trajectory"] = keyframes((64, 48, 5, 0), (64, 48, 5, 180))
    data = {"version": 1, "image": "grey.png", "num_frames": 5, "fps": 4, "objects": [obj]}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(data))
    out, dump = tmp_path / "out.mp4", tmp_path / "dump"
    assert main(["animate", str(spec), "-o", str(out), "--dump", str(dump), "-q"]) == 0
    frames, _ = read_video(out)
    first, last = ((frames[i, :, 48, 64] * 255).round().tolist() for i in (0, -1))
    assert first[0] > 200 and first[2] < 60  # red (through the video codec)
    assert last[2] > 200 and last[0] < 60  # blue
    resolved = json.loads((dump / "spec.resolved.json").read_text())
    assert resolved["objects"][0]["mesh"] == str((tmp_path / "cube.glb").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = elsewhere / "spec.json"
    moved.write_text(json.dumps(resolved))
    assert main(["animate", str(moved), "-o", str(elsewhere / "again.mp4"), "-q"]) == 0
