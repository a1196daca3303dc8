"""Tiny random SD1.5-family models built offline from config: the X-Dyna stack.

Same classes as the full-size release: `UNet2DConditionModel` turned into a `UNetMotionModel`
by a `MotionAdapter` (AnimateDiff), `AutoencoderKL` (8x like SD's), `CLIPTextModel` with a
`CLIPTokenizer`, `ControlNetModel`s made from the UNet, `DDIMScheduler`, and an IP-Adapter-Plus
(`tiny_ip_adapter_plus`: a `CLIPVisionModelWithProjection` and a random checkpoint in
IP-Adapter's format, loaded by diffusers). The tokenizer's
vocabulary is CLIP's byte-level alphabet without merges (every byte is a token), written to a
temporary folder that is removed once it is loaded, so text runs through the real tokenizer code
with no download and nothing left behind.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from anima.models.ip_adapter import (
    IMAGE_PROJ,
    IP_ADAPTER,
    IPAdapterState,
    ip_attention_shapes,
    load_into_unet,
    resampler_shapes,
)
from anima.models.seeding import seeded
from anima.models.svd import clip_feature_extractor
from anima.models.tiny import tiny_clip_image_encoder

#: X-Dyna's sampler (the authors' release): DDIM with linear betas 0.00085-0.012.
XDYNA_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

TINY_CROSS_ATTENTION_DIM = 32
TINY_BLOCK_CHANNELS = (32, 64)
#: 256 bytes, 256 end-of-word bytes, start and end of text (`tiny_tokenizer`).
TINY_VOCAB_SIZE = 514
#: Image tokens of the tiny IP-Adapter-Plus resampler (ip-adapter-plus_sd15 makes 16).
TINY_IP_TOKENS = 16


def tiny_sd_unet(seed: int = 0, block_out_channels: tuple[int, ...] = TINY_BLOCK_CHANNELS):
    """A two-level SD-style `UNet2DConditionModel` (cross-attention down, plain down)."""
    levels = len(block_out_channels)
    with seeded(seed):
        return UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
            block_out_channels=block_out_channels,
            layers_per_block=1,
            cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
            attention_head_dim=8,
            norm_num_groups=32,
        )


def tiny_motion_adapter(
    seed: int = 0, block_out_channels: tuple[int, ...] = TINY_BLOCK_CHANNELS
) -> MotionAdapter:
    """AnimateDiff motion modules for `tiny_sd_unet` (one temporal transformer a layer,
    positional encoding up to 32 frames, no mid-block module as in AnimateDiff v1)."""
    with seeded(seed):
        return MotionAdapter(
            block_out_channels=block_out_channels,
            motion_layers_per_block=1,
            motion_num_attention_heads=2,
            motion_norm_num_groups=32,
            motion_max_seq_length=32,
            use_motion_mid_block=False,
        )


def motion_unet(unet: UNet2DConditionModel, adapter: MotionAdapter) -> UNetMotionModel:
    """``UNetMotionModel.from_unet2d`` without its warning about the dtype cast it makes to
    the UNet's own dtype (a no-op for us)."""
    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return UNetMotionModel.from_unet2d(unet, adapter)
    finally:
        diffusers_logging.set_verbosity(previous)


def tiny_motion_unet(seed: int = 0) -> UNetMotionModel:
    """`tiny_sd_unet` with `tiny_motion_adapter`'s temporal layers."""
    return motion_unet(tiny_sd_unet(seed), tiny_motion_adapter(seed + 1))


def tiny_sd_vae(seed: int = 0) -> AutoencoderKL:
    with seeded(seed):
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(32, 32, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            sample_size=64,
        )


def tiny_text_encoder(seed: int = 0) -> CLIPTextModel:
    with seeded(seed):
        config = CLIPTextConfig(
            vocab_size=TINY_VOCAB_SIZE,
            hidden_size=TINY_CROSS_ATTENTION_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=TINY_VOCAB_SIZE - 2,  # the tokenizer's <|startoftext|>
            eos_token_id=TINY_VOCAB_SIZE - 1,  # and <|endoftext|> (also its padding)
            pad_token_id=TINY_VOCAB_SIZE - 1,
        )
        return CLIPTextModel(config)


def _byte_alphabet() -> list[str]:
    """CLIP's printable stand-ins for the 256 byte values (GPT-2's byte-to-unicode table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = 0
    alphabet = {}
    for byte in range(256):
        if byte in printable:
            alphabet[byte] = chr(byte)
        else:
            alphabet[byte] = chr(256 + extra)
            extra += 1
    return [alphabet[b] for b in range(256)]


def tiny_tokenizer(folder: Path | None = None) -> CLIPTokenizer:
    """A `CLIPTokenizer` over the byte alphabet (bytes and end-of-word bytes, no merges).

    The tokenizer reads its vocabulary from files: they are written to ``folder`` when given
    (and stay there), else to a temporary folder that is removed once the tokenizer is loaded
    (also when loading fails or is interrupted)."""
    if folder is not None:
        return _tokenizer_from(Path(folder))
    with tempfile.TemporaryDirectory(prefix="anima-tokenizer-") as tmp:
        return _tokenizer_from(Path(tmp))


def _tokenizer_from(folder: Path) -> CLIPTokenizer:
    """Write the byte vocabulary and empty merges into ``folder`` and load them."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = _byte_alphabet()
    vocab = {token: i for i, token in enumerate(tokens + [t + "</w>" for t in tokens])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77
    )


def tiny_controlnet_2d(
    unet: UNet2DConditionModel, conditioning_channels: int = 3, seed: int = 0
) -> ControlNetModel:
    """A `ControlNetModel` made from ``unet`` (encoder copied, zero convs zero) with a small
    8x conditioning stem reading ``conditioning_channels`` channels."""
    with seeded(seed):
        return ControlNetModel.from_unet(
            unet,
            conditioning_embedding_out_channels=(8, 16, 32, 32),
            conditioning_channels=conditioning_channels,
        )


def xdyna_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**XDYNA_SCHEDULER_CONFIG)


def randomise_zero_convs(controlnet: ControlNetModel, std: float = 0.02, seed: int = 0) -> None:
    """Give a ControlNet's zero convs small random weights (a smoke test's output then depends
    on the condition as a trained model's would)."""
    with seeded(seed), torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.normal_(std=std)
        controlnet.controlnet_cond_embedding.conv_out.weight.normal_(std=std)


def _random_like(key: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """A random stand-in of a trained tensor: LayerNorm weights near 1 and biases near 0,
    matrices with 1/sqrt(fan-in) scale, latent queries standard normal."""
    noise = torch.randn(shape, generator=generator)
    if key == "latents":
        return noise
    if len(shape) == 1:
        return (1.0 if key.endswith("weight") else 0.0) + 0.1 * noise
    return noise * shape[-1] ** -0.5


def tiny_ip_adapter_state(unet: Any, image_features: int, seed: int = 0) -> IPAdapterState:
    """A random IP-Adapter-Plus checkpoint for ``unet`` in IP-Adapter's format: a resampler of
    one 64-channel head and `TINY_IP_TOKENS` queries reading ``image_features``-channel CLIP
    features, and random (not zero) ``to_k_ip``/``to_v_ip``, so that image tokens matter."""
    width = unet.config.cross_attention_dim
    shapes = {
        IMAGE_PROJ: resampler_shapes(image_features, width, width, 1, TINY_IP_TOKENS),
        IP_ADAPTER: ip_attention_shapes(unet),
    }
    generator = torch.Generator().manual_seed(seed)
    return {
        part: {key: _random_like(key, meta.shape, generator) for key, meta in keys.items()}
        for part, keys in shapes.items()
    }


def tiny_ip_adapter_plus(unet: Any, seed: int = 0) -> dict[str, Any]:
    """A random IP-Adapter-Plus loaded into ``unet`` (diffusers' loader, as for real weights);
    returns the ``image_encoder`` (tiny CLIP vision model) and ``feature_extractor`` (CLIP's
    224 px preprocessing) pipeline components that go with it."""
    encoder = tiny_clip_image_encoder(seed)
    load_into_unet(unet, tiny_ip_adapter_state(unet, encoder.config.hidden_size, seed + 1))
    return {"image_encoder": encoder, "feature_extractor": clip_feature_extractor()}
