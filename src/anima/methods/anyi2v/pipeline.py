"""`AnyI2VPipeline`: AnimateDiff sampling with AnyI2V's first-frame control from any
conditional image (AnyI2V: "Animating Any Conditional Image with Motion Control").

Components (README, "AnyI2V"; `anima.methods.anyi2v.loading`): a `UNetMotionModel` (an SD1.5
UNet with AnimateDiff's motion modules), SD's `AutoencoderKL`, `CLIPTextModel` and
`CLIPTokenizer`, and the release's `DDIMScheduler` (linear betas 0.00085-0.012, steps offset 1,
eta 0). Defaults are the release's: 25 steps, classifier-free guidance 8, 16 frames. The UNet
may instead be ModelScope / Zeroscope's `UNet3DConditionModel` with its own VAE, text encoder
and DDIM (AnyI2V, appendix: other text-to-video backbones, temporal modules off for the
inversion; `anima.methods.anyi2v.backbone`): same latent layout, the same layer names.

A call (docs/architecture.md, "A method folder"):

1. the initial latents: fresh Gaussian noise (1, 4, F, H/8, W/8), drawn FIRST from the
   generator, exactly as diffusers' `AnimateDiffPipeline` draws them (so a seed gives the same
   noise in both; the release draws its noise after encoding the condition);
2. the condition image (3, H, W) in [0, 1], any RGB map (canny, depth, a photo...), is
   VAE-encoded: a sample of the posterior from the same generator, times the VAE's scaling
   factor (the release samples);
3. the DDIM inversion of that latent, one frame, motion modules off, with the prompt, no
   guidance, recording the features at t = 201 (`anima.methods.anyi2v.inversion`); the inverted
   latent is discarded;
4. DDIM sampling with batched guidance ``[uncond; cond]``; on the injection steps the
   conditional half gets frame 0's features (`anima.methods.anyi2v.injection`). Videos longer
   than ``window`` frames (the motion modules' context) are denoised in sliding windows whose
   noise predictions are averaged per frame (`anima.sampling.windows`); one window is the plain
   call, bit for bit;
5. decoding, ``decode_chunk_size`` frames at a time (1: frame by frame, as the release).

``callback_on_step_end(pipe, i, t, {"latents": ...})`` after each step may replace the latents
(`anima.sampling.steps`). With injection off (`InjectionOptions.enabled`) steps 2-3 are skipped
and the pipeline samples as diffusers' `AnimateDiffPipeline` does with the same components,
prompt, seed, steps, guidance and size.

With box ``tracks`` (`anima.methods.anyi2v.boxes.BoxTrack`, image pixels), the latent is
optimised before the main pass of the optimisation steps (0-5) so that each object's features
follow its boxes (`anima.methods.anyi2v.optimisation`, AnyI2V appendix A.1); ``tracks=None``
(or an empty list) leaves the sampling exactly as without it.

Known differences from the release: none in the UNet (its AnimateDiff v3 config sets
``use_inflated_groupnorm``, whose GroupNorm folds the frames into the batch: each frame is
normalised alone, as diffusers' `UNetMotionModel` does; without it the res blocks would pool
over the frames, X-Dyna's case, `anima.models.frame_norms`). Its patch-wise AdaIN uses the
unbiased std with an epsilon added to it (`anima.attention.patch_adain`: population std,
clamped), the same ratio up to that epsilon. Its 512x512 and 16 frames are fixed; here any
size that is a multiple of 8 and any length.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    UNet3DConditionModel,
    UNetMotionModel,
)
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from anima.methods.anyi2v import inversion
from anima.methods.anyi2v.backbone import text_for_frames
from anima.methods.anyi2v.boxes import BoxTrack
from anima.methods.anyi2v.injection import FirstFrameInjection, InjectionOptions
from anima.methods.anyi2v.inversion import InvertedFeatures
from anima.methods.anyi2v.optimisation import LatentOptimisation, OptimisationOptions
from anima.sampling.steps import StepCallback, after_step, guided
from anima.sampling.windows import sliding_windows, windowed_prediction


class AnyI2VPipeline(DiffusionPipeline):
    """Conditional image + prompt -> video. See the module docstring."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNetMotionModel | UNet3DConditionModel,
        scheduler: DDIMScheduler,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    # -- conditioning ------------------------------------------------------------------------

    def encode_prompt(self, prompt: str) -> Tensor:
        """CLIP text embedding (1, 77, D) of ``prompt``: the last hidden layer (SD1.5's), in
        the text encoder's dtype, one prompt a call (as `AnimateDiffPipeline` encodes them)."""
        ids = self.tokenizer(
            [prompt],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        device = self._execution_device
        return self.text_encoder(ids.to(device))[0].to(self.text_encoder.dtype)

    def encode_condition(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        """(1, 4, h, w) latent of the condition image (3, H, W) in [0, 1]: a posterior sample
        (drawn from ``generator``) times the VAE's scaling factor."""
        pixels = image[None].to(self._execution_device, self.vae.dtype) * 2.0 - 1.0
        posterior = self.vae.encode(pixels).latent_dist
        return posterior.sample(generator) * self.vae.config.scaling_factor

    def prepare_latents(
        self,
        num_frames: int,
        size: tuple[int, int],
        dtype: torch.dtype,
        generator: torch.Generator | None,
        latents: Tensor | None = None,
    ) -> Tensor:
        """The initial noise (1, 4, F, h, w) at latent ``size`` (or ``latents`` given), scaled
        by the sampler's initial sigma, as `AnimateDiffPipeline` prepares it."""
        shape = (1, self.unet.config.in_channels, num_frames, *size)
        device = self._execution_device
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must be {shape}, got {tuple(latents.shape)}")
        else:
            latents = latents.to(device)
        return latents * self.scheduler.init_noise_sigma

    def invert(
        self, condition: Tensor, text: Tensor, options: InjectionOptions
    ) -> InvertedFeatures:
        """The inversion's features of the condition latent (1, 4, h, w) with the prompt's
        embedding ``text`` (1, 77, D) (`anima.methods.anyi2v.inversion.invert`)."""
        return inversion.invert(
            self.unet,
            self.scheduler.config,
            condition,
            text,
            timestep=options.inversion_timestep,
            steps=options.inversion_steps,
            query_layers=options.query_layers,
            residual_layers=options.residual_layers,
        )

    # -- denoising ---------------------------------------------------------------------------

    def window_noise(
        self,
        frames: range,
        model_input: Tensor,
        t: Tensor,
        text: Tensor,
        injection: FirstFrameInjection | None = None,
        record: bool = False,
    ) -> Tensor:
        """Noise prediction (B, C, len(frames), h, w) of the ``frames`` of ``model_input`` (B,
        C, F, h, w: the B branches), each branch with its row of ``text`` (B, 77, D), under
        ``injection``'s hooks when given (``record``: later windows follow)."""
        sample = model_input[:, :, frames.start : frames.stop]
        hidden = text_for_frames(self.unet, text, len(frames))
        hooks = injection.window(frames, record) if injection is not None else nullcontext()
        with hooks:
            return self.unet(sample, t, encoder_hidden_states=hidden, return_dict=False)[0]

    def step_noise(
        self,
        windows: list[range],
        latents: Tensor,
        t: Tensor,
        text: Tensor,
        injection: FirstFrameInjection | None = None,
    ) -> Tensor:
        """Noise prediction (B, C, F, h, w) of one step for the B branches of ``text`` (B, 77,
        D; ``[uncond; cond]`` under guidance) on ``latents`` (1, C, F, h, w): the ``windows``'
        predictions averaged per frame, in window order (the one holding frame 0 first)."""
        model_input = torch.cat([latents] * text.shape[0]) if text.shape[0] > 1 else latents
        model_input = self.scheduler.scale_model_input(model_input, t)
        record = len(windows) > 1

        def predict(frames: range) -> Tensor:
            return self.window_noise(frames, model_input, t, text, injection, record)

        return windowed_prediction(predict, windows, latents.shape[2], frame_dim=2)

    def decode(self, latents: Tensor, chunk: int = 8) -> Tensor:
        """(1, C, F, h, w) latents -> (F, 3, H, W) float32 frames in [0, 1], ``chunk`` frames
        at a time (computed as `AnimateDiffPipeline` decodes and post-processes them)."""
        flat = (1 / self.vae.config.scaling_factor * latents)[0].permute(1, 0, 2, 3)
        frames = [
            self.vae.decode(flat[i : i + chunk].to(self.vae.dtype)).sample
            for i in range(0, flat.shape[0], chunk)
        ]
        return (torch.cat(frames).float() * 0.5 + 0.5).clamp(0.0, 1.0)

    # -- sampling ----------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image: Tensor,
        prompt: str = "",
        negative_prompt: str = "",
        num_frames: int = 16,
        num_inference_steps: int = 25,
        guidance_scale: float = 8.0,
        window: int = 16,
        overlap: int = 4,
        injection: InjectionOptions | None = None,
        tracks: list[BoxTrack] | None = None,
        optimisation: OptimisationOptions | None = None,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        decode_chunk_size: int = 8,
        callback_on_step_end: StepCallback | None = None,
    ) -> Tensor:
        """Animate the condition ``image`` (3, H, W) in [0, 1], H and W multiples of 8, into
        ``num_frames`` frames (F, 3, H, W) float32 in [0, 1] (module docstring). ``injection``
        sets the inversion and first-frame injection (None: `InjectionOptions()`, the
        release's; ``InjectionOptions(enabled=False)`` turns both off); ``latents`` (1, 4, F,
        H/8, W/8) replaces the initial noise; ``window`` / ``overlap``: the sliding windows
        (``window`` at most the motion modules' positions); ``tracks``: the objects' boxes
        (image pixels) the latent optimisation aligns to, with ``optimisation``'s settings
        (None: `OptimisationOptions()`); ``tracks=None``: no optimisation."""
        options = InjectionOptions() if injection is None else injection
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
        height, width = image.shape[-2:]
        scale = self.vae_scale_factor
        if height % scale or width % scale:
            raise ValueError(f"height and width must be multiples of {scale}, got {height}x{width}")
        context = getattr(self.unet.config, "motion_max_seq_length", None)
        if context is not None and window > context:
            raise ValueError(f"window {window} exceeds the motion modules' {context} positions")
        windows = sliding_windows(num_frames, window, overlap)
        cfg = guidance_scale > 1.0

        cond = self.encode_prompt(prompt)
        text = torch.cat([self.encode_prompt(negative_prompt), cond]) if cfg else cond
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        timesteps = self.scheduler.timesteps
        size = (height // scale, width // scale)
        latents = self.prepare_latents(num_frames, size, text.dtype, generator, latents)

        features = None
        if options.enabled:
            condition = self.encode_condition(image, generator)
            features = self.invert(condition, cond, options)
        optimiser = None
        if tracks:
            optimiser = LatentOptimisation(
                self.unet,
                tracks,
                (height, width),
                cond,
                windows,
                optimisation,
                features,
                options.steps,
                options.adain_patch,
            )
        self.optimiser = optimiser  # its per-step losses, for inspection

        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if optimiser is not None:
                    latents = optimiser.optimise(latents, t, i)
                injection_now = None
                if features is not None and i in options.steps:
                    injection_now = FirstFrameInjection(
                        self.unet, features, cfg, options.adain_patch
                    )
                noise = self.step_noise(windows, latents, t, text, injection_now)
                if cfg:
                    noise = guided(noise, guidance_scale)
                latents = self.scheduler.step(noise, t, latents, return_dict=False)[0]
                progress.update()
                latents = after_step(callback_on_step_end, self, i, t, latents)
        frames = self.decode(latents, decode_chunk_size)
        self.maybe_free_model_hooks()
        return frames
