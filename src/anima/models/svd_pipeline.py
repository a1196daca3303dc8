"""`SVDControlNetPipeline`: Stable Video Diffusion with an SVD ControlNet, the parts every such
pipeline shares (LeviTor §3.2; I2V3D §3.3's temporal depth ControlNet).

A `StableVideoDiffusionPipeline` (CLIP image encoder, VAE with temporal decoder, SVD UNet, Euler
scheduler in EDM/v-prediction form) plus an `SVDControlNetModel`. The image embedding, the
noise-augmented first-frame latent, the added time ids and the decoding are the stock
pipeline's own methods; `predict_noise` runs the ControlNet, then the UNet with its residuals
(`anima.models.unet_residuals`). Each method's denoising loop is its own ``__call__``
(`anima.methods.levitor.pipeline`, `anima.methods.i2v3d.interpolation`); the toy SVD base's
trainer uses the conditioning alone.
"""

from __future__ import annotations

import PIL.Image
import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _resize_with_antialiasing,
)
from torch import Tensor
from transformers import CLIPVisionModelWithProjection

from anima.models.svd import CLIPProcessor
from anima.models.svd_controlnet import SVDControlNetModel
from anima.models.unet_residuals import unet_residuals

#: SVD's CLIP image encoder input side.
CLIP_SIDE = 224


class SVDControlNetPipeline(StableVideoDiffusionPipeline):
    """SVD + an `SVDControlNetModel`: conditioning and one guided evaluation. See the module
    docstring."""

    model_cpu_offload_seq = "image_encoder->controlnet->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKLTemporalDecoder,
        image_encoder: CLIPVisionModelWithProjection,
        unet: UNetSpatioTemporalConditionModel,
        scheduler: EulerDiscreteScheduler,
        feature_extractor: CLIPProcessor,
        controlnet: SVDControlNetModel,
    ) -> None:
        super().__init__(vae, image_encoder, unet, scheduler, feature_extractor)
        self.register_modules(controlnet=controlnet)

    def _image_tensor(self, image: Tensor | PIL.Image.Image) -> Tensor:
        """(1, 3, H, W) float in [0, 1] from a PIL image or a (3, H, W) / (1, 3, H, W) tensor."""
        if isinstance(image, PIL.Image.Image):
            image = self.video_processor.numpy_to_pt(self.video_processor.pil_to_numpy(image))
        if image.dim() == 3:
            image = image[None]
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"image must be (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
        return image.float()

    def encode_image_embedding(
        self, image: Tensor, device: torch.device, cfg: bool, normalise: bool = True
    ) -> Tensor:
        """CLIP image embedding, resized to 224 px with antialiasing in [-1, 1] exactly as the
        stock pipeline does for PIL input, then CLIP's mean/std normalisation (``normalise``
        False feeds the resized [0, 1] image as it is: I2V3D's release); zeros for the
        unconditional branch."""
        resized = (_resize_with_antialiasing(image * 2.0 - 1.0, (CLIP_SIDE, CLIP_SIDE)) + 1) / 2
        if normalise:
            return self._encode_image(resized, device, 1, cfg)
        dtype = next(self.image_encoder.parameters()).dtype
        embedding = self.image_encoder(resized.to(device, dtype)).image_embeds[:, None]
        return torch.cat([torch.zeros_like(embedding), embedding]) if cfg else embedding

    def prepare_conditioning(
        self,
        images: Tensor,
        aug_noise: Tensor,
        num_frames: int,
        fps: int,
        motion_bucket_id: int,
        noise_aug_strength: float,
        cfg: bool,
        size: tuple[int, int] | None = None,
        normalise: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """SVD's conditioning of a batch of first frames, shared by sampling and training.

        Args:
            images: (B, 3, H, W) first frames in [0, 1].
            aug_noise: (B, 3, h, w) standard normal noise for the noise augmentation.
            cfg: prepend the unconditional branch (zero embedding and image latents).
            size: generation size (h, w) the frames are resized to for the VAE (default: theirs);
                the CLIP embedding sees them at their own size, as the stock pipeline does.
            normalise: CLIP's mean/std normalisation of the embedding's input
                (`encode_image_embedding`).

        Returns:
            The CLIP image embedding (B, 1, D), the noise-augmented first-frame VAE latent
            (mode, unscaled, as SVD was trained) repeated over frames (B, F, 4, h, w), and the
            added time ids (B, 3) ``[fps - 1, motion_bucket_id, noise_aug_strength]``; batch 2B
            with ``cfg``.
        """
        device = self._execution_device
        batch = images.shape[0]
        height, width = size or images.shape[-2:]
        embedding = self.encode_image_embedding(images, device, cfg, normalise)
        pixels = self.video_processor.preprocess(images, height=height, width=width).to(device)
        pixels = pixels + noise_aug_strength * aug_noise.to(device, pixels.dtype)
        needs_upcasting = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if needs_upcasting:
            self.vae.to(dtype=torch.float32)
        image_latents = self._encode_vae_image(pixels, device, 1, cfg).to(embedding.dtype)
        if needs_upcasting:
            self.vae.to(dtype=torch.float16)
        image_latents = image_latents[:, None].repeat(1, num_frames, 1, 1, 1)
        time_ids = self._get_add_time_ids(
            fps - 1, motion_bucket_id, noise_aug_strength, embedding.dtype, batch, 1, cfg
        ).to(device)
        return embedding, image_latents, time_ids

    def predict_noise(
        self,
        sample: Tensor,
        t: Tensor,
        embedding: Tensor,
        time_ids: Tensor,
        control: Tensor,
        scale: float,
    ) -> Tensor:
        """One ControlNet + UNet evaluation on a batch."""
        down, mid = self.controlnet(
            sample,
            t,
            encoder_hidden_states=embedding,
            added_time_ids=time_ids,
            controlnet_cond=control,
            conditioning_scale=scale,
        )
        with unet_residuals(self.unet, down, mid):
            return self.unet(
                sample,
                t,
                encoder_hidden_states=embedding,
                added_time_ids=time_ids,
                return_dict=False,
            )[0]

    def check_controlnet_stem(self) -> None:
        """The ControlNet's conditioning stem downsamples as much as the VAE (else the two were
        not trained together and the control cannot line up with the latents)."""
        stem_scale = 2 ** (len(self.controlnet.config.conditioning_embedding_out_channels) - 1)
        if stem_scale != self.vae_scale_factor:
            raise ValueError(
                f"the ControlNet's stem downsamples {stem_scale}x but the VAE "
                f"{self.vae_scale_factor}x: they were not trained together"
            )
