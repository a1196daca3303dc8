"""`I2V3DKeyframePipeline`: I2V3D §3.2's keyframe generation, one code path for SDXL and SD1.5.

(I2V3D §3.2, "Keyframe generation"; README, "I2V3D"; docs/architecture.md, "A method
folder".) Components (`anima.methods.i2v3d.loading`): a text-to-image `UNet2DConditionModel`,
its `AutoencoderKL`, CLIP text encoder(s) and tokenizer(s) (SDXL: two, the second with a
projection, and SDXL's "text_time" added conditioning), a depth `ControlNetModel` and the
release's `DDIMScheduler`; optionally a LoRA (`load_lora`, diffusers' `load_lora_weights`).

A call, for K rendered keyframes (RGB, depth condition, foreground, visibility):

1. fresh noise (K, 4, h, w) drawn FIRST from the generator (as diffusers' pipelines draw their
   latents; never the global RNG);
2. the rendered keyframes are VAE-encoded (the posterior mean) and inverted with DDIM, the
   empty prompt, no guidance, the ControlNet on their depth; every step's latent is kept
   (`anima.methods.i2v3d.inversion`);
3. the start latent is the inverted z_T where the render is visible, the noise elsewhere
   (`anima.methods.i2v3d.keyframes.start_latents`);
4. DDIM sampling, each UNet call's batch ``[source, uncond, cond]``: the source branch denoises
   the inversion's latent of that step with the empty prompt, uncond / cond the sample with the
   negative prompt / the prompt; the ControlNet sees every branch with its text; the guidance
   hooks (`anima.methods.i2v3d.keyframes.WindowGuidance`: residual and Q/K injection from the
   source, extended attention) act on uncond and cond. Keyframes are denoised in windows
   (`anima.sampling.windows`, 4 keyframes overlapping by 1); a keyframe two windows share gets
   the average of their guided noise predictions, which for a DDIM step (linear in the noise
   for a given latent and timestep) is the average of the two windows' next latents;
5. decoding.

``callback_on_step_end(pipe, i, t, {"latents": ...})`` runs after each step
(`anima.sampling.steps`). With `Guidance.enabled` False and masks that leave no pixel visible,
the uncond / cond branches are exactly diffusers' `StableDiffusionControlNetPipeline` /
`StableDiffusionXLControlNetPipeline` sampling from the same noise.

Known differences from the release: any size that is a multiple of 8 (the release's masks are
hard-coded for 1024x576); the fresh noise comes from the seeded generator (the release draws it
from the unseeded global RNG); the source branch at step 0 is not scaled twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from anima.attention import StepCounter
from anima.errors import InputError
from anima.methods.i2v3d.inversion import check_timesteps, ddim_inversion
from anima.methods.i2v3d.keyframes import (
    Guidance,
    WindowGuidance,
    latent_mask,
    start_latents,
)
from anima.methods.i2v3d.loading import LORA_FILE
from anima.methods.i2v3d.lora import check_lora, quiet_text_encoder_notes, read_lora_info
from anima.sampling.steps import StepCallback, after_step, guided
from anima.sampling.windows import sliding_windows, windowed_prediction

#: The LoRA adapter's name in the UNet.
LORA_ADAPTER = "i2v3d"
_LORA_DOWN = (".lora_A.", ".lora.down.", ".lora_down.")


@dataclass
class Text:
    """Text conditioning of a batch: ``embeds`` (B, 77, D) and, for SDXL, the added
    conditioning ``pooled`` (B, D2) and ``time_ids`` (B, 6)."""

    embeds: Tensor
    pooled: Tensor | None = None
    time_ids: Tensor | None = None

    def repeat(self, times: int) -> Text:
        def rows(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.repeat_interleave(times, dim=0)

        return Text(
            self.embeds.repeat_interleave(times, dim=0), rows(self.pooled), rows(self.time_ids)
        )

    @staticmethod
    def cat(parts: Sequence[Text]) -> Text:
        def join(xs: list[Tensor | None]) -> Tensor | None:
            return None if xs[0] is None else torch.cat(xs)  # type: ignore[arg-type]

        return Text(
            torch.cat([p.embeds for p in parts]),
            join([p.pooled for p in parts]),
            join([p.time_ids for p in parts]),
        )

    def added(self) -> dict[str, Tensor] | None:
        """The UNet's / ControlNet's ``added_cond_kwargs`` (SDXL), else None."""
        if self.pooled is None:
            return None
        return {"text_embeds": self.pooled, "time_ids": self.time_ids}


class I2V3DKeyframePipeline(DiffusionPipeline, StableDiffusionXLLoraLoaderMixin):
    """Rendered keyframes + prompt -> keyframes. See the module docstring."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["text_encoder_2", "tokenizer_2"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        scheduler: DDIMScheduler,
        text_encoder_2: CLIPTextModelWithProjection | None = None,
        tokenizer_2: CLIPTokenizer | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.lora: tuple[Path, float] | None = None  # the LoRA loaded, and its scale
        self.trajectory: Tensor | None = None  # the last call's inversion, for inspection
        self.start: Tensor | None = None  # and its start latents

    @property
    def base(self) -> Literal["sdxl", "sd15"]:
        """``"sdxl"`` with a second text encoder ("text_time" added conditioning), else
        ``"sd15"``."""
        return "sdxl" if self.text_encoder_2 is not None else "sd15"

    # -- LoRA ------------------------------------------------------------------------------

    def use_lora(self, folder: Path | None, scale: float = 1.0) -> None:
        """Make ``folder``'s LoRA at ``scale`` the one in use (None: none), unloading another
        first; loading the same one again is free."""
        wanted = None if folder is None else (Path(folder), scale)
        if wanted == self.lora:
            return
        if self.lora is not None:
            self.unload_lora_weights()
            self.lora = None
        if wanted is not None:
            self.load_lora(*wanted)
            self.lora = wanted

    def load_lora(self, folder: Path, scale: float = 1.0) -> None:
        """Load the LoRA in ``folder`` (``pytorch_lora_weights.safetensors``, diffusers'
        ``save_lora_weights`` layout) with diffusers' ``load_lora_weights`` at ``scale``. A
        LoRA made for another UNet (another base model) is an `InputError` naming the folder,
        before anything is loaded."""
        folder = Path(folder)
        if not (folder / LORA_FILE).is_file():
            raise InputError(f"LoRA: {LORA_FILE} not found", f"in {folder}")
        if read_lora_info(folder) is not None:  # trained by anima: its record names the base
            check_lora(folder, self.base)
        try:
            state = self.lora_state_dict(
                str(folder), weight_name=LORA_FILE, unet_config=self.unet.config
            )[0]
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise InputError(f"cannot read the LoRA ({error})", str(folder)) from error
        check_lora_fits(state, self.unet, self.base, folder)
        try:
            with quiet_text_encoder_notes():
                self.load_lora_weights(dict(state), adapter_name=LORA_ADAPTER)
        except (ValueError, KeyError, RuntimeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise InputError(f"cannot load the LoRA ({reason})", str(folder)) from error
        self.set_adapters([LORA_ADAPTER], [scale])

    # -- conditioning ----------------------------------------------------------------------

    def encode_text(self, prompt: str, size: tuple[int, int]) -> Text:
        """One prompt's conditioning, as diffusers' SD / SDXL ControlNet pipelines compute it:
        SD1.5 the text encoder's last hidden state; SDXL both encoders' penultimate hidden
        states concatenated, the second's projected pooled output and the time ids (original
        size = target size = ``size``, crop 0, 0)."""
        device = self._execution_device
        if self.text_encoder_2 is None:
            ids = self._ids(self.tokenizer, prompt)
            embeds = self.text_encoder(ids.to(device))[0]
            return Text(embeds.to(self.text_encoder.dtype))
        hidden = []
        pooled = None
        for tokenizer, encoder in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            out = encoder(self._ids(tokenizer, prompt).to(device), output_hidden_states=True)
            if out[0].ndim == 2:
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        dtype = self.text_encoder_2.dtype
        embeds = torch.cat(hidden, dim=-1).to(dtype)
        time_ids = torch.tensor([[*size, 0, 0, *size]], dtype=dtype, device=device)
        assert pooled is not None
        return Text(embeds, pooled.to(dtype), time_ids)

    @staticmethod
    def _ids(tokenizer: CLIPTokenizer, prompt: str) -> Tensor:
        return tokenizer(
            [prompt],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def encode_images(self, images: Tensor) -> Tensor:
        """(K, 3, H, W) in [0, 1] -> (K, 4, h, w): the VAE posterior means times its scaling
        factor (the inversion's input)."""
        pixels = images.to(self._execution_device, self.vae.dtype) * 2.0 - 1.0
        mean = torch.cat([self.vae.encode(p[None]).latent_dist.mean for p in pixels])
        return mean * self.vae.config.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """(K, 4, h, w) -> (K, 3, H, W) float32 in [0, 1], one keyframe at a time."""
        scaled = latents / self.vae.config.scaling_factor
        frames = [self.vae.decode(x[None].to(self.vae.dtype)).sample for x in scaled]
        return (torch.cat(frames).float() * 0.5 + 0.5).clamp(0.0, 1.0)

    # -- the model ---------------------------------------------------------------------------

    def noise(self, sample: Tensor, t: Tensor, text: Text, control: Tensor, scale: float) -> Tensor:
        """The UNet's noise prediction for ``sample`` (B, 4, h, w) with the ControlNet's
        residuals for ``control`` (B, 3, H, W) in [0, 1] at ``scale``."""
        added = text.added()
        down, mid = self.controlnet(
            sample,
            t,
            encoder_hidden_states=text.embeds,
            controlnet_cond=control.to(sample.dtype),
            conditioning_scale=scale,
            guess_mode=False,
            added_cond_kwargs=added,
            return_dict=False,
        )
        return self.unet(
            sample,
            t,
            encoder_hidden_states=text.embeds,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]

    def invert(
        self, latents: Tensor, control: Tensor, text: Text, steps: int, scale: float
    ) -> Tensor:
        """The inversion trajectory (steps, K, 4, h, w) of the keyframes' ``latents`` (K, 4,
        h, w) with ``text`` (one row: the empty prompt) and the depth ``control`` (K, 3, H, W)
        (`anima.methods.i2v3d.inversion.ddim_inversion`)."""
        check_timesteps(self.scheduler, steps, latents.device)
        rows = text.repeat(latents.shape[0])

        def predict(sample: Tensor, t: Tensor) -> Tensor:
            return self.noise(sample, t, rows, control, scale)

        return ddim_inversion(predict, self.scheduler, latents, steps)

    def step_noise(
        self,
        windows: list[range],
        hooks: dict[tuple[int, int], WindowGuidance],
        latents: Tensor,
        source: Tensor,
        t: Tensor,
        texts: tuple[Text, Text, Text],
        control: Tensor,
        scale: float,
        guidance_scale: float,
    ) -> Tensor:
        """The guided noise prediction (K, 4, h, w) of one step: per window of keyframes one
        call on ``[source, uncond, cond]`` (``source`` the inversion's latents of the step,
        ``texts`` the empty, negative and positive prompts') under the window's hooks,
        averaged over the windows sharing a keyframe (`anima.sampling.windows`)."""

        def predict(frames: range) -> Tensor:
            rows = list(frames)
            n = len(rows)
            batch = torch.cat([source[rows], latents[rows], latents[rows]])
            batch = self.scheduler.scale_model_input(batch, t)
            text = Text.cat([part.repeat(n) for part in texts])
            with hooks[(frames.start, frames.stop)]:
                out = self.noise(batch, t, text, control[rows].repeat(3, 1, 1, 1), scale)
            return guided(out[n:], guidance_scale)

        return windowed_prediction(predict, windows, latents.shape[0], frame_dim=0)

    # -- sampling ------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        images: Tensor,
        depth: Tensor,
        foreground: Tensor,
        visible: Tensor,
        prompt: str = "",
        negative_prompt: str = "",
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        controlnet_conditioning_scale: float = 1.0,
        guidance: Guidance | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        image_latents: Tensor | None = None,
        output_type: Literal["pt", "latent"] = "pt",
        callback_on_step_end: StepCallback | None = None,
    ) -> Tensor:
        """Keyframes (K, 3, H, W) float32 in [0, 1] (``output_type="latent"``: the final
        latents (K, 4, H/8, W/8)) from the rendered ``images`` (K, 3, H, W) in [0, 1], their
        ``depth`` conditions (K, 3, H, W) in [0, 1] (near bright,
        `anima.methods.i2v3d.keyframes.depth_condition`), ``foreground`` and ``visible``
        masks (K, H, W) bool or in [0, 1]; H and W multiples of 8. ``guidance`` None is
        `Guidance()` (the release's); ``noise`` (K, 4, H/8, W/8) replaces the fresh noise,
        ``image_latents`` (K, 4, H/8, W/8) the VAE latents of ``images`` (what is inverted).
        See the module docstring."""
        options = Guidance() if guidance is None else guidance
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (K, 3, H, W), got {tuple(images.shape)}")
        count, _, height, width = images.shape
        scale = self.vae_scale_factor
        if height % scale or width % scale:
            raise ValueError(f"height and width must be multiples of {scale}, got {height}x{width}")
        for name, value in (("depth", depth), ("foreground", foreground), ("visible", visible)):
            if value.shape[0] != count or tuple(value.shape[-2:]) != (height, width):
                raise ValueError(f"{name} {tuple(value.shape)} does not match images")
        device = self._execution_device
        size = (height // scale, width // scale)
        dtype = self.unet.dtype
        shape = (count, self.unet.config.in_channels, *size)
        if noise is None:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must be {shape}, got {tuple(noise.shape)}")
        noise = noise.to(device, dtype) * self.scheduler.init_noise_sigma

        empty = self.encode_text("", (height, width))
        negative = self.encode_text(negative_prompt, (height, width))
        positive = self.encode_text(prompt, (height, width))
        control = depth.to(device, dtype)
        if image_latents is None:
            latents = self.encode_images(images).to(dtype)
        elif tuple(image_latents.shape) != shape:
            raise ValueError(f"image_latents must be {shape}, got {tuple(image_latents.shape)}")
        else:
            latents = image_latents.to(device, dtype)
        trajectory = self.invert(
            latents, control, empty, num_inference_steps, controlnet_conditioning_scale
        )
        start = start_latents(trajectory[0], noise, latent_mask(visible, size))
        self.trajectory, self.start = trajectory, start

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        windows = sliding_windows(count, options.window, options.overlap)
        counter = StepCounter()
        hooks = {
            (frames.start, frames.stop): WindowGuidance(
                self.unet,
                options,
                self.base,
                len(timesteps),
                foreground[list(frames)],
                visible[list(frames)],
                counter,
            )
            for frames in windows
        }
        latents = start
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                counter.step = i
                texts = (empty, negative, positive)
                prediction = self.step_noise(
                    windows,
                    hooks,
                    latents,
                    trajectory[i],
                    t,
                    texts,
                    control,
                    controlnet_conditioning_scale,
                    guidance_scale,
                )
                latents = self.scheduler.step(prediction, t, latents, return_dict=False)[0]
                progress.update()
                latents = after_step(callback_on_step_end, self, i, t, latents)
        if output_type == "latent":
            return latents
        frames = self.decode(latents)
        self.maybe_free_model_hooks()
        return frames


def check_lora_fits(
    state: dict[str, Tensor], unet: UNet2DConditionModel, base: str, folder: Path
) -> None:
    """Every UNet layer a LoRA's down-projection targets must exist in ``unet`` with the
    LoRA's input width; otherwise the LoRA was made for another model (an SD1.5 LoRA on SDXL,
    or the reverse): an `InputError` naming the folder and one layer."""
    modules = dict(unet.named_modules())
    wrong: list[str] = []
    total = 0
    for key, tensor in state.items():
        if not key.startswith("unet."):
            continue
        marker = next((m for m in _LORA_DOWN if m in key), None)
        if marker is None:
            continue
        total += 1
        path = key[len("unet.") : key.index(marker)]
        module = modules.get(path)
        width = getattr(module, "in_features", getattr(module, "in_channels", None))
        if module is None or tensor.ndim < 2 or width != tensor.shape[1]:
            wrong.append(path)
    if wrong:
        raise InputError(
            f"the LoRA does not fit the {base} UNet ({len(wrong)} of {total} layers missing or "
            f"of another width, e.g. {wrong[0]}): was it trained on another base model?",
            str(folder),
        )
