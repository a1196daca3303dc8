"""Animate124's textual inversion (Animate124 §3.4) on tiny SD1.5: the loss goes down on a fixed
batch, only the new token's row changes, resume is exact, the file loads through diffusers'
``load_textual_inversion``, the augmentations are deterministic, keep shapes and composite on
white, and bad input is one-line errors of ``anima train animate124-token``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from anima.cli import main
from anima.errors import InputError
from anima.methods.animate124.augment import (
    AugmentDraw,
    AugmentSettings,
    adjust,
    apply,
    augment,
    augment_batch,
    base_image,
    composite_on_white,
    draw,
    hsv_to_rgb,
    rgb_to_hsv,
)
from anima.methods.animate124.loading import tiny_sd15
from anima.methods.animate124.textual_inversion import (
    EMBEDS_FILE,
    INFO_FILE,
    TEMPLATES,
    TokenTrainConfig,
    TokenTrainer,
    add_token,
    build_trainer,
    init_token_ids,
    load_token,
    resolve_inputs,
    train_token,
)
from anima.training import LoopConfig, make_accelerator, train_loop
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = Weights(builtin="tiny")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A reference image (80x96) and a mask of its middle (a box)."""
    root = tmp_path_factory.mktemp("animate124-token")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((80, 96, 3)) * 255).astype(np.uint8)).save(root / "image.png")
    mask = np.zeros((80, 96), np.uint8)
    mask[16:64, 24:72] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return root


def config(data: Path, out: Path, **changes) -> TokenTrainConfig:
    settings = {
        "image": data / "image.png",
        "mask": data / "mask.png",
        "init_words": "cat",
        "out": out,
        "resolution": 64,
        "batch_size": 2,
        "steps": 2,
        "lr": 1e-2,
        "quiet": True,
    }
    return TokenTrainConfig(**(settings | changes))


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


class FixedBatch(TokenTrainer):
    """Every step on micro-batch 0 with micro-batch 0's noise."""

    def batch(self, index: int, process: int):
        return super().batch(0, process)

    def loss(self, modules, batch, index, process):
        return super().loss(modules, batch, 0, process)


def test_the_loss_goes_down_on_a_fixed_batch(data: Path, tmp_path: Path) -> None:
    cfg = config(data, tmp_path / "run", steps=12, lr=0.2, checkpoint_every=10**6)
    inputs = resolve_inputs(cfg, TINY)
    trainer = build_trainer(cfg, inputs, tiny_sd15(0))
    fixed = FixedBatch(trainer.config, trainer.data, trainer.objective, trainer.embedding)
    accelerator = make_accelerator(cfg.out)
    loop = LoopConfig(**cfg.loop_settings(), steps=cfg.steps, lr=cfg.lr)
    result = train_loop(accelerator, fixed, loop)
    trainer.hook.remove()
    losses = result.losses
    assert len(losses) == 12
    # one token moves a random tiny UNet's loss only a little, but steadily
    assert all(np.diff(losses) < 0), losses
    assert losses[-1] < losses[0] - 2e-3, losses


def test_only_the_new_row_changes(data: Path, tmp_path: Path) -> None:
    fresh = tiny_sd15(0)
    before = {k: v.clone() for k, v in fresh["text_encoder"].state_dict().items()}
    unet_before = {k: v.clone() for k, v in fresh["unet"].state_dict().items()}
    words = init_token_ids(fresh["tokenizer"], "cat")
    key = next(k for k in before if k.endswith("token_embedding.weight"))
    table = before[key]
    init = table[words].mean(0)

    result = train_token(config(data, tmp_path / "run", steps=3), TINY, components=fresh)
    assert result.step == 3 and not result.cached
    encoder = result.text_encoder
    assert encoder is fresh["text_encoder"]
    after = encoder.state_dict()
    rows = table.shape[0]
    token_id = fresh["tokenizer"].convert_tokens_to_ids(result.token)
    assert token_id == rows and after[key].shape[0] == rows + 1
    assert torch.equal(after[key][:rows], table)  # every old row bit-identical
    assert not torch.equal(after[key][rows], init)  # the new one trained away from its init
    assert torch.equal(after[key][rows], result.embedding)
    for name, value in before.items():
        if name != key:
            assert torch.equal(after[name], value), name
    for name, value in fresh["unet"].state_dict().items():
        assert torch.equal(value, unet_before[name]), name
    # the splice is off after training: the written row alone gives the token's embedding
    ids = torch.tensor([[token_id]])
    assert not encoder.get_input_embeddings()._forward_hooks
    assert torch.equal(encoder.get_input_embeddings()(ids)[0, 0], result.embedding)


def test_resume_is_exact(data: Path, tmp_path: Path) -> None:
    full = train_token(config(data, tmp_path / "full", steps=4), TINY)
    half = config(data, tmp_path / "split", steps=2, checkpoint_every=2)
    train_token(half, TINY)
    assert (tmp_path / "split" / "checkpoint-2" / "token_state.safetensors").is_file()
    rest = config(data, tmp_path / "split", steps=4, checkpoint_every=2, resume="latest")
    resumed = train_token(rest, TINY)
    assert resumed.start_step == 2 and resumed.step == 4
    assert resumed.losses == full.losses[2:]
    assert torch.equal(resumed.embedding, full.embedding)
    token, vector = load_token(tmp_path / "split")
    assert torch.equal(vector, full.embedding)
    lines = (tmp_path / "split" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]


def test_the_same_run_is_cached(data: Path, tmp_path: Path) -> None:
    cfg = config(data, tmp_path / "run", steps=1)
    first = train_token(cfg, TINY)
    again = train_token(cfg, TINY)
    assert not first.cached and again.cached
    assert torch.equal(first.embedding, again.embedding)
    other = train_token(cfg.model_copy(update={"init_words": "dog"}), TINY)
    assert not other.cached


def test_the_file_loads_through_diffusers(data: Path, tmp_path: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    out = tmp_path / "run"
    result = train_token(config(data, out, steps=2, token="<my-cat>"), TINY)
    saved = load_file(str(out / EMBEDS_FILE))
    assert list(saved) == ["<my-cat>"] and saved["<my-cat>"].shape == (32,)
    info = json.loads((out / INFO_FILE).read_text())
    assert info["token"] == "<my-cat>" and info["init_words"] == "cat"
    assert info["init_token_ids"] and len(info["image_sha256"]) == 64
    assert info["run"]["batch_size"] == 2 and info["run"]["mask_sha256"]

    parts = tiny_sd15(0)
    pipe = StableDiffusionPipeline(
        unet=parts["unet"],
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        scheduler=DDIMScheduler(
            **parts["scheduler_config"] | {"steps_offset": 1, "clip_sample": False}
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_textual_inversion(str(out))
    ids = pipe.tokenizer("a photo of a <my-cat>", add_special_tokens=False).input_ids
    token_id = pipe.tokenizer.convert_tokens_to_ids("<my-cat>")
    assert ids[-1] == token_id
    embedded = pipe.text_encoder.get_input_embeddings()(torch.tensor([ids]))[0, -1]
    assert torch.equal(embedded, result.embedding)
    # our own loader, into another fresh tokenizer and text encoder
    token, vector = load_token(out / EMBEDS_FILE)
    fresh = tiny_sd15(0)
    new_id = add_token(fresh["tokenizer"], fresh["text_encoder"], token, vector)
    assert torch.equal(fresh["text_encoder"].get_input_embeddings().weight[new_id], vector)


def test_the_spliced_vector_reaches_the_unet_conditioning(data: Path, tmp_path: Path) -> None:
    """The trained parameter is what the prompt's token embeds to: moving it moves the
    text encoder's output at the token's position, and only through the token."""
    cfg = config(data, tmp_path / "run")
    parts = tiny_sd15(0)
    trainer = build_trainer(cfg, resolve_inputs(cfg, TINY), parts)
    encoder, tokenizer = parts["text_encoder"], parts["tokenizer"]
    prompts = ["a photo of a <animate124>", "a photo of a ox"]
    ids = tokenizer(prompts, padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        before = encoder(ids).last_hidden_state
        trainer.embedding.vector.add_(1.0)
        after = encoder(ids).last_hidden_state
    trainer.hook.remove()
    assert not torch.allclose(before[0], after[0])
    assert torch.equal(before[1], after[1])
    batch = trainer.batch(0, 0)
    assert batch.pixels.shape == (2, 3, 64, 64)
    assert all(p in [t.format("<animate124>") for t in TEMPLATES] for p in batch.prompts)
    assert (batch.input_ids == trainer.embedding.token_id).sum(dim=1).tolist() == [1, 1]


# ------------------------------------------------------------------------------------------
# Augmentations
# ------------------------------------------------------------------------------------------


def _image(seed: int = 0, size: tuple[int, int] = (40, 56)) -> torch.Tensor:
    return torch.rand(3, *size, generator=torch.Generator().manual_seed(seed))


def test_augmentations_are_deterministic_and_keep_the_shape() -> None:
    settings = AugmentSettings()
    base = base_image(_image(), None, 32)
    assert base.shape == (3, 40, 40)  # 5/4 of the training side
    a = augment_batch(base, 32, 6, torch.Generator().manual_seed(3), settings)
    b = augment_batch(base, 32, 6, torch.Generator().manual_seed(3), settings)
    c = augment_batch(base, 32, 6, torch.Generator().manual_seed(4), settings)
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a[0], a[1])  # each image its own draws


def test_identity_draw_reproduces_the_base_and_flips_mirror_it() -> None:
    settings = AugmentSettings()
    base = base_image(_image(1), None, 32)
    side = base.shape[-1]
    plain = AugmentDraw(None, (0.0, 0.0, 1.0, 1.0), False, (), False, None)
    assert torch.allclose(apply(base, plain, side, settings), base, atol=1e-5)
    flipped = AugmentDraw(None, (0.0, 0.0, 1.0, 1.0), True, (), False, None)
    assert torch.allclose(apply(base, flipped, side, settings), base.flip(-1), atol=1e-5)
    # a crop of the left half, stretched to the side: the left half's columns
    half = AugmentDraw(None, (0.0, 0.0, 0.5, 1.0), False, (), False, None)
    cropped = apply(base, half, side, settings)
    assert torch.allclose(cropped[..., 1::2], base[..., : side // 2], atol=0.3)


def test_rotation_fills_white_and_colour_steps_behave() -> None:
    base = base_image(_image(2), None, 32)
    wide = AugmentSettings(rotation_keep=1.0)
    turned = AugmentDraw(45.0, (0.0, 0.0, 1.0, 1.0), False, (), False, None)
    out = apply(base, turned, 40, wide)
    assert torch.equal(out[:, 0, 0], torch.ones(3)) and torch.equal(out[:, -1, -1], torch.ones(3))
    assert not torch.equal(out[:, 20, 20], torch.ones(3))
    image = _image(3)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(image)), image, atol=1e-5)
    assert torch.allclose(adjust(image, "hue", 0.0), image, atol=1e-5)
    assert torch.allclose(adjust(image, "hue", 1.0 / 3.0), image[[2, 0, 1]], atol=1e-4)
    desaturated = adjust(image, "saturation", 0.0)
    assert torch.allclose(desaturated, desaturated[:1].expand(3, -1, -1), atol=1e-6)
    assert torch.allclose(adjust(image, "brightness", 1.0), image)
    greyed = AugmentDraw(None, (0.0, 0.0, 1.0, 1.0), False, (), True, None)
    grey = apply(base, greyed, 40, wide)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    blurred = AugmentDraw(None, (0.0, 0.0, 1.0, 1.0), False, (), False, 2.0)
    assert apply(base, blurred, 40, wide).std() < 0.8 * base.std()


def test_draws_follow_the_release_probabilities() -> None:
    settings = AugmentSettings()
    generator = torch.Generator().manual_seed(0)
    draws = [draw(generator, settings) for _ in range(2000)]
    rate = {
        "rotation": np.mean([d.angle is not None for d in draws]),
        "jitter": np.mean([bool(d.jitter) for d in draws]),
        "grey": np.mean([d.grey for d in draws]),
        "blur": np.mean([d.sigma is not None for d in draws]),
        "flip": np.mean([d.flip for d in draws]),
    }
    expected = {"rotation": 0.75, "jitter": 0.75, "grey": 0.1, "blur": 0.1, "flip": 0.5}
    for name, value in expected.items():
        assert abs(rate[name] - value) < 0.04, (name, rate[name])
    angles = [d.angle for d in draws if d.angle is not None]
    assert max(abs(a) for a in angles) <= 10.0
    sizes = [d.crop[2] * d.crop[3] for d in draws if d.crop != (0.0, 0.0, 1.0, 1.0)]
    assert min(sizes) >= 0.85 - 1e-9 and max(sizes) <= 1.0


def test_the_mask_puts_white_outside(data: Path) -> None:
    image = _image(4, (16, 16))
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:12, 4:12] = True
    out = composite_on_white(image, mask)
    assert torch.equal(out[:, ~mask], torch.ones(3, int((~mask).sum())))
    assert torch.equal(out[:, mask], image[:, mask])
    # through the run's inputs: the base is white outside the mask's box
    inputs = resolve_inputs(config(data, data / "unused"), TINY)
    assert inputs.mask is not None and inputs.mask_source == "--mask"
    base = base_image(inputs.image, inputs.mask, 64)  # 80 x 80 of the 80 x 96 image's centre
    assert torch.equal(base[:, :12, :], torch.ones(3, 12, 80))
    assert torch.equal(base[:, :, :12], torch.ones(3, 80, 12))
    assert (base[:, 30:50, 30:50] < 0.99).any()
    sample = augment(base, 64, torch.Generator().manual_seed(0), AugmentSettings())
    assert sample.shape == (3, 64, 64)


def test_transparency_is_the_mask(tmp_path: Path) -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[8:24, 8:24, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "object.png")
    cfg = TokenTrainConfig(image=tmp_path / "object.png", init_words="box", out=tmp_path / "o")
    inputs = resolve_inputs(cfg, TINY)
    assert inputs.mask_source == "alpha"
    base = base_image(inputs.image, inputs.mask, 32, augment=False)
    assert torch.equal(base[:, 0, 0], torch.ones(3))
    assert torch.allclose(base[:, 16, 16], torch.tensor([200 / 255, 0.0, 0.0]), atol=1e-6)


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


def test_init_words_that_tokenize_to_nothing_raise() -> None:
    tokenizer = tiny_sd15(0)["tokenizer"]
    with pytest.raises(InputError, match="tokenize to nothing"):
        init_token_ids(tokenizer, " \t ")
    assert init_token_ids(tokenizer, "cat") == tokenizer("cat", add_special_tokens=False).input_ids


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image": "missing.png"}, "error: cannot read image '"),
        ({"init_words": "   "}, "error: the init words '   ' tokenize to nothing, --init-words"),
        ({"init_words": None}, "error: no init words"),
        ({"token": "a"}, "error: the token 'a' is already in the tokenizer's vocabulary"),
        ({"resolution": "60"}, "error: must be a multiple of 8, got 60, --resolution"),
    ],
)
def test_bad_input_is_one_line_errors(
    data: Path, tmp_path: Path, capsys, changes: dict, message: str
) -> None:
    options = {
        "image": str(data / "image.png"),
        "init_words": "cat",
        "out": str(tmp_path / "out"),
        "resolution": "64",
        "batch_size": "1",
        "steps": "1",
        "weights": "tiny",
    } | changes
    argv = ["train", "animate124-token", "-q"]
    for name, value in options.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", value]
    if changes.get("image") == "missing.png":
        argv[argv.index("missing.png")] = str(tmp_path / "missing.png")
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(message) and "\n" not in error, error
    assert not (tmp_path / "out" / EMBEDS_FILE).exists()


def test_the_cli_trains_a_token(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = [
        "train",
        "animate124-token",
        "--image",
        str(data / "image.png"),
        "--mask",
        str(data / "mask.png"),
        "--init-words",
        "cat",
        "--out",
        str(out),
        "--resolution",
        "64",
        "--batch-size",
        "1",
        "--steps",
        "2",
        "--weights",
        "tiny",
    ]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().err
    token, vector = load_token(out)
    assert token == "<animate124>" and vector.shape == (32,)
    assert main(argv) == 0 and "cached" in capsys.readouterr().err


def test_the_options_are_the_configs_flagged_fields() -> None:
    import typer

    from anima.cli_train import train_app
    from anima.training import field_flag

    command = typer.main.get_command(train_app).commands["animate124-token"]  # type: ignore[attr-defined]
    params = {param.name: param for param in command.params}
    for name, info in TokenTrainConfig.model_fields.items():
        if field_flag(TokenTrainConfig, name) is None:
            assert name not in params or name == "spec", name
        elif info.is_required():
            assert params[name].required, name
        else:
            assert params[name].default == info.default, name
    assert {"spec", "image", "mask", "init_words", "steps", "lr", "batch_size"} <= set(params)
    assert {"resolution", "weights", "resume", "token"} <= set(params)
    defaults = TokenTrainConfig(out=Path("x"))
    assert (defaults.steps, defaults.lr, defaults.batch_size, defaults.resolution) == (
        3000,
        1e-4,
        16,
        512,
    )
