"""AnyI2V's optional personalised SD1.5 checkpoint (``DIR/anyi2v/personalized.safetensors``):
SD1.5's own weights when it is absent, a one-line error for a file without a UNet, and what
``anima weights check anyi2v`` says. Loading a real original-layout file is not tested here: the
installed diffusers has no diffusers-to-original converter to build a tiny one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from anima.cli import main
from anima.errors import InputError
from anima.methods.anyi2v.loading import (
    load_components,
    tiny_motion_adapter_for_unet,
    tiny_unet2d,
)
from anima.models.tiny_sd import tiny_sd_vae, tiny_text_encoder, tiny_tokenizer
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_weights(root: Path) -> Path:
    """A weights directory with a tiny SD1.5 (diffusers layout) and motion adapter."""
    sd = root / "sd15"
    tiny_unet2d(0).save_pretrained(sd / "unet")
    tiny_sd_vae(0).save_pretrained(sd / "vae")
    tiny_text_encoder(0).save_pretrained(sd / "text_encoder")
    tiny_tokenizer().save_pretrained(sd / "tokenizer")
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    tiny_motion_adapter_for_unet(1).save_pretrained(root / "motion-adapter")
    return root


def test_without_the_file_the_unet_is_sd15s(tmp_path: Path) -> None:
    components = load_components(Weights(root=tiny_weights(tmp_path)), torch.float32)
    expected = tiny_unet2d(0).state_dict()
    got = components["unet"].state_dict()
    query = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    for key in ("conv_in.weight", query):
        assert torch.equal(got[key], expected[key])


def test_a_file_without_a_unet_is_one_line_naming_it(tmp_path: Path) -> None:
    root = tiny_weights(tmp_path)
    (root / "anyi2v").mkdir()
    file = root / "anyi2v" / "personalized.safetensors"
    save_file({"first_stage_model.junk": torch.zeros(2)}, file)
    with pytest.raises(InputError, match="has no UNet") as error:
        load_components(Weights(root=root), torch.float32)
    assert str(file) in str(error.value) and "\n" not in str(error.value)


def test_weights_check_says_whether_the_file_is_there(tmp_path: Path, capsys) -> None:
    for sub, name in (("sd15", "model_index.json"), ("motion-adapter", "config.json")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / name).write_text("{}")
    argv = ["weights", "check", "anyi2v", "--weights", str(tmp_path)]
    assert main(argv) == 0
    assert "personalised checkpoint (anyi2v/personalized.safetensors): absent" in (
        capsys.readouterr().out
    )
    (tmp_path / "anyi2v").mkdir()
    save_file({"x": torch.zeros(1)}, tmp_path / "anyi2v" / "personalized.safetensors")
    assert main(argv) == 0
    assert "personalised checkpoint (anyi2v/personalized.safetensors): present" in (
        capsys.readouterr().out
    )
