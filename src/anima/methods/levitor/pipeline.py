"""`LeviTorPipeline`: Stable Video Diffusion with the LeviTor ControlNet (LeviTor §3.2-3.3).

A `StableVideoDiffusionPipeline` (CLIP image encoder, VAE with temporal decoder, SVD UNet, Euler
scheduler in EDM/v-prediction form) plus an `SVDControlNetModel` fed the per-frame 3-channel
LeviTor control maps (heatmap, instance id, depth; raw 0..255 as the release feeds them). The
image embedding, the noise-augmented first-frame latent, the added time ids and the decoding are
the stock pipeline's own methods; the denoising loop is ours, because each UNet call first runs
the ControlNet and adds its residuals (`anima.models.unet_residuals`).

Defaults are the authors' release's: 25 Euler steps, per-frame CFG ramping linearly from
1.0 on the first frame to 3.0 on the last, fps 6 (the model receives fps - 1 = 5, as the
release and diffusers' SVD pipeline do), motion bucket 100, noise augmentation 0.02,
ControlNet scale 1.0.

Memory options: ``sequential_cfg`` runs the unconditional and conditional branches one after
the other (half the activation memory, same result), ``decode_chunk_size`` decodes that many
frames at a time, and diffusers' ``enable_model_cpu_offload`` keeps only the running model on
the accelerator (``model_cpu_offload_seq``). Sizes and frame counts are free; height and width
must be multiples of 8 (the VAE and the ControlNet stem downsample 8x).
"""

from __future__ import annotations

from contextlib import nullcontext

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
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from transformers import CLIPVisionModelWithProjection

from anima.methods.levitor.release_cfg import release_cfg_order as release_cfg
from anima.models.svd import CLIPProcessor
from anima.models.svd_controlnet import SVDControlNetModel
from anima.models.unet_residuals import unet_residuals
from anima.sampling.steps import StepCallback, after_step, guided

#: SVD's CLIP image encoder input side.
CLIP_SIDE = 224


class LeviTorPipeline(StableVideoDiffusionPipeline):
    """Image + LeviTor control maps -> video. See the module docstring."""

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

    def encode_image_embedding(self, image: Tensor, device: torch.device, cfg: bool) -> Tensor:
        """CLIP image embedding, resized to 224 px with antialiasing in [-1, 1] exactly as the
        stock pipeline does for PIL input; zeros for the unconditional branch."""
        resized = (_resize_with_antialiasing(image * 2.0 - 1.0, (CLIP_SIDE, CLIP_SIDE)) + 1) / 2
        return self._encode_image(resized, device, 1, cfg)

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
    ) -> tuple[Tensor, Tensor, Tensor]:
        """SVD's conditioning of a batch of first frames, shared by sampling and training.

        Args:
            images: (B, 3, H, W) first frames in [0, 1].
            aug_noise: (B, 3, h, w) standard normal noise for the noise augmentation.
            cfg: prepend the unconditional branch (zero embedding and image latents).
            size: generation size (h, w) the frames are resized to for the VAE (default: theirs);
                the CLIP embedding sees them at their own size, as the stock pipeline does.

        Returns:
            The CLIP image embedding (B, 1, D), the noise-augmented first-frame VAE latent
            (mode, unscaled, as SVD was trained) repeated over frames (B, F, 4, h, w), and the
            added time ids (B, 3) ``[fps - 1, motion_bucket_id, noise_aug_strength]``; batch 2B
            with ``cfg``.
        """
        device = self._execution_device
        batch = images.shape[0]
        height, width = size or images.shape[-2:]
        embedding = self.encode_image_embedding(images, device, cfg)
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

    def _predict_noise(
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

    @torch.no_grad()
    def __call__(  # noqa: PLR0913 - the pipeline's knobs are its public API
        self,
        image: Tensor | PIL.Image.Image,
        control_images: Tensor,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        fps: int = 6,
        motion_bucket_id: int = 100,
        noise_aug_strength: float = 0.02,
        controlnet_conditioning_scale: float = 1.0,
        decode_chunk_size: int | None = None,
        sequential_cfg: bool = False,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        output_type: str = "pt",
        callback_on_step_end: StepCallback | None = None,
        release_cfg_order: bool = False,
    ) -> Tensor:
        """Generate one video.

        Args:
            image: the first frame, (3, H, W) float in [0, 1] or a PIL image.
            control_images: (F, 3, H, W) LeviTor control maps, raw 0..255
                (`anima.methods.levitor.controls.control_signal`).
            height, width: output size, multiples of 8 (default: the control maps' size).
            num_inference_steps: Euler steps.
            min_guidance_scale, max_guidance_scale: CFG scale on the first and last frame,
                linear in between; no CFG when the maximum is <= 1.
            fps: frame rate the video is conditioned on (the model receives ``fps - 1``).
            motion_bucket_id: SVD motion amount conditioning (the release's UI: 1-180).
            noise_aug_strength: noise added to the conditioning image.
            controlnet_conditioning_scale: multiplies the ControlNet residuals.
            decode_chunk_size: frames decoded at a time (default: all).
            sequential_cfg: run the two CFG branches one at a time (less memory, same result).
            generator: the random source (noise augmentation, then initial latents).
            latents: initial latents (B, F, 4, H/8, W/8) instead of drawing them.
            output_type: "pt" for frames, "latent" for the final latents.
            callback_on_step_end: ``f(pipe, step, t, {"latents": ...}) -> {"latents": ...}``.
            release_cfg_order: pair the temporal cross-attention's rows with the image embedding
                as the release does in its batched CFG call (`release_cfg`), to reproduce the
                official demo; needs batched CFG (not ``sequential_cfg``).

        Returns:
            (F, 3, H, W) float frames in [0, 1], or the latents (1, F, 4, H/8, W/8).
        """
        control = control_images if control_images.dim() == 5 else control_images[None]
        num_frames = control.shape[1]
        height = height or control.shape[-2]
        width = width or control.shape[-1]
        if height % 8 or width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")
        if tuple(control.shape[-2:]) != (height, width):
            raise ValueError(
                f"control maps are {tuple(control.shape[-2:])}, expected {(height, width)}"
            )
        stem_scale = 2 ** (len(self.controlnet.config.conditioning_embedding_out_channels) - 1)
        if stem_scale != self.vae_scale_factor:
            raise ValueError(
                f"the ControlNet's stem downsamples {stem_scale}x but the VAE "
                f"{self.vae_scale_factor}x: they were not trained together"
            )
        device = self._execution_device
        cfg = max_guidance_scale > 1
        if release_cfg_order and sequential_cfg:
            raise ValueError("release_cfg_order reproduces a batched CFG call: not sequential_cfg")
        self._guidance_scale = max_guidance_scale
        image = self._image_tensor(image)

        # Same order of random draws as StableVideoDiffusionPipeline: augmentation, then latents.
        aug_noise = randn_tensor(
            (1, 3, height, width), generator=generator, device=device, dtype=torch.float32
        )
        embedding, image_latents, time_ids = self.prepare_conditioning(
            image,
            aug_noise,
            num_frames,
            fps,
            motion_bucket_id,
            noise_aug_strength,
            cfg,
            size=(height, width),
        )
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = self.prepare_latents(
            1,
            num_frames,
            self.unet.config.in_channels,
            height,
            width,
            embedding.dtype,
            device,
            generator,
            latents,
        )
        guidance = torch.linspace(min_guidance_scale, max_guidance_scale, num_frames)
        guidance = guidance.to(device, latents.dtype).reshape(1, num_frames, 1, 1, 1)
        control = control.to(device, self.controlnet.dtype)
        if cfg:
            control = torch.cat([control, control])  # both branches see the control maps

        self._num_timesteps = len(timesteps)
        ordered = cfg and release_cfg_order
        release_order = release_cfg(self.unet, self.controlnet) if ordered else nullcontext()
        with self.progress_bar(total=len(timesteps)) as progress, release_order:
            for step, t in enumerate(timesteps):
                scaled = self.scheduler.scale_model_input(
                    torch.cat([latents] * 2 if cfg else [latents]), t
                )
                sample = torch.cat([scaled, image_latents], dim=2)
                if cfg and sequential_cfg:
                    noise = torch.cat(
                        [
                            self._predict_noise(
                                sample[i : i + 1],
                                t,
                                embedding[i : i + 1],
                                time_ids[i : i + 1],
                                control[i : i + 1],
                                controlnet_conditioning_scale,
                            )
                            for i in range(2)
                        ]
                    )
                else:
                    noise = self._predict_noise(
                        sample, t, embedding, time_ids, control, controlnet_conditioning_scale
                    )
                if cfg:
                    noise = guided(noise, guidance)
                latents = self.scheduler.step(noise, t, latents).prev_sample
                latents = after_step(callback_on_step_end, self, step, t, latents)
                progress.update()

        if output_type == "latent":
            self.maybe_free_model_hooks()
            return latents
        frames = self.decode_latents(latents, num_frames, decode_chunk_size or num_frames)
        self.maybe_free_model_hooks()
        # (1, C, F, H, W) in [-1, 1] -> (F, C, H, W) in [0, 1]
        return (frames[0].permute(1, 0, 2, 3) / 2 + 0.5).clamp(0, 1)
