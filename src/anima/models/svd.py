"""Stable Video Diffusion's fixed settings, shared by real and tiny pipelines: the released
scheduler and image-processor configurations, the SVD-xt UNet config (for full-size benchmarks
with random weights), and the geometry of the VAE and the ControlNet stem."""

from __future__ import annotations

from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler

try:  # transformers >= 5 names the PIL backend (torchvision is never installed with anima)
    from transformers import CLIPImageProcessorPil as CLIPProcessor
except ImportError:  # pragma: no cover - transformers 4
    from transformers import CLIPImageProcessor as CLIPProcessor


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
