"""`anima weights convert xdyna`: a fake X-Dyna release made from tiny models, key for key."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, MotionAdapter, StableDiffusionPipeline

from anima.cli import main
from anima.methods.xdyna.adapter import DynamicsAdapter
from anima.methods.xdyna.convert import release_ip_names
from anima.methods.xdyna.loading import load_xdyna_components
from anima.methods.xdyna.pipeline import XDynaPipeline
from anima.models.ip_adapter import IMAGE_PROJ, IP_ADAPTER, ip_processors, read_ip_adapter
from anima.models.seeding import seeded
from anima.models.tiny import tiny_clip_image_encoder
from anima.models.tiny_sd import (
    TINY_BLOCK_CHANNELS,
    tiny_ip_adapter_state,
    tiny_sd_unet,
    tiny_sd_vae,
    tiny_text_encoder,
    tiny_tokenizer,
    xdyna_scheduler,
)
from anima.weights import Weights

ORIGINAL_NAMES = (  # diffusers MotionAdapter -> AnimateDiff, inside a transformer block
    ("attn1.", "attention_blocks.0."),
    ("attn2.", "attention_blocks.1."),
    ("norm1.", "norms.0."),
    ("norm2.", "norms.1."),
    ("norm3.", "ff_norm."),
)
IP_KEY = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_ip.weight"


def randomised(model, seed: int):
    """``model`` with every parameter random (so no tensor is zero or equal to another)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def sinusoid(length: int, dim: int) -> torch.Tensor:
    """AnimateDiff's ``PositionalEncoding.pe``: sin on even, cos on odd channels."""
    position = torch.arange(length).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(position * frequency)
    pe[0, :, 1::2] = torch.cos(position * frequency)
    return pe


def release_motion_keys(motion: MotionAdapter) -> dict[str, torch.Tensor]:
    """The motion modules under AnimateDiff's names, both attentions' ``pos_encoder.pe``."""
    out = {}
    for key, value in motion.state_dict().items():
        head, rest = re.match(r"(\w+\.\d+\.motion_modules\.\d+)\.(.+)", key).groups()
        if rest.endswith("pos_embed.pe"):
            block = rest.removesuffix("pos_embed.pe")
            for attention in (0, 1):
                name = f"{head}.temporal_transformer.{block}attention_blocks.{attention}"
                out[f"{name}.pos_encoder.pe"] = sinusoid(value.shape[1], value.shape[2])
            continue
        for ours, theirs in ORIGINAL_NAMES:
            rest = re.sub(rf"(transformer_blocks\.\d+\.){re.escape(ours)}", rf"\g<1>{theirs}", rest)
        out[f"{head}.temporal_transformer.{rest}"] = value.clone()
    return out


def release_adapter_keys(adapter: DynamicsAdapter) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in adapter.state_dict().items():
        layer, proj, param = re.fullmatch(
            r"weights\.layers\.(.+)\.(to_q|to_out)\.(\w+)", key
        ).groups()
        out[f"{layer.replace('-', '.')}.{proj}_ff.{param}"] = value.clone()
    return out


class Release:
    """Tiny models and the fake release checkpoints made from them (in memory and on disk)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.unet = tiny_sd_unet(seed=0)
        StableDiffusionPipeline(
            vae=tiny_sd_vae(),
            text_encoder=tiny_text_encoder(),
            tokenizer=tiny_tokenizer(),
            unet=self.unet,
            scheduler=xdyna_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        ).save_pretrained(root / "weights" / "sd15")
        with seeded(1):
            self.motion = MotionAdapter(
                block_out_channels=TINY_BLOCK_CHANNELS,
                motion_layers_per_block=self.unet.config.layers_per_block,
                motion_num_attention_heads=8,
                motion_norm_num_groups=32,
                motion_max_seq_length=24,
                use_motion_mid_block=False,
            )
        randomised(self.motion, 1)
        self.adapter = randomised(DynamicsAdapter.from_unet(self.unet), 2)
        self.pose = randomised(ControlNetModel.from_unet(self.unet, conditioning_channels=3), 3)
        self.face = randomised(ControlNetModel.from_unet(self.unet, conditioning_channels=6), 4)
        # IP-Adapter's own checkpoint (image_proj + its to_k_ip/to_v_ip), and the release UNet's
        # to_k_ip/to_v_ip (other values: the ones the release runs)
        self.ip_adapter = tiny_ip_adapter_state(self.unet, image_features=32, seed=5)
        ip_names = release_ip_names(self.unet)
        self.ip_unet = {
            ip_names[key]: torch.randn(value.shape, generator=torch.Generator().manual_seed(6))
            for key, value in self.ip_adapter[IP_ADAPTER].items()
        }
        self.unet_state = {
            **{k: v.clone() for k, v in self.unet.state_dict().items()},
            **release_motion_keys(self.motion),
            **release_adapter_keys(self.adapter),
            **self.ip_unet,
        }
        self.pose_state = {k: v.clone() for k, v in self.pose.state_dict().items()}
        self.face_state = {k: v.clone() for k, v in self.face.state_dict().items()}

    def save(self, name: str, state: dict[str, torch.Tensor], prefix: bool = True) -> Path:
        """A ``.ckpt`` pickle like the release's: ``{"state_dict": {"module." + key: ...}}``."""
        path = self.root / name
        if prefix:
            torch.save(
                {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 5}, path
            )
        else:
            torch.save(state, path)
        return path

    def convert(self, out: Path, *, unet=None, pose=None, face=None, ip=None, pickle=True) -> int:
        argv = ["weights", "convert", "xdyna", "--sd15", str(self.root / "weights" / "sd15")]
        argv += ["--out", str(out)]
        options = (
            ("--unet", unet),
            ("--controlnet", pose),
            ("--face-controlnet", face),
            ("--ip-adapter", ip),
        )
        for option, path in options:
            if path is not None:
                argv += [option, str(path)]
        return main(argv + (["--allow-pickle"] if pickle else []))


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Release:
    return Release(tmp_path_factory.mktemp("xdyna-release"))


def assert_same(model, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_release_converts_key_for_key_and_loads(release, capsys) -> None:
    root = release.root / "weights"
    unet = release.save("unet-checkpoint-epoch-5.ckpt", release.unet_state)
    pose = release.save("controlnet-checkpoint-epoch-5.ckpt", release.pose_state)
    face = release.save("controlnet-face-checkpoint-epoch-2.ckpt", release.face_state, False)
    assert release.convert(root, unet=unet, pose=pose, face=face) == 0
    printed = capsys.readouterr().out
    spatial = len(release.unet.state_dict())
    adapter = len(release.adapter.state_dict())
    motion = sum(not k.endswith(".pe") for k in release.motion.state_dict())
    assert f"{adapter} Dynamics-Adapter and {motion} motion-module tensors" in printed
    assert f"{spatial} SD1.5 UNet keys checked" in printed
    assert "8 IP-Adapter keys checked" in printed and "pass --ip-adapter" in printed
    assert not (root / "ip-adapter").exists()

    loaded = MotionAdapter.from_pretrained(root / "motion-adapter")
    assert loaded.config.motion_max_seq_length == 24 and not loaded.config.use_motion_mid_block
    assert_same(loaded, release.motion.state_dict())
    assert_same(
        DynamicsAdapter.from_pretrained(root / "xdyna/adapter"), release.adapter.state_dict()
    )
    pose_loaded = ControlNetModel.from_pretrained(root / "xdyna/pose_controlnet")
    face_loaded = ControlNetModel.from_pretrained(root / "xdyna/face_controlnet")
    assert face_loaded.config.conditioning_channels == 6
    assert_same(pose_loaded, release.pose_state)
    assert_same(face_loaded, release.face_state)
    assert not list(root.glob("**/*.bin")) and not list(root.glob("**/*tmp*"))

    components = load_xdyna_components(Weights.resolve(str(root)), torch.float32)
    assert components["adapter"].config.layers == release.adapter.config.layers
    assert components["face_controlnet"] is not None
    assert components["image_encoder"] is None


def test_release_ip_adapter_keys_convert_with_the_resampler_and_load(
    release, tmp_path, capsys
) -> None:
    """--ip-adapter: IP-Adapter's image_proj with the release UNet's to_k_ip/to_v_ip, which
    diffusers then loads into the UNet as they are."""
    root = tmp_path / "weights"
    root.mkdir()
    (root / "sd15").symlink_to(release.root / "weights" / "sd15")
    unet = release.save("unet-ip.ckpt", release.unet_state)
    pose = release.save("pose-ip.ckpt", release.pose_state)
    ip = tmp_path / "ip-adapter-plus_sd15.bin"
    torch.save(release.ip_adapter, ip)
    assert release.convert(root, unet=unet, pose=pose, ip=ip) == 0
    printed = capsys.readouterr().out
    assert "8 IP-Adapter keys written" in printed
    assert "to_k_ip/to_v_ip tensors from the UNet checkpoint" in printed
    written = read_ip_adapter(root / "ip-adapter" / "ip-adapter-plus_sd15.safetensors", False)
    names = release_ip_names(release.unet)
    assert written[IP_ADAPTER].keys() == names.keys()
    for key, release_key in names.items():
        assert torch.equal(written[IP_ADAPTER][key], release.ip_unet[release_key])
    assert_same_dict(written[IMAGE_PROJ], release.ip_adapter[IMAGE_PROJ])

    tiny_clip_image_encoder(seed=0).save_pretrained(root / "ip-adapter" / "image_encoder")
    components = load_xdyna_components(Weights.resolve(str(root)), torch.float32)
    assert components["image_encoder"] is not None
    first = ip_processors(components["unet"])[0]
    attn2 = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    assert torch.equal(first.to_k_ip[0].weight, release.ip_unet[f"{attn2}.to_k_ip.weight"])
    resampler = components["unet"].encoder_hid_proj.image_projection_layers[0]
    assert torch.equal(resampler.latents, release.ip_adapter[IMAGE_PROJ]["latents"])
    assert XDynaPipeline(**components).has_ip_adapter


def test_ip_adapter_alone_converts_with_its_own_attention_weights(
    release, tmp_path, capsys
) -> None:
    ip = tmp_path / "ip-adapter-plus_sd15.bin"
    torch.save(release.ip_adapter, ip)
    assert release.convert(tmp_path / "out", ip=ip) == 0
    assert "to_k_ip/to_v_ip tensors from ip-adapter-plus_sd15.bin" in capsys.readouterr().out
    written = read_ip_adapter(tmp_path / "out/ip-adapter/ip-adapter-plus_sd15.safetensors", False)
    assert_same_dict(written[IP_ADAPTER], release.ip_adapter[IP_ADAPTER])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ip-adapter"]


def assert_same_dict(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key], value) for key, value in expected.items())


def test_trained_parameters_only_convert(release, tmp_path, capsys) -> None:
    """A UNet checkpoint without SD1.5's keys, IP-Adapter keys or position encodings."""
    spatial = set(release.unet.state_dict())
    state = {
        k: v
        for k, v in release.unet_state.items()
        if k not in spatial and "_ip." not in k and not k.endswith(".pe")
    }
    unet = release.save("trained.ckpt", state, prefix=False)
    assert release.convert(tmp_path / "out", unet=unet) == 0
    assert "0 position encodings checked), 0 SD1.5 UNet keys" in capsys.readouterr().out
    loaded = MotionAdapter.from_pretrained(tmp_path / "out" / "motion-adapter")
    assert_same(loaded, release.motion.state_dict())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["motion-adapter", "xdyna"]
    assert [p.name for p in (tmp_path / "out" / "xdyna").iterdir()] == ["adapter"]


def error_of(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_pickle_needs_allow_pickle(release, tmp_path, capsys) -> None:
    pose = release.save("pose.ckpt", release.pose_state)
    assert release.convert(tmp_path / "out", pose=pose, pickle=False) == 2
    err = error_of(capsys)
    assert "pose.ckpt" in err and "--allow-pickle" in err
    assert not (tmp_path / "out").exists()


def test_nothing_to_convert_is_an_input_error(release, tmp_path, capsys) -> None:
    assert release.convert(tmp_path / "out") == 2
    assert "nothing to convert" in error_of(capsys)


def broken(state: dict[str, torch.Tensor], key: str, new_key: str | None = None, value=None):
    out = dict(state)
    tensor = out.pop(key)
    if new_key is not None:
        out[new_key] = tensor if value is None else value
    return out


ADAPTER_KEY = "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q_ff.weight"
MOTION_KEY = "up_blocks.1.motion_modules.1.temporal_transformer.transformer_blocks.0.ff_norm.bias"
PE_KEY = (
    "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0."
    "attention_blocks.1.pos_encoder.pe"
)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            (ADAPTER_KEY, ADAPTER_KEY.replace("to_q_ff", "to_q_lora")),
            "unknown key " + ADAPTER_KEY.replace("to_q_ff", "to_q_lora"),
        ),
        ((ADAPTER_KEY,), "missing key " + ADAPTER_KEY),
        ((MOTION_KEY,), "missing key " + MOTION_KEY),
        (
            ("mid_block.resnets.0.conv1.weight", "mid_block.resnets.0.conv9.weight"),
            "unknown key mid_block.resnets.0.conv9.weight",
        ),
        ((MOTION_KEY, MOTION_KEY, torch.zeros(7)), f"{MOTION_KEY} has shape (7,), expected (32,)"),
        (
            (PE_KEY, PE_KEY, sinusoid(24, 64).flip(1)),
            f"{PE_KEY} is not the sinusoidal position encoding",
        ),
        (
            (PE_KEY, PE_KEY, sinusoid(32, 64)),
            f"{PE_KEY} has shape (1, 32, 64), expected (1, 24, 64)",
        ),
        ((IP_KEY, IP_KEY, torch.zeros(64, 32)), f"{IP_KEY} has shape (64, 32), expected (32, 32)"),
        ((IP_KEY.replace("to_k", "to_v"),), "missing key " + IP_KEY.replace("to_k", "to_v")),
        (
            (
                "up_blocks.1.motion_modules.1.temporal_transformer.norm.bias",
                "up_blocks.1.motion_modules.3.temporal_transformer.norm.bias",
            ),
            "4 motion modules in up_blocks.1, expected 2",
        ),
    ],
)
def test_bad_unet_checkpoint_names_the_key_and_writes_nothing(
    release, tmp_path, capsys, change, message
) -> None:
    unet = release.save("unet.ckpt", broken(release.unet_state, *change))
    pose = release.save("pose.ckpt", release.pose_state)
    out = tmp_path / "out"
    assert release.convert(out, unet=unet, pose=pose) == 2
    err = error_of(capsys)
    assert message in err and "unet.ckpt" in err
    assert not out.exists()


def test_bad_controlnet_shape_writes_nothing(release, tmp_path, capsys) -> None:
    unet = release.save("unet.ckpt", release.unet_state)
    key = "controlnet_cond_embedding.conv_in.weight"  # a 3-channel stem in the face checkpoint
    face = release.save("face.ckpt", {**release.face_state, key: release.pose_state[key]})
    out = tmp_path / "out"
    assert release.convert(out, unet=unet, face=face) == 2
    err = error_of(capsys)
    assert (
        f"face ControlNet checkpoint: {key} has shape (16, 3, 3, 3), expected (16, 6, 3, 3)" in err
    )
    assert not out.exists()
