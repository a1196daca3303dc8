"""Regression tests for bugs of the issue "One house for five methods" (part 5): random draws
with a CPU generator on any device, absolute pose paths in ``spec.resolved.json``, and mask or
depth files of another aspect ratio than the image."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, REPO
from diffusers import DDIMScheduler
from PIL import Image

from anima.cli import main
from anima.errors import InputError
from anima.io import read_depth, read_mask, write_png
from anima.methods.xdyna.pipeline import XDynaPipeline, uniform_tensor
from anima.pipeline import resolve_spec
from anima.scene import build_scene
from anima.spec import load_spec, parse_spec, spec_to_json

SOURCE = REPO / "src" / "anima"

# --------------------------------------------------------------------------- random draws

RANDOM = {"rand", "randn", "randint", "rand_like", "randn_like", "randint_like", "randperm"}
RANDOM |= {"normal", "bernoulli", "multinomial", "poisson"}


def _random_calls_with_a_device(tree: ast.AST) -> list[ast.Call]:
    """Calls ``torch.<random>(..., generator=G, device=D)`` in a module."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id == "torch"):
            continue
        keywords = {k.arg for k in node.keywords}
        if node.func.attr in RANDOM and {"generator", "device"} <= keywords:
            found.append(node)
    return found


def test_every_seeded_draw_in_anima_is_made_on_the_generators_device() -> None:
    """Torch refuses a CPU generator for an accelerator tensor. A draw that names both a
    generator and a device must draw on the generator's device (``device=G.device``, then move
    the result), never on the data's; draws without a device are made on the CPU, where the
    project's generators live (diffusers' ``randn_tensor`` handles both itself)."""
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for call in _random_calls_with_a_device(tree):
            keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
            if f"{keywords['generator']}.device" not in keywords["device"]:
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)}")
    assert offenders == []


def test_the_scan_finds_the_old_bug() -> None:
    """The scan above recognises the draw that failed on every accelerator."""
    old = "keep = torch.rand(shape, generator=generator, device=reference.device) >= 0.5"
    (call,) = _random_calls_with_a_device(ast.parse(old))
    keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
    assert f"{keywords['generator']}.device" not in keywords["device"]


def test_uniform_draws_with_a_cpu_generator_give_the_cpu_numbers() -> None:
    expected = torch.rand((2, 3, 4), generator=torch.Generator().manual_seed(7))
    drawn = uniform_tensor((2, 3, 4), torch.Generator().manual_seed(7), "cpu")
    assert torch.equal(drawn, expected)
    half = uniform_tensor((5,), torch.Generator().manual_seed(7), "cpu", dtype=torch.float64)
    assert half.dtype == torch.float64
    unseeded = uniform_tensor((3,), None, torch.device("cpu"))
    assert unseeded.shape == (3,) and bool(((unseeded >= 0) & (unseeded < 1)).all())


def test_uniform_draws_for_an_accelerator_are_made_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Asked for a CUDA tensor with a CPU generator, the draw itself happens on the CPU (only
    the move needs CUDA: without it the move fails, never the draw)."""
    devices = []
    real = torch.rand

    def spy(*args, **kwargs):
        devices.append(torch.device(kwargs.get("device") or "cpu"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "rand", spy)
    try:
        drawn = uniform_tensor((4,), torch.Generator().manual_seed(1), "cuda").cpu()
    except (AssertionError, RuntimeError):  # no CUDA here: the move to it fails
        drawn = None
    assert devices == [torch.device("cpu")]
    if drawn is not None:
        assert torch.equal(drawn, real((4,), generator=torch.Generator().manual_seed(1)))


def test_xdyna_initial_latents_follow_the_seed() -> None:
    """The X-Dyna pipeline's initial latents (blur mask and noise) with a CPU generator are a
    function of the seed."""
    scheduler = DDIMScheduler(beta_schedule="linear")
    scheduler.set_timesteps(4)
    pipe = SimpleNamespace(scheduler=scheduler)
    reference = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(0))

    def latents(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return XDynaPipeline.initial_latents(pipe, reference, 3, generator)

    first = latents(11)
    assert first.shape == (1, 4, 3, 6, 5)
    assert torch.equal(first, latents(11)) and not torch.equal(first, latents(12))


# --------------------------------------------------------------------------- resolved pose paths


def test_resolved_spec_makes_pose_paths_absolute(tmp_path: Path) -> None:
    folder = tmp_path / "specs"
    shutil.copytree(EXAMPLES / "figure_dance", folder)
    data = json.loads((folder / "spec.json").read_text())
    data["pose"]["video"] = "clips/driving.mp4"
    (folder / "spec.json").write_text(json.dumps(data))
    spec = load_spec(folder / "spec.json")
    resolved = resolve_spec(spec, method="coarse")
    assert resolved.pose is not None
    for key in ("video", "keypoints", "reference_keypoints"):
        value = getattr(resolved.pose, key)
        assert Path(value).is_absolute(), key
        assert Path(value) == (folder / getattr(spec.pose, key)).resolve(), key
    # read back from anywhere, it names the same files
    elsewhere = parse_spec(json.loads(spec_to_json(resolved)), base_dir=tmp_path / "x")
    assert elsewhere.pose is not None
    assert elsewhere.resolve(elsewhere.pose.keypoints) == (folder / "driving_keypoints.json")


def test_resolved_spec_keeps_absent_pose_fields_absent() -> None:
    spec = load_spec(EXAMPLES / "figure_dance" / "spec.json")
    resolved = resolve_spec(spec, method="coarse")
    assert resolved.pose is not None and resolved.pose.video is None
    assert resolve_spec(load_spec(EXAMPLES / "rocket_recede.json"), method="coarse").pose is None


# --------------------------------------------------------------------------- aspect ratios


def _mask_file(path: Path, size: tuple[int, int]) -> Path:
    mask = np.zeros(size, np.uint8)
    mask[size[0] // 4 : size[0] // 2, size[1] // 4 : size[1] // 2] = 255
    write_png(path, mask)
    return path


@pytest.mark.parametrize(
    ("file_size", "target"),
    [((10, 20), (20, 40)), ((10, 20), (21, 40)), ((100, 150), (101, 150)), ((427, 640), (64, 96))],
)
def test_same_aspect_at_another_resolution_is_fine(
    tmp_path: Path, file_size: tuple[int, int], target: tuple[int, int]
) -> None:
    mask = read_mask(
        _mask_file(tmp_path / "m.png", file_size), size=target, where="objects[0].mask"
    )
    assert tuple(mask.shape) == target
    np.save(tmp_path / "d.npy", np.ones(file_size, np.float32))
    assert tuple(read_depth(tmp_path / "d.npy", size=target, where="depth").shape) == target


@pytest.mark.parametrize(("file_size", "target"), [((10, 20), (20, 20)), ((100, 150), (104, 150))])
def test_another_aspect_is_a_one_line_error_naming_file_and_field(
    tmp_path: Path, file_size: tuple[int, int], target: tuple[int, int]
) -> None:
    path = _mask_file(tmp_path / "m.png", file_size)
    with pytest.raises(InputError) as caught:
        read_mask(path, size=target, where="objects[0].mask")
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "aspect ratio" in message
    assert caught.value.where == "objects[0].mask"
    np.save(tmp_path / "d.npy", np.ones(file_size, np.float32))
    with pytest.raises(InputError, match="aspect ratio") as caught:
        read_depth(tmp_path / "d.npy", size=target, where="depth")
    assert caught.value.where == "depth" and str(tmp_path / "d.npy") in str(caught.value)


def test_a_stretched_working_size_accepts_files_of_the_photos_aspect(tmp_path: Path) -> None:
    """A spec ``size`` of another aspect stretches the photo; a mask drawn on the photo (its
    aspect) is stretched with it, and so is one drawn at the working size."""
    photo = _mask_file(tmp_path / "photo_aspect.png", (40, 80))
    working = _mask_file(tmp_path / "working_aspect.png", (32, 32))
    for path in (photo, working):
        assert read_mask(path, size=(64, 64), image_size=(40, 80)).shape == (64, 64)
    with pytest.raises(InputError, match="aspect ratio"):
        read_mask(_mask_file(tmp_path / "other.png", (80, 40)), size=(64, 64), image_size=(40, 80))


@pytest.mark.parametrize("field", ["mask", "depth"])
def test_animate_and_validate_refuse_a_file_of_another_aspect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str
) -> None:
    Image.new("RGB", (64, 48), (90, 120, 150)).save(tmp_path / "photo.png")
    data: dict = {"version": 1, "image": "photo.png", "num_frames": 2, "objects": []}
    if field == "mask":
        _mask_file(tmp_path / "m.png", (48, 48))
        data["objects"] = [{"id": 1, "mask": "m.png"}]
        where, name = "objects[0].mask", "m.png"
    else:
        np.save(tmp_path / "d.npy", np.full((64, 64), 5.0, np.float32))
        data["depth"] = "d.npy"
        where, name = "depth", "d.npy"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(data))
    for argv in (
        ["spec", "validate", str(spec)],
        ["animate", str(spec), "-o", str(tmp_path / "o.mp4")],
    ):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: invalid ")
        assert name in err and "aspect ratio" in err and f"{where} in {spec}" in err
    assert not (tmp_path / "o.mp4").exists()
    with pytest.raises(InputError, match="aspect ratio"):
        build_scene(load_spec(spec))
