"""Tiny random SDXL models built offline from config (docs/architecture.md, "Models and weights").

Same classes and the same block layout as SDXL base: a `UNet2DConditionModel` with three levels
(a plain down block, then two cross-attention ones; two cross-attention up blocks, then a plain
one) whose added conditioning is ``addition_embed_type = "text_time"`` (the pooled text
embedding of the second text encoder plus the six size / crop numbers, each embedded with
``addition_time_embed_dim`` sinusoids), two CLIP text encoders (the second a
`CLIPTextModelWithProjection`, whose projected pooled output is the added text embedding) whose
penultimate hidden states are concatenated into the cross-attention context, and SD's 8x
`AutoencoderKL`. The VAE and tokenizers are `anima.models.tiny_sd`'s.
"""

from __future__ import annotations

from typing import Any

from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from anima.models.seeding import seeded
from anima.models.tiny_sd import (
    TINY_CROSS_ATTENTION_DIM,
    TINY_VOCAB_SIZE,
    tiny_sd_vae,
    tiny_text_encoder,
    tiny_tokenizer,
)

#: Channels of the tiny SDXL UNet's three levels (SDXL: 320, 640, 1280).
TINY_SDXL_BLOCK_CHANNELS = (32, 64, 64)
#: Width of the second text encoder and of its projection (SDXL: 1280 and 1280).
TINY_TEXT_ENCODER_2_DIM = 32
#: Sinusoid channels per size / crop number (SDXL: 256).
TINY_ADDITION_TIME_EMBED_DIM = 8
#: SDXL's six added time ids: original size (2), crop top-left (2), target size (2).
TIME_IDS = 6


def tiny_sdxl_unet(
    seed: int = 0, block_out_channels: tuple[int, ...] = TINY_SDXL_BLOCK_CHANNELS
) -> UNet2DConditionModel:
    """An SDXL-style `UNet2DConditionModel`: levels as SDXL's (``up_blocks[0]`` and ``[1]``
    with attentions, ``up_blocks[2]`` without), "text_time" added conditioning, cross-attention
    over both text encoders' widths."""
    levels = len(block_out_channels)
    with seeded(seed):
        return UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
            block_out_channels=block_out_channels,
            layers_per_block=1,
            transformer_layers_per_block=1,
            cross_attention_dim=TINY_CROSS_ATTENTION_DIM + TINY_TEXT_ENCODER_2_DIM,
            attention_head_dim=8,
            norm_num_groups=32,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=TINY_ADDITION_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=(
                TINY_TEXT_ENCODER_2_DIM + TIME_IDS * TINY_ADDITION_TIME_EMBED_DIM
            ),
        )


def tiny_text_encoder_2(seed: int = 0) -> CLIPTextModelWithProjection:
    """SDXL's second text encoder in miniature: a `CLIPTextModelWithProjection` over the tiny
    byte vocabulary (`anima.models.tiny_sd.tiny_tokenizer`)."""
    with seeded(seed):
        config = CLIPTextConfig(
            vocab_size=TINY_VOCAB_SIZE,
            hidden_size=TINY_TEXT_ENCODER_2_DIM,
            intermediate_size=37,
            projection_dim=TINY_TEXT_ENCODER_2_DIM,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=TINY_VOCAB_SIZE - 2,
            eos_token_id=TINY_VOCAB_SIZE - 1,
            pad_token_id=TINY_VOCAB_SIZE - 1,
        )
        return CLIPTextModelWithProjection(config)


def tiny_sdxl_components(seed: int = 0) -> dict[str, Any]:
    """Tiny random SDXL parts in eval mode: ``unet``, ``vae``, ``text_encoder``,
    ``text_encoder_2``, ``tokenizer``, ``tokenizer_2`` (no scheduler: callers choose it)."""
    return {
        "unet": tiny_sdxl_unet(seed).eval(),
        "vae": tiny_sd_vae(seed).eval(),
        "text_encoder": tiny_text_encoder(seed).eval(),
        "text_encoder_2": tiny_text_encoder_2(seed + 1).eval(),
        "tokenizer": tiny_tokenizer(),
        "tokenizer_2": tiny_tokenizer(),
    }
