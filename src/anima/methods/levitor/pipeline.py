"""`LeviTorPipeline`: Stable Video Diffusion with the LeviTor ControlNet (LeviTor §3.2-3.3).

An `anima.models.svd_pipeline.SVDControlNetPipeline` (SVD and an `SVDControlNetModel`, with
SVD's conditioning) fed the per-frame 3-channel LeviTor control maps (heatmap, instance id,
depth; raw 0..255 as the release feeds them); the denoising loop is this class's ``__call__``.

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
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from anima.methods.levitor.release_cfg import release_cfg_order as release_cfg
from anima.models.svd_pipeline import SVDControlNetPipeline
from anima.sampling.steps import StepCallback, after_step, guided


class LeviTorPipeline(SVDControlNetPipeline):
    """Image + LeviTor control maps -> video. See the module docstring."""

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
        self.check_controlnet_stem()
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
                            self.predict_noise(
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
                    noise = self.predict_noise(
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
