"""The studio's files, perception cache and runs (no gradio): uploads, downloads, and the
promise that what the studio shows and previews is what ``anima animate`` computes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anima.cli import main
from anima.errors import InputError
from anima.io import read_video
from anima.pipeline import animate, resolve_spec
from anima.scene import build_scene
from anima.spec import load_spec
from anima.studio import draw, runs, state
from anima.studio.perception import Perception
from anima.studio.workspace import Workspace, image_size, safe_name, working_size

REPO = Path(__file__).resolve().parents[1]
CAT = REPO / "examples" / "chelsea.png"  # 451x300


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "studio", max_upload_bytes=2_000_000, max_side=400)
    yield ws
    ws.close()


def drawn(workspace: Workspace, perception: Perception) -> state.Draft:
    """The cat photo with its left eye selected and moved along three points."""
    draft = workspace.add_image(None, CAT)
    draft = state.add_object(draft, 180, 130)
    scene = perception.scene(state.to_spec(draft), Path(draft.workdir) / "cache")
    for x, y in ((180, 130), (260, 110), (330, 80)):
        draft = state.add_path_point(draft, x, y, perception.depth_at(scene, x, y))
    return state.set_depth(draft, 20.0)


def test_names_and_sizes(tmp_path):
    assert safe_name("../my photo (1).JPG") == "my_photo_1_.JPG"
    assert safe_name("///") == "photo.png"
    assert working_size((300, 451), 400) == (266, 400)
    assert working_size((100, 50), 400) == (100, 50)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InputError, match="not an image"):
        image_size(text, "photo")
    with pytest.raises(InputError, match="at most 0.1 megapixels"):
        image_size(CAT, "photo", max_pixels=100_000)
    Image.new("RGB", (8, 40)).save(tmp_path / "thin.png")
    with pytest.raises(InputError, match="at least 16 pixels"):
        image_size(tmp_path / "thin.png", "photo")


def test_add_image_copies_the_upload_and_records_a_reduced_size(workspace, tmp_path):
    draft = workspace.add_image(None, CAT)
    assert (Path(draft.workdir) / "chelsea.png").read_bytes() == CAT.read_bytes()
    assert draft.size == (266, 400) and draft.spec["size"] == [266, 400]
    assert Path(draft.workdir).parent == workspace.root / "sessions"
    # a different photo under the same name does not replace the first (undo needs it)
    other = tmp_path / "chelsea.png"
    Image.new("RGB", (64, 48), "red").save(other)
    second = workspace.add_image(draft, other)
    assert second.spec["image"] == "chelsea-2.png" and "size" not in second.spec
    assert state.undo(second).spec["image"] == "chelsea.png"


def test_uploads_over_the_limit_and_specs_as_photos_are_refused(workspace, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 2_000_001)
    with pytest.raises(InputError, match="uploads are limited to 2 MB"):
        workspace.add_image(None, big)
    spec = tmp_path / "a.json"
    spec.write_text("{}")
    with pytest.raises(InputError, match="this is a spec"):
        workspace.add_image(None, spec)


def test_perception_scene_is_the_scene_build_scene_makes(workspace):
    perception = Perception()
    draft = state.add_object(workspace.add_image(None, CAT), 180, 130)
    draft = state.add_object(draft, 330, 240)
    spec = state.to_spec(draft)
    cache = Path(draft.workdir) / "cache"
    cached = perception.scene(spec, cache)
    direct = build_scene(spec)
    assert torch.equal(cached.image, direct.image)
    assert torch.equal(cached.instance, direct.instance)
    assert torch.equal(cached.distance, direct.distance)
    assert torch.equal(cached.intrinsics, direct.intrinsics)
    assert cached.depth_source == "ground-plane prior"
    assert len(list((cache / "masks").glob("*.png"))) == 2
    assert perception.scene(spec, cache) is cached  # remembered
    # a path changes nothing perception computes: the masks are not computed again
    moved = state.add_path_point(draft, 330, 240, 5.0)
    again = Perception().scene(state.to_spec(moved), cache)
    assert torch.equal(again.distance, direct.distance)
    assert len(list((cache / "masks").glob("*.png"))) == 2


def test_perception_scene_with_a_polygon_is_the_scene_build_scene_makes(workspace):
    """A polygon is exact: no mask file is cached for it, and the studio's scene (the photo
    worked on at a reduced size) is build_scene's, in both grids."""
    perception = Perception()
    draft = state.add_object(workspace.add_image(None, CAT), 330, 240)
    for x, y in ((120.3, 60), (250, 70.6), (230, 200), (110, 180)):
        draft = state.add_polygon_corner(draft, x, y)
    draft = state.close_polygon(draft)
    assert draft.size == (266, 400)  # the photo is larger: two grids
    spec = state.to_spec(draft)
    cache = Path(draft.workdir) / "cache"
    cached = perception.scene(spec, cache)
    direct = build_scene(spec)
    assert torch.equal(cached.instance, direct.instance)
    assert torch.equal(cached.distance, direct.distance)
    assert bool((cached.instance == 2).any())
    assert len(list((cache / "masks").glob("*.png"))) == 1  # the click's mask only
    canvas = draw.canvas(cached.image, cached.instance, draft.objects, 2, None, ((5, 5), (40, 9)))
    assert canvas.shape == (266, 400, 3)


def test_export_and_load_spec_round_trip(workspace, tmp_path):
    perception = Perception()
    draft = drawn(workspace, perception)
    files = workspace.export(draft)
    assert [f.name for f in files] == ["chelsea.json", "chelsea.png"]
    saved = tmp_path / "saved"
    saved.mkdir()
    for f in files:
        shutil.copy(f, saved)
    assert main(["spec", "validate", str(saved / "chelsea.json")]) == 0
    assert load_spec(saved / "chelsea.json").objects[0].trajectory[2].depth == 20.0
    # a new session continues it from the two files
    loaded = workspace.load_spec(None, [saved / "chelsea.json", saved / "chelsea.png"])
    assert loaded.spec == draft.spec and loaded.active == 1 and loaded.keyframe == 2
    assert loaded.size == (266, 400)
    # without its photo, a new session cannot
    with pytest.raises(InputError, match="together with the file it names, 'chelsea.png'"):
        workspace.load_spec(None, [saved / "chelsea.json"])
    # the same session can (it has the photo)
    assert workspace.load_spec(loaded, [saved / "chelsea.json"]).spec == draft.spec
    with pytest.raises(InputError, match="one .json spec"):
        workspace.load_spec(None, [saved / "chelsea.png"])
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1}')
    with pytest.raises(InputError, match="image: required field is missing, broken.json"):
        workspace.load_spec(None, [broken])


def test_preview_is_what_the_cli_renders(workspace, tmp_path):
    perception = Perception()
    draft = drawn(workspace, perception)
    stages: list[str] = []
    video = runs.preview(draft, perception, stages.append)
    assert video.path.name == "chelsea.coarse.mp4" and video.shown.name == "preview.mp4"
    assert stages and video.messages == []
    # the pipeline from scratch on the exported spec gives the same frames
    saved = tmp_path / "saved"
    saved.mkdir()
    for f in workspace.export(draft):
        shutil.copy(f, saved)
    spec = resolve_spec(load_spec(saved / "chelsea.json"), method="coarse")
    assert torch.equal(animate(spec).frames, video.frames)
    # and the CLI writes the same video
    out = tmp_path / "cli.mp4"
    assert main(["animate", str(saved / "chelsea.json"), "-o", str(out), "-q"]) == 0
    cli_frames, _ = read_video(out)
    studio_frames, _ = read_video(video.path)
    assert np.array_equal(np.stack(cli_frames), np.stack(studio_frames))


def test_preview_without_motion_says_so(workspace):
    perception = Perception()
    draft = state.add_object(workspace.add_image(None, CAT), 180, 130)
    video = runs.preview(draft, perception)
    assert any("nothing moves yet" in m for m in video.messages)


def test_pictures(workspace):
    perception = Perception()
    draft = drawn(workspace, perception)
    scene = perception.scene(state.to_spec(draft), Path(draft.workdir) / "cache")
    canvas = draw.canvas(scene.image, scene.instance, draft.objects, draft.active, draft.keyframe)
    photo = draw.image_rgb(scene.image)
    assert canvas.shape == photo.shape == (266, 400, 3) and canvas.dtype == np.uint8
    mask = scene.instance.numpy() == 1
    assert (canvas[mask] != photo[mask]).any(axis=-1).mean() > 0.9  # tinted
    colours = draw.depth_colours(scene.distance)
    assert colours.shape == (266, 400, 3)
    near = np.unravel_index(scene.distance.numpy().argmin(), scene.size)
    assert colours[near][0] > colours[near][2]  # near is red


def test_session_folders_are_removed(workspace):
    draft = workspace.add_image(None, CAT)
    workspace.remove_session(draft.workdir)
    assert not Path(draft.workdir).exists()
    workspace.remove_session(workspace.root)  # only session folders are ever removed
    assert workspace.root.exists()
    workspace.close()
    assert not workspace.root.exists()


def test_exported_spec_is_json_with_relative_photo(workspace):
    draft = workspace.add_image(None, CAT)
    spec_file = workspace.export(draft)[0]
    assert json.loads(spec_file.read_text())["image"] == "chelsea.png"


def test_generate_writes_the_methods_video(workspace):
    perception = Perception()
    draft = drawn(workspace, perception)
    video = runs.generate(draft, "coarse", perception, perception.weights)
    assert video.path.name == "chelsea.coarse.mp4" and video.shown == video.path
    assert video.frames.shape == (16, 3, 266, 400)
    with pytest.raises(InputError, match="unknown method"):
        runs.generate(draft, "nope", perception, perception.weights)


def test_methods_lacking_weights_say_why():
    from anima.studio.methods import method_status, method_statuses
    from anima.weights import Weights

    statuses = method_statuses(Weights())
    assert statuses[0].name == "coarse" and statuses[0].ready
    levitor = method_status("levitor", Weights())
    assert not levitor.ready and "svd/, levitor/" in levitor.reason
    assert "--weights" in levitor.reason
    assert method_status("levitor", Weights(builtin="tiny")).ready
