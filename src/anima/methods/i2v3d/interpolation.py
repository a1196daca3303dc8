"""I2V3D's 3D-guided interpolation between keyframes (I2V3D §3.3): `I2V3DInterpolationPipeline`.

Between two keyframes k and k+1 (N frames, both included) SVD, with the temporal depth
ControlNet fed the render's depth, fills in the frames:

1. **Inversion.** The rendered segment is VAE-encoded and Euler-inverted on SVD's sigmas
   (`anima.sampling.euler_inversion`, 25 steps, no guidance) twice: forward, conditioned on
   the rendered first frame, and time-reversed (frames and depth in reverse order), conditioned
   on the rendered last frame. Every step's latent is kept.
2. **Start latent.** The forward inversion's most noisy latent where the render is visible,
   fresh noise (at the sampler's initial sigma) where it is not.
3. **Sampling**, 25 Euler steps. Each step runs two passes, each one UNet call on the batch
   ``[source, uncond, cond]`` (`anima.attention.SOURCE_CFG_BRANCHES`): the source branch
   denoises that step's inverted latent with the render's conditioning (what the inversion
   saw), and its features go into the other two through the hook layer (`anima.attention.
   inject`): the output of ``up_blocks[1].resnets[1]`` (after its time mixer) unmasked, and
   self-attention Q and K of the paper's layers 4-11 (`QK_LAYERS`) masked by visibility, on
   every step. The forward pass is conditioned on keyframe k; the reversed pass sees the
   latents, depth, inverted latents and visibility masks in reverse order and is conditioned
   on keyframe k+1 (the release forgets to reverse the masks). Their v-predictions are fused
   before guidance, w_f = f / (N - 1) (`anima.sampling.fusion`), then CFG 1.5 constant.
4. **Anchoring.** The window's first and last latents are the keyframes' own at the end
   (``anchor_keyframes``), so windows that share a keyframe agree on it exactly; the paper's
   keyframes anchor both ends through conditioning alone (``anchor_keyframes=False``).

Conditioning as the release sets it: motion bucket 127, noise augmentation 0.02, fps 30 (the
model receives fps - 1 = 29, as diffusers' SVD pipeline does; inversion uses the same). The
CLIP image embedding is normalised with CLIP's mean and std, as SVD and the ControlNet were
trained; the release feeds the resized image unnormalised (``release_clip_input``).
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from anima.attention import SOURCE_CFG_BRANCHES, FeatureStore, capture, inject
from anima.attention.layers import Patterns
from anima.methods.i2v3d.keyframes import latent_mask, start_latents
from anima.models.svd_pipeline import SVDControlNetPipeline
from anima.sampling.euler_inversion import euler_inversion
from anima.sampling.fusion import fuse_bidirectional
from anima.sampling.steps import StepCallback, after_step, guided
from anima.training.edm import edm_input_scale, v_prediction_denoised

#: Self-attention layers whose Q and K are injected: the paper's layers 4-11, i.e. the spatial
#: ``attn1`` of every up block's transformer but the first of ``up_blocks[1]`` (SVD's
#: ``up_blocks[0]`` has none).
QK_LAYERS = re.compile(r"up_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\.attn1")
QK_EXCLUDE = "up_blocks.1.attentions.0.*"
#: The res block whose output is injected (I2V3D §3.3; after its time mixer).
RESNET_LAYER = "up_blocks.1.resnets.1"

STEPS = 25
GUIDANCE_SCALE = 1.5
MOTION_BUCKET = 127
NOISE_AUG = 0.02
FPS = 30


@dataclass(frozen=True)
class InterpolationGuidance:
    """What the render injects (module docstring, step 3); ``enabled`` False: no hook at all
    (plain SVD + ControlNet sampling with a source branch beside it). ``strength`` blends the
    injected features with the pass's own (1: replaced; I2V3D §5's weaker 3D guidance)."""

    enabled: bool = True
    attention: Patterns = QK_LAYERS
    attention_exclude: Patterns | None = QK_EXCLUDE
    resnets: Patterns | None = RESNET_LAYER
    strength: float = 1.0


@dataclass
class Segment:
    """One window of the render at the generation size: ``rgb`` (N, 3, H, W) in [0, 1],
    ``depth`` (N, 3, H, W) the ControlNet's input in [-1, 1], ``visible`` (N, H, W) bool."""

    rgb: Tensor
    depth: Tensor
    visible: Tensor

    def reversed(self) -> Segment:
        return Segment(self.rgb.flip(0), self.depth.flip(0), self.visible.flip(0))

    @property
    def num_frames(self) -> int:
        return int(self.rgb.shape[0])


@dataclass
class PassInputs:
    """One direction's batch ``[source, uncond, cond]``: conditioning, control, masks and
    the inversion it reads its source latents from."""

    embedding: Tensor
    image_latents: Tensor
    time_ids: Tensor
    control: Tensor
    visible: Tensor
    inverted: list[Tensor] = field(default_factory=list)


class I2V3DInterpolationPipeline(SVDControlNetPipeline):
    """Keyframe k, keyframe k+1 and the rendered segment between them -> the segment's frames
    (module docstring). Components as `StableVideoDiffusionPipeline`'s plus the temporal depth
    ControlNet (`anima.models.svd_controlnet.SVDControlNetModel`)."""

    def encode_frames(self, frames: Tensor) -> Tensor:
        """(N, 3, H, W) in [0, 1] -> (1, N, 4, h, w) latents as SVD samples them (VAE mode
        times the scaling factor)."""
        pixels = (frames * 2 - 1).to(self._execution_device, self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.mode() * self.vae.config.scaling_factor
        return latents[None].to(self.unet.dtype)

    def pass_inputs(
        self,
        render_frame: Tensor,
        keyframe: Tensor,
        segment: Segment,
        aug_noise: Tensor,
        fps: int,
        motion_bucket_id: int,
        noise_aug_strength: float,
        normalise: bool,
    ) -> PassInputs:
        """The batch of one direction: the source branch conditioned on the rendered frame,
        the unconditional branch on zeros, the conditional one on the keyframe."""
        args = (aug_noise, segment.num_frames, fps, motion_bucket_id, noise_aug_strength, False)
        source = self.prepare_conditioning(render_frame[None], *args, normalise=normalise)
        cond = self.prepare_conditioning(keyframe[None], *args, normalise=normalise)
        embedding = torch.cat([source[0], torch.zeros_like(cond[0]), cond[0]])
        image_latents = torch.cat([source[1], torch.zeros_like(cond[1]), cond[1]])
        time_ids = torch.cat([source[2]] * 3)
        control = segment.depth[None].to(self._execution_device, self.controlnet.dtype)
        return PassInputs(embedding, image_latents, time_ids, control, segment.visible)

    def velocity(
        self, scaled: Tensor, step: int, inputs: PassInputs, rows: slice, scale: float
    ) -> Tensor:
        """SVD's v-prediction at sampling step ``step`` for the rows ``rows`` of the pass's
        batch, ``scaled`` one entry a row, already scaled by 1 / sqrt(sigma^2 + 1) (the
        scheduler's ``scale_model_input``); with the ControlNet."""
        sample = torch.cat([scaled, inputs.image_latents[rows]], dim=2)
        return self.predict_noise(
            sample,
            self.scheduler.timesteps[step],
            inputs.embedding[rows],
            inputs.time_ids[rows],
            inputs.control.expand(sample.shape[0], -1, -1, -1, -1),
            scale,
        )

    def invert(
        self, latents: Tensor, inputs: PassInputs, scale: float, refinements: int = 0
    ) -> list[Tensor]:
        """Euler inversion of clean ``latents`` (1, N, 4, h, w) with the source branch's
        conditioning, no guidance (`anima.sampling.euler_inversion`)."""

        def denoise(x: Tensor, step: int) -> Tensor:
            sigma = self.scheduler.sigmas[step].to(x.device, x.dtype)
            v = self.velocity(x * edm_input_scale(sigma), step, inputs, slice(0, 1), scale)
            return v_prediction_denoised(x, v, sigma)

        return euler_inversion(denoise, latents, self.scheduler.sigmas, refinements)

    def _guided_pass(
        self,
        latents: Tensor,
        step: int,
        inputs: PassInputs,
        guidance: InterpolationGuidance,
        scale: float,
        sequential: bool = False,
    ) -> Tensor:
        """(2, N, ...) v-predictions ``[uncond, cond]`` of one direction at ``step``, the
        source branch's features injected (module docstring, step 3). ``sequential``: the
        three branches one call each (a third of the activations), the source's features
        recorded (`anima.attention.capture`) and replayed into the other two; same result."""
        t = self.scheduler.timesteps[step]
        batch = torch.cat([inputs.inverted[step], latents, latents])
        batch = self.scheduler.scale_model_input(batch, t)
        if not sequential:
            with self._injection(guidance, inputs, "source", SOURCE_CFG_BRANCHES):
                return self.velocity(batch, step, inputs, slice(0, 3), scale)[1:]
        store = FeatureStore()
        with self._recording(guidance, store):
            self.velocity(batch[:1], step, inputs, slice(0, 1), scale)
        rows = []
        for row in (1, 2):
            with self._injection(guidance, inputs, store, None):
                rows.append(
                    self.velocity(batch[row : row + 1], step, inputs, slice(row, row + 1), scale)
                )
        return torch.cat(rows)

    def _recording(self, guidance: InterpolationGuidance, store: FeatureStore) -> ExitStack:
        """Hooks recording what `_injection` puts in (none when injection is off)."""
        hooks = ExitStack()
        if guidance.enabled:
            hooks.enter_context(
                capture(
                    self.unet,
                    store,
                    layers=guidance.attention,
                    kinds=("q", "k"),
                    resnets=guidance.resnets,
                    exclude=guidance.attention_exclude,
                )
            )
        return hooks

    def _injection(
        self,
        guidance: InterpolationGuidance,
        inputs: PassInputs,
        source: FeatureStore | str,
        branches: tuple[str, ...] | None,
    ) -> ExitStack:
        """Hooks putting the source's Q/K (masked by visibility) and res-block output
        (unmasked) into the call's target rows (none when injection is off)."""
        hooks = ExitStack()
        if not guidance.enabled:
            return hooks
        where = {"branches": branches, "num_frames": inputs.visible.shape[0]}
        hooks.enter_context(
            inject(
                self.unet,
                source,
                layers=guidance.attention,
                kinds=("q", "k"),
                exclude=guidance.attention_exclude,
                mask=inputs.visible.float() * guidance.strength,
                **where,
            )
        )
        if guidance.resnets is not None:
            everywhere = None  # unmasked; a uniform blend below full strength
            if guidance.strength != 1.0:
                everywhere = torch.full((1, 1), guidance.strength)
            hooks.enter_context(
                inject(self.unet, source, resnets=guidance.resnets, mask=everywhere, **where)
            )
        return hooks

    @torch.no_grad()
    def __call__(  # noqa: PLR0913 - the pipeline's knobs are its public API
        self,
        start_keyframe: Tensor,
        end_keyframe: Tensor,
        segment: Segment,
        num_inference_steps: int = STEPS,
        guidance_scale: float = GUIDANCE_SCALE,
        fps: int = FPS,
        motion_bucket_id: int = MOTION_BUCKET,
        noise_aug_strength: float = NOISE_AUG,
        controlnet_conditioning_scale: float = 1.0,
        guidance: InterpolationGuidance | None = None,
        bidirectional: bool = True,
        anchor_keyframes: bool = True,
        release_clip_input: bool = False,
        inversion_refinements: int = 0,
        sequential_branches: bool = False,
        decode_chunk_size: int | None = None,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        output_type: str = "pt",
        callback_on_step_end: StepCallback | None = None,
    ) -> Tensor:
        """Interpolate one window.

        Args:
            start_keyframe, end_keyframe: (3, H, W) in [0, 1], the window's first and last
                frames as the keyframe stage made them.
            segment: the render of the window (`Segment`), N frames at (H, W), multiples of 8.
            guidance: what is injected (default `InterpolationGuidance()`).
            bidirectional: fuse the time-reversed pass (False: the forward pass alone, i.e.
                SVD + ControlNet from the start keyframe, with injection).
            anchor_keyframes: the first and last latents end as the keyframes' (module
                docstring, step 4).
            release_clip_input: feed CLIP the unnormalised image, as the release.
            inversion_refinements: fixed-point iterations of each inversion step
                (`anima.sampling.euler_inversion`; 0, the release's plain inversion).
            sequential_branches: run source, uncond and cond one call each (less memory,
                the same result up to float rounding).
            generator: the random source: noise augmentation, then the start noise.
            latents: the start noise (1, N, 4, h, w) at unit scale, as diffusers' pipelines
                take it, instead of drawing it (where the render is visible the start is the
                inverted latent all the same).
            output_type: "pt" for frames (N, 3, H, W) in [0, 1], "latent" for (1, N, 4, h, w).
        """
        guidance = guidance or InterpolationGuidance()
        frames = segment.num_frames
        height, width = segment.rgb.shape[-2:]
        if height % 8 or width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")
        self.check_controlnet_stem()
        device = self._execution_device
        scale = controlnet_conditioning_scale
        normalise = not release_clip_input
        aug_noise = randn_tensor(
            (1, 3, height, width), generator=generator, device=device, dtype=torch.float32
        )
        conditioning = (aug_noise, fps, motion_bucket_id, noise_aug_strength, normalise)
        forward = self.pass_inputs(segment.rgb[0], start_keyframe, segment, *conditioning)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        render_latents = self.encode_frames(segment.rgb)
        refine = inversion_refinements
        forward.inverted = self.invert(render_latents, forward, scale, refine)
        backward = None
        if bidirectional:
            back = segment.reversed()
            backward = self.pass_inputs(back.rgb[0], end_keyframe, back, *conditioning)
            backward.inverted = self.invert(render_latents.flip(1), backward, scale, refine)

        start = forward.inverted[0]
        if latents is None:
            latents = randn_tensor(start.shape, generator=generator, device=device)
        noise = latents.to(device, start.dtype) * self.scheduler.init_noise_sigma
        visible = latent_mask(segment.visible, tuple(noise.shape[-2:]))
        latents = start_latents(start, noise, visible[None])
        cfg = guidance_scale
        with self.progress_bar(total=num_inference_steps) as progress:
            for step, t in enumerate(self.scheduler.timesteps):
                one = sequential_branches
                velocity = self._guided_pass(latents, step, forward, guidance, scale, one)
                if backward is not None:
                    back = latents.flip(1)
                    reversed_v = self._guided_pass(back, step, backward, guidance, scale, one)
                    velocity = fuse_bidirectional(velocity, reversed_v)
                velocity = guided(velocity, cfg)
                latents = self.scheduler.step(velocity, t, latents).prev_sample
                latents = after_step(callback_on_step_end, self, step, t, latents)
                progress.update()

        if anchor_keyframes:
            ends = self.encode_frames(torch.stack([start_keyframe, end_keyframe]))
            latents = latents.clone()
            latents[:, 0], latents[:, -1] = ends[:, 0], ends[:, 1]
        if output_type == "latent":
            self.maybe_free_model_hooks()
            return latents
        decoded = self.decode_latents(latents, frames, decode_chunk_size or frames)
        self.maybe_free_model_hooks()
        return (decoded[0].permute(1, 0, 2, 3) / 2 + 0.5).clamp(0, 1)
