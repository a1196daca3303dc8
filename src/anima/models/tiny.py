"""Tiny random models of the real architectures, built offline from config (``--weights tiny``).

They are the smoke test of every pipeline on any machine: the output is noise, but every stage
runs with the same classes, tensor layouts and conditioning as the full-size models. Sizes are
the smallest the architectures allow (GroupNorm needs multiples of 32 channels); the VAE keeps
SVD's 8x downsampling so control images and latents line up exactly as at full size. The CLIP
vision tower keeps SVD's 224 px input (patch 32).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

try:  # transformers >= 5 names the PIL backend (torchvision is never installed with anima)
    from transformers import CLIPImageProcessorPil as CLIPProcessor
except ImportError:  # pragma: no cover - transformers 4
    from transformers import CLIPImageProcessor as CLIPProcessor

from anima.models.svd_controlnet import SVDControlNetModel

#: SVD img2vid(-xt)'s released scheduler config (EDM sigmas, v-prediction, Karras spacing).
SVD_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "use_karras_sigmas": True,
}

#: The SVD img2vid-xt UNet config (for full-size benchmarks with random weights).
SVD_XT_UNET_CONFIG = {
    "sample_size": 96,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    ),
    "up_block_types": (
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    ),
    "block_out_channels": (320, 640, 1280, 1280),
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1,
    "num_attention_heads": (5, 10, 20, 20),
    "num_frames": 25,
}


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw from torch's global generator seeded with ``seed``, restoring the caller's state
    afterwards (building a tiny model never changes the user's random stream)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


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


def clip_feature_extractor() -> CLIPProcessor:
    """SVD's image processor settings (224 px, CLIP mean/std)."""
    return CLIPProcessor(
        crop_size={"height": 224, "width": 224},
        size={"shortest_edge": 224},
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )


def vae_scale_factor(vae: AutoencoderKLTemporalDecoder) -> int:
    """How many pixels one latent pixel covers (diffusers' ``vae_scale_factor``)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


#: SVD's ControlNet stem channels; the stem has one stride-2 stage fewer than entries.
STEM_CHANNELS = (16, 32, 96, 256)


def stem_channels(scale: int) -> tuple[int, ...]:
    """ControlNet stem channels that downsample control images by ``scale`` (a power of two,
    at most 8), SVD's stem truncated: 8 -> (16, 32, 96, 256), 4 -> (16, 32, 96)."""
    stages = scale.bit_length()
    if scale < 1 or scale & (scale - 1) or stages > len(STEM_CHANNELS):
        raise ValueError(f"VAE scale factor must be 1, 2, 4 or 8, got {scale}")
    return STEM_CHANNELS[:stages]


def svd_scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)


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
