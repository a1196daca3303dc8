"""`XDynaPipeline`: a human image driven by pose and face conditions (X-Dyna, "X-Dyna:
Expressive Dynamic Human Image Animation").

Components (as in the authors' release): a frozen SD1.5 UNet with AnimateDiff motion modules
(`UNetMotionModel`), the `DynamicsAdapter` (§3.2), a pose `ControlNetModel` (3-channel
skeleton without head) and an optional S-Face `ControlNetModel` (6 channels: eye and mouth
patches + face crop, §3.3) whose residuals are summed, a `DDIMScheduler` with linear betas
0.00085-0.012, SD's VAE, CLIP text encoder and tokenizer, and optionally an IP-Adapter-Plus
(``image_encoder`` + ``feature_extractor``, its resampler and cross-attention weights loaded
into the UNet by diffusers; `IPAdapterMixin` gives ``set_ip_adapter_scale`` and
``unload_ip_adapter``).

IP-Adapter-Plus image tokens, as the authors' release uses them (bytedance/X-Dyna, commit
9a54f8e, ``inference_xdyna.py`` and ``animatediff/``): the reference image, preprocessed by
``CLIPImageProcessor()`` (224 px), goes through the CLIP vision encoder (IP-Adapter's
OpenCLIP ViT-H/14) once; its penultimate hidden states (``hidden_states[-2]``) go through the
Plus resampler (16 tokens, ``ip-adapter-plus_sd15``'s ``image_proj``) and are attended to by
``to_k_ip``/``to_v_ip`` in every cross-attention, added with weight 1 to the text attention
(``IPAdapterAttention``: ``hidden_states + ip_hidden_states``). The unconditional CFG branch
gets the tokens of an all-zero pixel tensor (``zeros_like`` of the preprocessed image) through
the same encoder and resampler. Every UNet pass of a branch sees its tokens, the reference
frame included (the release's frame 0 shares the pass); the ControlNets see text only.

The model's layout (training, `predict_noise`; `anima.methods.xdyna.reference_frame`): one
UNet pass holds, for each video, the clean reference latent as frame 0 followed by the
generated frames: the adapter reads the reference's keys and values, the motion modules skip
it, the ControlNets give it zero residuals, and it receives the same timestep as the other
frames (as the release does) but is never noised or stepped. With per-frame resnet norms
(below) nothing in the reference's own path depends on the other frames (spatial layers are per
frame, the adapter branch on it reads its own keys and values, the motion modules and
ControlNets leave it alone), so the sampler runs it
once per denoising step and CFG branch, alone (`reference_features`, motion modules bypassed,
no residuals), records ``K_R``/``V_R`` at every adapter layer, and runs each window on its
generated frames only, the adapter reading the recorded reference (`DynamicsAdapter.attach`
with ``recorded``): the same prediction up to float rounding, one frame a step instead of one
a window (``cache_reference=False`` runs the model's layout in every window, for checking).

Sampling (§4.1 and the release's defaults): DDIM, 25 steps, eta 0, CFG 7.5 (the unconditional
branch differs by the negative prompt and, with an IP-Adapter, by its zero-image tokens: both
keep the reference and the ControlNet images, as in the release; so without image tokens and
with equal prompts, the default with both empty, ``uncond + g * (cond - uncond)`` is ``cond``
and the unconditional branch is skipped, as with ``guidance_scale`` 1; ``ip_adapter_scale`` 0
counts as no image tokens). Videos of any length are sampled in sliding windows of 16 frames
with overlap 4 whose noise predictions are averaged (`anima.sampling.windows`); the release
instead wraps its windows around the clip and shifts them by a random offset every step, which
makes its sampling depend on Python's unseeded ``random``. The initial latents are the reference
latent repeated over frames, each element replaced by a Gaussian-blurred copy (9x9 kernel,
sigma 18 latent pixels, as in the release) with probability 0.5, then noised to the first
timestep with ``scheduler.add_noise``: about 5 % of the reference's low frequencies survive at
t = 961, which anchors colours and layout.

Normalisation: the UNet runs with the norms the adapter's config records (`DynamicsAdapter.norms`,
`anima.models.frame_norms`), inside `adapter_context` and the sampler's steps only. Weights
converted from the release record the release's: motion modules per frame, resnets (and the
output norm) pooled over all frames of a pass, the reference frame 0 included, as in the release,
where it shares every window's pass. Pooled resnets make the reference's features depend on the
window's frames and theirs on the reference's, so with them the sampler always puts the
reference in front of each window (``cache_reference`` is then ignored), as the release does.
Weights trained here record diffusers' `UNetMotionModel` as it is (motion modules pooled,
resnets per frame), with which the reference's path is its own and can be cached.

Known difference from the release: its CLIP encoder reads the image file as it is; here it
reads the image given (at the generation size), both resized to 224 px by the same
preprocessing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DiffusionPipeline,
    UNetMotionModel,
)
from diffusers.loaders import IPAdapterMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from torch.nn import functional as F
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from anima.attention import FeatureStore, skip_motion_modules
from anima.methods.xdyna.adapter import DynamicsAdapter
from anima.methods.xdyna.reference_frame import (
    skip_reference_in_motion_modules,
    with_reference_residuals,
)
from anima.models.frame_norms import frame_norms
from anima.models.ip_adapter import ip_adapter_loaded, ip_processors
from anima.models.svd import CLIPProcessor
from anima.sampling.steps import StepCallback, after_step, guided
from anima.sampling.windows import sliding_windows, windowed_prediction

#: The release's latent blur for the initial latents (torchvision GaussianBlur(9, sigma=18)).
BLUR_KERNEL, BLUR_SIGMA, BLUR_PROBABILITY = 9, 18.0, 0.5


def image_conditioning(image_embeds: Tensor | None) -> dict[str, Any] | None:
    """The UNet's ``added_cond_kwargs`` for IP-Adapter image features (B, 1, T, D), one a
    video; None without them (the UNet call is then the plain one)."""
    return None if image_embeds is None else {"image_embeds": [image_embeds]}


def uniform_tensor(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Uniform samples in [0, 1) of ``shape`` on ``device``: drawn on the generator's own
    device, then moved (the uniform counterpart of diffusers' ``randn_tensor``). Torch refuses
    a CPU generator for an accelerator tensor, and a CPU generator gives the same numbers
    whatever ``device`` is, so a seed gives one video on every machine."""
    return torch.rand(
        shape,
        generator=generator,
        device=generator.device if generator is not None else device,
        dtype=dtype,
    ).to(device)


def gaussian_blur(latents: Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> Tensor:
    """Separable Gaussian blur of (N, C, h, w) with reflect padding (torchvision's); the
    kernel shrinks to fit latents smaller than it."""
    half = min(kernel // 2, latents.shape[-1] - 1, latents.shape[-2] - 1)
    kernel = 2 * half + 1
    x = torch.arange(kernel, dtype=torch.float64) - half
    weights = torch.exp(-(x**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).to(latents.dtype).to(latents.device)
    channels = latents.shape[1]
    padded = F.pad(latents, (half, half, half, half), mode="reflect")
    rows = weights.reshape(1, 1, 1, kernel).repeat(channels, 1, 1, 1)
    cols = weights.reshape(1, 1, kernel, 1).repeat(channels, 1, 1, 1)
    return F.conv2d(F.conv2d(padded, rows, groups=channels), cols, groups=channels)


class WindowResiduals:
    """ControlNet residuals of one denoising step, window by window, each frame's computed once.

    The pose and face ControlNets are per-frame 2D models and the latents change only after all
    windows of a step, so a frame shared by two windows has the same residuals in both: the
    frames a window shares with the previous one are taken from it and only the new frames go
    through the ControlNets. A video then costs one ControlNet pass per frame and step; only
    the UNet with its motion modules sees the overlaps twice."""

    def __init__(
        self,
        pipe: XDynaPipeline,
        latents: Tensor,
        t: Tensor,
        text: Tensor,
        pose: Tensor,
        face: Tensor | None,
        pose_scale: float,
        face_scale: float,
    ) -> None:
        self.pipe, self.latents, self.t, self.text = pipe, latents, t, text
        self.pose, self.face, self.scales = pose, face, (pose_scale, face_scale)
        self._frames: range | None = None
        self._levels: list[Tensor] = []  # (B, F_window, C, h, w): the down residuals, then mid

    def _compute(self, start: int, stop: int) -> list[Tensor]:
        branches = self.text.shape[0]
        latents = self.latents[:, :, start:stop].expand(branches, -1, -1, -1, -1)
        face = None if self.face is None else self.face[start:stop]
        down, mid = self.pipe.control_residuals(
            latents, self.t, self.text, self.pose[start:stop], face, *self.scales
        )
        return [r.reshape(branches, stop - start, *r.shape[1:]) for r in (*down, mid)]

    def window(self, frames: range) -> tuple[list[Tensor], Tensor]:
        """(down residuals, mid residual) of ``frames``, (B * len(frames), C, h, w) each."""
        previous = self._frames
        if previous is not None and previous.start <= frames.start < previous.stop:
            kept = previous.stop - frames.start
            offset = frames.start - previous.start
            new = self._compute(previous.stop, frames.stop) if frames.stop > previous.stop else None
            levels = []
            for i, old in enumerate(self._levels):
                part = old[:, offset : offset + min(kept, len(frames))]
                levels.append(part if new is None else torch.cat([part, new[i]], dim=1))
        else:
            levels = self._compute(frames.start, frames.stop)
        self._frames, self._levels = frames, levels
        flat = [level.flatten(0, 1) for level in levels]
        return flat[:-1], flat[-1]


class XDynaPipeline(DiffusionPipeline, IPAdapterMixin):
    """Reference image + pose (and face) conditions -> video. See the module docstring."""

    model_cpu_offload_seq = (
        "text_encoder->image_encoder->pose_controlnet->face_controlnet->unet->vae"
    )
    _optional_components = ["face_controlnet", "image_encoder", "feature_extractor"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNetMotionModel,
        adapter: DynamicsAdapter,
        pose_controlnet: ControlNetModel,
        scheduler: DDIMScheduler,
        face_controlnet: ControlNetModel | None = None,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        feature_extractor: CLIPProcessor | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            adapter=adapter,
            pose_controlnet=pose_controlnet,
            scheduler=scheduler,
            face_controlnet=face_controlnet,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    # -- conditioning ------------------------------------------------------------------------

    def encode_prompt(self, prompts: list[str]) -> Tensor:
        """CLIP text embeddings (len(prompts), 77, D) of the last hidden layer (SD1.5's)."""
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        device = self._execution_device
        return self.text_encoder(ids.to(device))[0].to(self.unet.dtype)

    @property
    def has_ip_adapter(self) -> bool:
        """Whether the UNet holds an IP-Adapter (every UNet pass then takes image tokens)."""
        return ip_adapter_loaded(self.unet)

    def encode_image(self, image: Tensor) -> Tensor:
        """IP-Adapter-Plus image features (2, 1, T, D) of an all-zero pixel tensor (the
        unconditional branch's) and of ``image`` (3, H, W) in [0, 1]: the CLIP vision encoder's
        penultimate hidden states (module docstring); the UNet's resampler makes the tokens."""
        if self.image_encoder is None or self.feature_extractor is None:
            raise ValueError("the UNet has an IP-Adapter but the pipeline no image_encoder")
        pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        hwc = np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy())  # as a PIL image
        values = self.feature_extractor(images=hwc, return_tensors="pt").pixel_values
        values = values.to(self._execution_device, self.image_encoder.dtype)
        both = torch.cat([torch.zeros_like(values), values])
        hidden = self.image_encoder(both, output_hidden_states=True).hidden_states[-2]
        return hidden[:, None].to(self.unet.dtype)

    def branch_image_embeds(self, image: Tensor, cfg: bool) -> Tensor | None:
        """The IP-Adapter image features of the sampling branches, (B, 1, T, D) in the order
        of the prompts: the zero image's and the image's with ``cfg``, else the image's; None
        without an IP-Adapter."""
        if not self.has_ip_adapter:
            return None
        both = self.encode_image(image)
        return both if cfg else both[1:]

    @contextmanager
    def ip_adapter_scale(self, scale: float) -> Iterator[None]:
        """Inside the block the image tokens' attention is weighted by ``scale`` (diffusers'
        ``set_ip_adapter_scale``); the previous weights are put back after. Nothing happens
        without an IP-Adapter."""
        processors = ip_processors(self.unet)
        saved = [list(processor.scale) for processor in processors]
        if processors:
            self.set_ip_adapter_scale(scale)
        try:
            yield
        finally:
            for processor, weights in zip(processors, saved, strict=True):
                processor.scale = weights

    def encode_reference(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        """(1, 4, h, w) latent of a (3, H, W) image in [0, 1]: a posterior sample times the
        VAE scaling factor (the release samples)."""
        pixels = image[None].to(self._execution_device, self.vae.dtype) * 2.0 - 1.0
        dist = self.vae.encode(pixels).latent_dist
        return dist.sample(generator) * self.vae.config.scaling_factor

    def initial_latents(
        self, reference: Tensor, num_frames: int, generator: torch.Generator | None
    ) -> Tensor:
        """(1, 4, F, h, w): the reference repeated, each element blurred with probability 0.5,
        noised to the first timestep (see the module docstring)."""
        shape = (1, reference.shape[1], num_frames, *reference.shape[-2:])
        clean = reference[:, :, None].expand(shape)
        blurred = gaussian_blur(reference)[:, :, None].expand(shape)
        keep = uniform_tensor(shape, generator, reference.device) >= BLUR_PROBABILITY
        mixed = torch.where(keep, clean, blurred)
        noise = randn_tensor(shape, generator=generator, device=reference.device, dtype=mixed.dtype)
        first = self.scheduler.timesteps[:1]
        return self.scheduler.add_noise(mixed, noise, first)

    def control_residuals(
        self,
        latents: Tensor,
        t: Tensor,
        text: Tensor,
        pose: Tensor,
        face: Tensor | None,
        pose_scale: float,
        face_scale: float,
    ) -> tuple[list[Tensor], Tensor]:
        """Summed pose (+ face) ControlNet residuals of the generated frames (§3.3: residuals
        summed), (B * F, C, h, w) each; `unet_noise` puts the reference's zeros in front.

        Args:
            latents: (B, C, F, h, w) noisy latents of the window.
            t: the timestep, one for all or (B,) one a video.
            text: (B, 77, D) text embeddings of the B branches.
            pose: (F, 3, H, W) conditions shared by the B videos, or (B, F, 3, H, W); ``face``
                likewise with 6 channels; in [0, 1].
        """
        batch, _, frames = latents.shape[:3]
        sample = latents.permute(0, 2, 1, 3, 4).flatten(0, 1)
        hidden = text.repeat_interleave(frames, dim=0)
        t = t.repeat_interleave(frames) if t.dim() == 1 and t.numel() == batch else t

        def per_frame(condition: Tensor) -> Tensor:
            flat = (
                condition.flatten(0, 1)
                if condition.dim() == 5
                else condition.repeat(batch, 1, 1, 1)
            )
            return flat.to(sample.device, sample.dtype)

        down, mid = self.pose_controlnet(
            sample,
            t,
            encoder_hidden_states=hidden,
            controlnet_cond=per_frame(pose),
            conditioning_scale=pose_scale,
            return_dict=False,
        )
        if face is not None and self.face_controlnet is not None:
            face_down, face_mid = self.face_controlnet(
                sample,
                t,
                encoder_hidden_states=hidden,
                controlnet_cond=per_frame(face),
                conditioning_scale=face_scale,
                return_dict=False,
            )
            down = [d + f for d, f in zip(down, face_down, strict=True)]
            mid = mid + face_mid
        return list(down), mid

    def unet_noise(
        self,
        latents: Tensor,
        reference: Tensor,
        t: Tensor,
        text: Tensor,
        down: list[Tensor],
        mid: Tensor,
        image_embeds: Tensor | None = None,
    ) -> Tensor:
        """Noise prediction (B, C, F, h, w) of the UNet on [reference, frames] given the
        generated frames' ControlNet residuals (`control_residuals`); the reference gets zero
        residuals. ``image_embeds`` (B, 1, T, D): IP-Adapter image features, one a video (the
        UNet gives them to every frame). Must run inside `adapter_context`."""
        batch, _, frames = latents.shape[:3]
        down = with_reference_residuals(down, batch, frames)
        (mid,) = with_reference_residuals([mid], batch, frames)
        ref = reference[:, :, None].expand(batch, -1, 1, -1, -1).to(latents.dtype)
        sample = torch.cat([ref, latents], dim=2)
        return self.frames_noise(sample, t, text, down, mid, image_embeds)[:, :, 1:]

    def predict_noise(
        self,
        latents: Tensor,
        reference: Tensor,
        t: Tensor,
        text: Tensor,
        pose: Tensor,
        face: Tensor | None,
        pose_scale: float = 1.0,
        face_scale: float = 1.0,
        image_embeds: Tensor | None = None,
    ) -> Tensor:
        """Noise prediction (B, C, F, h, w) of one window: the UNet on [reference, frames].

        ``latents`` (B, C, F, h, w) and ``text`` (B, 77, D) hold the B branches (CFG halves)
        or videos (training), ``image_embeds`` (B, 1, T, D) their IP-Adapter image features
        when the UNet has an IP-Adapter; ``reference`` is (1, C, h, w) shared or (B, C, h, w);
        ``t`` one timestep or (B,). Must run inside `adapter_context`."""
        down, mid = self.control_residuals(latents, t, text, pose, face, pose_scale, face_scale)
        return self.unet_noise(latents, reference, t, text, down, mid, image_embeds)

    def reference_features(
        self, reference: Tensor, t: Tensor, text: Tensor, image_embeds: Tensor | None = None
    ) -> FeatureStore:
        """One UNet pass on the reference alone, a one-frame video per branch of ``text``
        (B, 77, D) and ``image_embeds`` (B, 1, T, D, with an IP-Adapter), treated as frame 0 of
        the model's layout is (the adapter over itself, motion modules bypassed, no ControlNet
        residuals): the ``K_R``/``V_R`` of every adapter layer (§3.2, Eq. 2), for
        `frames_noise`. (The UNet's output is not needed; the layers after the last adapter
        layer still run.)"""
        store = FeatureStore()
        sample = reference[:, :, None].expand(text.shape[0], -1, -1, -1, -1)
        with self.adapter.record(self.unet, store), skip_motion_modules(self.unet):
            self.unet(
                sample,
                t,
                encoder_hidden_states=text,
                added_cond_kwargs=image_conditioning(image_embeds),
                return_dict=False,
            )
        return store

    def frames_noise(
        self,
        latents: Tensor,
        t: Tensor,
        text: Tensor,
        down: list[Tensor],
        mid: Tensor,
        image_embeds: Tensor | None = None,
    ) -> Tensor:
        """Noise prediction (B, C, F, h, w) of the UNet on the frames of ``latents`` given their
        ControlNet residuals and IP-Adapter ``image_embeds`` (B, 1, T, D; the UNet gives them
        to every frame). On generated frames alone the reference is the one the adapter reads:
        run inside ``adapter.attach(unet, recorded=reference_features(...))``; `unet_noise`
        puts the reference in front."""
        hidden = text.repeat_interleave(latents.shape[2], dim=0)
        return self.unet(
            latents,
            t,
            encoder_hidden_states=hidden,
            added_cond_kwargs=image_conditioning(image_embeds),
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]

    def window_noise(
        self,
        frames: range,
        latents: Tensor,
        t: Tensor,
        text: Tensor,
        residuals: WindowResiduals,
        reference: Tensor | None = None,
        image_embeds: Tensor | None = None,
    ) -> Tensor:
        """Noise prediction of the ``frames`` of the whole video's (1, C, F, h, w) latents, for
        every branch of ``text`` (and of ``image_embeds``), with residuals from ``residuals``:
        `unet_noise` with ``reference`` as frame 0, or `frames_noise` (None: the adapter reads
        a recorded one)."""
        branches = latents[:, :, frames.start : frames.stop].expand(text.shape[0], -1, -1, -1, -1)
        down, mid = residuals.window(frames)
        if reference is None:
            return self.frames_noise(branches, t, text, down, mid, image_embeds)
        return self.unet_noise(branches, reference, t, text, down, mid, image_embeds)

    def step_noise(
        self,
        windows: list[range],
        latents: Tensor,
        reference: Tensor,
        t: Tensor,
        text: Tensor,
        residuals: WindowResiduals,
        cache_reference: bool = True,
        image_embeds: Tensor | None = None,
    ) -> Tensor:
        """Noise prediction (B, C, F, h, w) of one denoising step, for every branch of
        ``text`` (and of IP-Adapter ``image_embeds``): the ``windows``' predictions averaged
        per frame. With ``cache_reference`` (and `reference_cacheable`) the reference goes
        through the UNet once (`reference_features`) and each window holds its generated frames
        only; else the reference is frame 0 of every window's pass."""
        predict = functools.partial(
            self.window_noise,
            latents=latents,
            t=t,
            text=text,
            residuals=residuals,
            image_embeds=image_embeds,
        )
        num_frames = latents.shape[2]
        if not (cache_reference and self.reference_cacheable):
            with self.adapter_context():
                in_pass = functools.partial(predict, reference=reference)
                return windowed_prediction(in_pass, windows, num_frames, frame_dim=2)
        with frame_norms(self.unet, self.adapter.norms):
            recorded = self.reference_features(reference, t, text, image_embeds)
            with self.adapter.attach(self.unet, recorded=recorded):
                return windowed_prediction(predict, windows, num_frames, frame_dim=2)

    @property
    def reference_cacheable(self) -> bool:
        """Whether the reference's path through the UNet is its own (resnets normalising each
        frame alone), so that `reference_features` can run it once a step for all windows."""
        return self.adapter.norms.resnet == "per_frame"

    @contextmanager
    def adapter_context(self) -> Iterator[None]:
        """The reference-frame machinery around UNet calls: the adapter's attention, the
        motion modules skipping frame 0, and the UNet's norms as the adapter records them
        (`anima.models.frame_norms`)."""
        with (
            frame_norms(self.unet, self.adapter.norms),
            self.adapter.attach(self.unet),
            skip_reference_in_motion_modules(self.unet),
        ):
            yield

    def decode(self, latents: Tensor, chunk: int = 8) -> Tensor:
        """(1, C, F, h, w) latents -> (F, 3, H, W) frames in [0, 1], ``chunk`` at a time."""
        flat = latents[0].permute(1, 0, 2, 3) / self.vae.config.scaling_factor
        frames = [
            self.vae.decode(flat[i : i + chunk].to(self.vae.dtype)).sample
            for i in range(0, flat.shape[0], chunk)
        ]
        return ((torch.cat(frames).float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # -- sampling ----------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image: Tensor,
        pose_images: Tensor,
        face_images: Tensor | None = None,
        prompt: str = "",
        negative_prompt: str = "",
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        window: int = 16,
        overlap: int = 4,
        pose_scale: float = 1.0,
        face_scale: float = 1.0,
        generator: torch.Generator | None = None,
        decode_chunk_size: int = 8,
        callback_on_step_end: StepCallback | None = None,
        cache_reference: bool = True,
        ip_adapter_scale: float = 1.0,
    ) -> Tensor:
        """Animate ``image`` (3, H, W) in [0, 1] with ``pose_images`` (F, 3, H, W) and
        optional ``face_images`` (F, 6, H, W), both in [0, 1] at the image's size (H and W
        multiples of 8). Returns the F generated frames (F, 3, H, W) in [0, 1]. After each
        step ``callback_on_step_end`` (`anima.sampling.steps.StepCallback`) may replace the
        latents, as in diffusers.

        With an IP-Adapter in the UNet, ``image`` also gives image tokens to every UNet pass,
        their attention weighted by ``ip_adapter_scale`` (the release: 1; ignored without an
        IP-Adapter). Classifier-free guidance runs when ``guidance_scale > 1`` and the branches
        differ: by the prompt (``prompt`` vs ``negative_prompt``) or by the image tokens (the
        image's vs a zero image's, whenever ``ip_adapter_scale`` is not 0). With equal prompts
        and no image tokens (the default without IP-Adapter, both prompts empty) the guided
        prediction is the conditional one and a single branch runs, exactly as with
        ``guidance_scale=1``. ``cache_reference`` (default) runs
        the reference through the UNet once per step and branch and the windows on their
        generated frames only (see the module docstring); False puts it in front of every
        window as in training (`predict_noise`): the same video up to float rounding, slower,
        for checking. With pooled resnet norms (the release's weights) the reference is always
        in front of every window (`reference_cacheable`)."""
        height, width = image.shape[-2:]
        num_frames = pose_images.shape[0]
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be multiples of {self.vae_scale_factor}")
        if tuple(pose_images.shape[1:]) != (3, height, width):
            raise ValueError(f"pose images must be (F, 3, {height}, {width})")
        if face_images is not None and tuple(face_images.shape) != (num_frames, 6, height, width):
            raise ValueError(f"face images must be ({num_frames}, 6, {height}, {width})")
        device = self._execution_device
        tokens = self.has_ip_adapter and ip_adapter_scale != 0.0
        cfg = guidance_scale > 1.0 and (prompt != negative_prompt or tokens)
        text = self.encode_prompt([negative_prompt, prompt] if cfg else [prompt])
        image_embeds = self.branch_image_embeds(image, cfg)
        pose = pose_images.to(device)
        face = None if face_images is None else face_images.to(device)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        reference = self.encode_reference(image, generator).to(self.unet.dtype)
        latents = self.initial_latents(reference, num_frames, generator)
        windows = sliding_windows(num_frames, window, overlap)
        timesteps = self.scheduler.timesteps

        with (
            self.progress_bar(total=len(timesteps)) as progress,
            self.ip_adapter_scale(ip_adapter_scale),
        ):
            for i, t in enumerate(timesteps):
                residuals = WindowResiduals(
                    self, latents, t, text, pose, face, pose_scale, face_scale
                )
                noise = self.step_noise(
                    windows, latents, reference, t, text, residuals, cache_reference, image_embeds
                )
                if cfg:
                    noise = guided(noise, guidance_scale)
                latents = self.scheduler.step(noise, t, latents, return_dict=False)[0]
                progress.update()
                latents = after_step(callback_on_step_end, self, i, t, latents)
        frames = self.decode(latents, decode_chunk_size)
        self.maybe_free_model_hooks()
        return frames
