"""Tiny random models of the real architectures, built offline from config (``--weights tiny``).

They are the smoke test of every pipeline on any machine: the output is noise, but every stage
runs with the same classes, tensor layouts and conditioning as the full-size models. Sizes are
the smallest the architectures allow (GroupNorm needs multiples of 32 channels); the VAE keeps
SVD's 8x downsampling so control images and latents line up exactly as at full size. The CLIP
vision tower keeps SVD's 224 px input (patch 32).
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from anima.models.seeding import seeded
from anima.models.svd import (
    clip_feature_extractor,
    svd_scheduler,
)
from anima.models.svd_controlnet import SVDControlNetModel


def tiny_svd_unet(seed: int = 0, block_out_channels: tuple[int, ...] = (32, 64)):
    """A two-level `UNetSpatioTemporalConditionModel` (cross-attention down, plain down)."""
    with seeded(seed):
        levels = len(block_out_channels)
        return UNetSpatioTemporalConditionModel(
            sample_size=8,
            in_channels=8,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal",) * (levels - 1)
            + ("DownBlockSpatioTemporal",),
            up_block_types=("UpBlockSpatioTemporal",)
            + ("CrossAttnUpBlockSpatioTemporal",) * (levels - 1),
            block_out_channels=block_out_channels,
            addition_time_embed_dim=32,
            projection_class_embeddings_input_dim=96,
            layers_per_block=2,
            cross_attention_dim=32,
            num_attention_heads=tuple(c // 16 for c in block_out_channels),
            num_frames=16,
        )


def tiny_svd_vae(
    seed: int = 0, block_out_channels: tuple[int, ...] = (32, 32, 32, 32)
) -> AutoencoderKLTemporalDecoder:
    """An `AutoencoderKLTemporalDecoder` with one level per entry of ``block_out_channels``
    (n levels downsample 2^(n-1)x). The default, four 32-channel levels, is 8x like SVD's VAE;
    the toy models use three (4x), see `anima.world.svd_base.train`."""
    with seeded(seed):
        return AutoencoderKLTemporalDecoder(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=1,
            latent_channels=4,
            sample_size=64,
        )


def tiny_clip_image_encoder(seed: int = 0, projection_dim: int = 32):
    with seeded(seed):
        config = CLIPVisionConfig(
            hidden_size=32,
            projection_dim=projection_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=224,
            patch_size=32,
        )
        return CLIPVisionModelWithProjection(config)


def tiny_svd_components(seed: int = 0) -> dict:
    """The components of a `StableVideoDiffusionPipeline`, tiny and random."""
    return {
        "vae": tiny_svd_vae(seed),
        "image_encoder": tiny_clip_image_encoder(seed),
        "unet": tiny_svd_unet(seed),
        "scheduler": svd_scheduler(),
        "feature_extractor": clip_feature_extractor(),
    }


def tiny_controlnet(
    unet: UNetSpatioTemporalConditionModel, seed: int = 0, random_output: bool = False
) -> SVDControlNetModel:
    """A ControlNet made from ``unet`` (encoder copied). Its zero convs stay zero, as training
    starts, unless ``random_output``: then they are small random values, so that a smoke test's
    video depends on the controls like a trained model's."""
    with seeded(seed):
        controlnet = SVDControlNetModel.from_unet(unet)
        if random_output:
            zero_convs = [
                controlnet.controlnet_cond_embedding.conv_out,
                *controlnet.controlnet_down_blocks,
                controlnet.controlnet_mid_block,
            ]
            with torch.no_grad():
                for conv in zero_convs:
                    conv.weight.normal_(std=0.02)
        return controlnet
