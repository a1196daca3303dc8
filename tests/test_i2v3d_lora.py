"""I2V3D's LoRA customisation with multi-view augmentation (I2V3D §3.2.1, Eq. 1) on tiny models:
the loss goes down, pixels outside a view's mask do not reach the gradient, the saved LoRA
reloads through diffusers, resume is exact, ``auto`` views come from the renderer, bad view
folders are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_scene
from PIL import Image
from safetensors.torch import load_file

from anima.cli import main
from anima.errors import InputError
from anima.methods.i2v3d.loading import load_base
from anima.methods.i2v3d.lora import (
    INFO_FILE,
    LORA_FILE,
    check_lora,
    load_lora,
    pipeline_class,
)
from anima.methods.i2v3d.train import (
    LoraTrainConfig,
    LoraTrainer,
    build_trainer,
    lora_prompts,
    resolve_inputs,
    train_lora,
)
from anima.methods.i2v3d.views import (
    composite,
    read_view_folder,
    render_views,
    turned_spec,
)
from anima.render import render
from anima.spec import parse_spec
from anima.training import LoopConfig, make_accelerator, step_generator, train_loop
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = Weights(builtin="tiny")
#: The smallest training side each tiny base takes (SD1.5's four levels: 8x8 latents).
RESOLUTION = {"sd15": 64, "sdxl": 32}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """An input image and a views folder of two views with masks (left halves masked out)."""
    root = tmp_path_factory.mktemp("i2v3d-lora")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((80, 96, 3)) * 255).astype(np.uint8)).save(root / "input.png")
    views = root / "views"
    views.mkdir()
    for k in range(2):
        pixels = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(views / f"view_{k:02d}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[8:56, 32 + 4 * k : 60] = 255
        Image.fromarray(mask).save(views / f"view_{k:02d}_mask.png")
    return root


def config(data: Path, out: Path, base: str = "sd15", **changes) -> LoraTrainConfig:
    settings = {
        "image": data / "input.png",
        "views": str(data / "views"),
        "out": out,
        "base": base,
        "resolution": RESOLUTION[base],
        "rank": 4,
        "lr": 1e-2,
        "steps": 2,
        "quiet": True,
    }
    return LoraTrainConfig(**(settings | changes))


def trainer_for(cfg: LoraTrainConfig) -> LoraTrainer:
    inputs = resolve_inputs(cfg, TINY)
    return build_trainer(cfg, inputs, load_base(TINY, torch.float32, cfg.base))


class FixedBatch(LoraTrainer):
    """Every step trains on micro-batch 0's data and noise."""

    def batch(self, index: int, process: int):
        return super().batch(0, process)

    def loss(self, modules, batch, index: int, process: int):
        return super().loss(modules, batch, 0, process)


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
def test_training_lowers_the_loss_on_a_fixed_batch(data: Path, tmp_path: Path, base: str) -> None:
    cfg = config(data, tmp_path, base, steps=12)
    built = trainer_for(cfg)
    trainer = FixedBatch(cfg, built.data, built.objective, built.unet)
    loop = LoopConfig(out=tmp_path, steps=cfg.steps, lr=cfg.lr, quiet=True)
    result = train_loop(make_accelerator(tmp_path), trainer, loop)
    assert result.losses[-1] < 0.75 * result.losses[0], result.losses
    assert result.named["view"][0] > 0 and result.named["image"][0] > 0


def _gradients(trainer: LoraTrainer, sample) -> list[torch.Tensor]:
    unet = trainer.unet
    unet.zero_grad(set_to_none=True)
    generator = step_generator(0, 0, 0, 1)
    trainer.objective.loss(unet, sample, generator, 1.0)["loss"].backward()
    return [p.grad.clone() for p in unet.parameters() if p.requires_grad]


def test_pixels_outside_a_views_mask_do_not_change_the_gradient(data: Path, tmp_path) -> None:
    """Eq. 1's M: the view is composited over white with its mask before the VAE and its
    error is weighted by the mask at latent size."""
    trainer = trainer_for(config(data, tmp_path))
    with torch.no_grad():  # the adapter's B starts at zero: give the LoRA an effect
        for name, p in trainer.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1, generator=torch.Generator().manual_seed(1))
    sample = trainer.batch(0, 0)
    inside = sample.view_mask > 0
    assert inside.any() and (~inside).any()
    noise = torch.rand(sample.view.shape, generator=torch.Generator().manual_seed(2))

    reference = _gradients(trainer, sample)
    sample.view = torch.where(inside, sample.view, noise)
    outside_changed = _gradients(trainer, sample)
    assert all(torch.equal(a, b) for a, b in zip(reference, outside_changed, strict=True))

    sample.view = torch.where(inside, noise, sample.view)
    inside_changed = _gradients(trainer, sample)
    assert not all(torch.equal(a, b) for a, b in zip(reference, inside_changed, strict=True))


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
def test_saved_lora_reloads_through_diffusers(data: Path, tmp_path: Path, base: str) -> None:
    """The file is diffusers' LoRA format: a fresh pipeline's ``load_lora_weights`` gives the
    trained UNet's outputs; the record refuses another base; a second run reuses it."""
    cfg = config(data, tmp_path / "run", base, lora_alpha=8.0)  # alpha != rank: scale kept
    result = train_lora(cfg, TINY)
    assert not result.cached and result.lora_file.name == LORA_FILE
    info = json.loads((tmp_path / "run" / INFO_FILE).read_text())
    assert info["base"] == base and info["image_sha256"] == result.info["image_sha256"]

    components = load_base(TINY, torch.float32, base)
    if base == "sd15":
        components |= {"safety_checker": None, "feature_extractor": None}
        components["requires_safety_checker"] = False
    pipe = pipeline_class(base)(**components)
    unet = pipe.unet
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    added = None
    if base == "sdxl":
        pooled = torch.randn(1, 32, generator=generator)
        added = {"text_embeds": pooled, "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])}
    with torch.no_grad():
        before = unet(sample, 400, text, added_cond_kwargs=added).sample
        load_lora(pipe, tmp_path / "run", base, image_sha256=result.info["image_sha256"])
        loaded = unet(sample, 400, text, added_cond_kwargs=added).sample
        trained = result.unet.eval()(sample, 400, text, added_cond_kwargs=added).sample
    assert torch.allclose(loaded, trained, atol=1e-5)
    assert not torch.allclose(before, trained, atol=1e-3)

    other = "sdxl" if base == "sd15" else "sd15"
    with pytest.raises(InputError, match=f"trained for base {base}, not {other}"):
        check_lora(tmp_path / "run", other)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="another image"):
        check_lora(tmp_path / "run", base, image_sha256="0" * 64)  # type: ignore[arg-type]
    again = train_lora(cfg, TINY)
    assert again.cached and again.unet is None


def test_resume_is_exact(data: Path, tmp_path: Path) -> None:
    """4 steps in one go, and 2 + 2 resumed from checkpoint-2: the same LoRA, bit for bit."""
    out = tmp_path / "run"
    full = train_lora(config(data, out, steps=4, checkpoint_every=2), TINY)
    whole = load_file(out / LORA_FILE)
    assert (out / "checkpoint-2" / "lora_state.safetensors").is_file()
    assert not (out / "checkpoint-2" / "model.safetensors").exists()  # the adapter alone

    resumed = train_lora(
        config(data, out, steps=4, checkpoint_every=2, resume=str(out / "checkpoint-2")), TINY
    )
    assert resumed.start_step == 2 and resumed.losses == full.losses[2:]
    again = load_file(out / LORA_FILE)
    assert whole.keys() == again.keys()
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    steps = [line["step"] for line in map(json.loads, (out / "log.jsonl").read_text().splitlines())]
    assert steps == sorted(set(steps))


def _spec(tmp_path: Path):
    Image.new("RGB", (80, 64)).save(tmp_path / "photo.png")
    data = {
        "version": 1,
        "image": "photo.png",
        "prompt": "a red box on a table",
        "objects": [{"id": 1, "label": "box", "box": [24, 16, 56, 48]}],
    }
    return parse_spec(data, base_dir=tmp_path)


def test_auto_views_turn_the_object_and_take_masks_from_the_instance_map(tmp_path) -> None:
    spec = _spec(tmp_path)
    scene = make_scene((64, 80), objects={1: ((24, 16, 56, 48), 4.0)})
    angles = (-30.0, 30.0)
    views = render_views(spec, scene, 1, 64, angles)
    assert len(views) == 2 and all(v.size == (64, 80) for v in views)

    from anima.animation import build_animation

    frames = render(scene, build_animation(turned_spec(spec, scene, 1, angles), scene))
    input_view = composite(scene.image, scene.mask(1).float())
    assert torch.allclose(frames.rgb[0], scene.image, atol=1e-4)  # frame 0 is the photo
    for k, view in enumerate(views, start=1):
        assert torch.equal(view.mask, (frames.instance[k] == 1).float())
        assert torch.equal(view.image, composite(frames.rgb[k], view.mask))
        assert not torch.equal(view.mask, scene.mask(1).float())  # foreshortened
        assert (view.image - input_view).abs().mean() > 0.01
    assert not torch.equal(views[0].mask, views[1].mask)


def test_views_folder_layouts(tmp_path: Path) -> None:
    """``NAME.png`` + ``NAME_mask.png``, or an RGBA image whose alpha is the mask."""
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[4:12, 4:12, 3] = 255
    rgba[4:12, 12, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((16, 16, 3), 50, np.uint8)).save(tmp_path / "b.png")
    mask = np.zeros((32, 32), np.uint8)  # another resolution, same aspect
    mask[:16] = 255
    Image.fromarray(mask).save(tmp_path / "b_mask.png")
    a, b = read_view_folder(tmp_path)
    assert (a.name, b.name) == ("a.png", "b.png")
    assert torch.allclose(a.mask, torch.from_numpy(rgba[..., 3] / 255.0).float())
    assert torch.allclose(a.image[:, 8, 8], torch.full((3,), 200 / 255))
    assert torch.equal(a.image[:, 0, 0], torch.ones(3))  # outside: white
    assert torch.equal(b.mask[:8], torch.ones(8, 16)) and not b.mask[8:].any()
    assert torch.equal(b.image[:, 12], torch.ones(3, 16))


def test_prompts_paper_and_release() -> None:
    assert lora_prompts("panda", "a bamboo forest") == ("a panda in a bamboo forest", "a panda")
    assert lora_prompts("panda", None, "a panda eating") == ("a panda eating", "a panda")
    assert lora_prompts(None, None) == ("a object", "a object")
    release = lora_prompts("panda", "a bamboo forest", release=True)
    assert release == ("a panda in a bamboo forest",) * 2


@pytest.mark.parametrize(
    "layout, message",
    [
        ("no-mask", "the view has no mask"),
        ("empty", "no view images"),
        ("orphan-mask", "a mask without its view image"),
        ("auto-without-spec", "'auto' views turn a spec's object"),
    ],
)
def test_bad_views_are_one_line_errors(
    data: Path, tmp_path: Path, capsys, layout: str, message: str
) -> None:
    views = tmp_path / "views"
    views.mkdir()
    if layout == "no-mask":
        Image.new("RGB", (16, 16)).save(views / "view_00.png")
    elif layout == "orphan-mask":
        Image.new("RGB", (16, 16)).save(views / "view_00.png")
        Image.new("L", (16, 16), 255).save(views / "view_00_mask.png")
        Image.new("L", (16, 16), 255).save(views / "view_01_mask.png")
    argv = ["train", "i2v3d-lora", "--image", str(data / "input.png"), "--out"]
    argv += [str(tmp_path / "out"), "--weights", "tiny", "--base", "sd15", "-q"]
    argv += ["--views", "auto" if layout == "auto-without-spec" else str(views)]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and message in error
    assert not (tmp_path / "out").exists()


def test_auto_views_of_an_object_with_a_mesh_show_its_sides(tmp_path: Path) -> None:
    """With ``objects[i].mesh`` the turned object is drawn from its model: a cube turned 45
    degrees shows a side face the photo never had (green on one side, yellow on the other)."""
    import trimesh

    vertices, faces, colours = [], [], []
    sides = {(0, 0, 1): (255, 0, 0), (1, 0, 0): (0, 255, 0), (-1, 0, 0): (255, 255, 0)}
    for normal in [(0, 0, 1), (0, 0, -1), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0)]:
        n = np.array(normal, dtype=float)
        u, start = np.roll(n, 1), len(vertices)
        for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            vertices.append((n + a * u + b * np.cross(n, u)) / 2)
            colours.append((*sides.get(normal, (0, 0, 255)), 255))
        faces += [(start, start + 1, start + 2), (start, start + 2, start + 3)]
    cube = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colours, process=False)
    cube.export(tmp_path / "cube.glb")  # GLB keeps per-vertex colours
    data = {
        "version": 1,
        "image": "photo.png",
        "objects": [{"id": 1, "box": [24, 16, 56, 48], "mesh": "cube.glb"}],
    }
    spec = parse_spec(data, base_dir=tmp_path)
    scene = make_scene((64, 80), objects={1: ((24, 16, 56, 48), 4.0)})
    views = render_views(spec, scene, 1, 64, (-45.0, 45.0))
    side_colours = []
    for view in views:
        inside = view.mask > 0
        pixels = view.image[:, inside].T
        green = ((pixels - torch.tensor([0.0, 1.0, 0.0])).abs().amax(1) < 0.05).float().mean()
        yellow = ((pixels - torch.tensor([1.0, 1.0, 0.0])).abs().amax(1) < 0.05).float().mean()
        side_colours.append((float(green), float(yellow)))
    (green_a, yellow_a), (green_b, yellow_b) = side_colours
    assert max(green_a, yellow_a) > 0.1 and max(green_b, yellow_b) > 0.1
    assert (green_a > yellow_a) != (green_b > yellow_b)  # opposite turns, opposite sides
