"""I2V3D §3.2's keyframe pipeline on tiny models: inversion + injection reproduce the render,
zero masks are plain ControlNet sampling, the start latent, windows of keyframes, the depth."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline
from diffusers.utils.torch_utils import randn_tensor
from torch.nn import functional as F

from anima.attention import SOURCE_CFG_BRANCHES, StepCounter, extended_attention
from anima.methods.i2v3d.keyframes import (
    Guidance,
    WindowGuidance,
    default_layers,
    depth_condition,
    keyframe_indices,
    latent_mask,
)
from anima.methods.i2v3d.loading import i2v3d_scheduler, load_components
from anima.methods.i2v3d.pipeline import I2V3DKeyframePipeline, Text
from anima.sampling.windows import sliding_windows
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = Weights(builtin="tiny")


def make_pipe(base: str) -> I2V3DKeyframePipeline:
    pipe = I2V3DKeyframePipeline(**load_components(TINY, torch.float32, base))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def keyframes(count: int, size: tuple[int, int] = (48, 64), seed: int = 0):
    """Smooth rendered keyframes, distances, a foreground box and a visibility mask."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij"
    )
    shift = torch.rand(count, 3, 1, 1, generator=generator)
    images = (torch.stack([yy, xx, (yy + xx) / 2])[None] + shift).remainder(1.0)
    distance = 1.0 + torch.rand(count, height, width, generator=generator)
    foreground = torch.zeros(count, height, width, dtype=torch.bool)
    foreground[:, 8:32, 16:40] = True
    visible = torch.ones(count, height, width, dtype=torch.bool)
    visible[:, :, 48:] = False
    return images, distance, foreground, visible


def latent_psnr(x: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR of latents, the reference's range as the peak."""
    peak = float(reference.max() - reference.min())
    mse = float(torch.mean((x - reference) ** 2))
    return 10.0 * torch.log10(torch.tensor(peak**2 / mse)).item()


def smooth_latent(size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A smooth (1, 4, h, w) latent of unit std, as SD latents of a photo are (the tiny
    random VAE's latents are near zero: a random decoder cannot draw the picture back, so the
    comparison is in latent space)."""
    coarse = torch.randn(1, 4, 3, 4, generator=torch.Generator().manual_seed(seed))
    latent = F.interpolate(coarse, size=size, mode="bilinear", align_corners=True)
    return latent / latent.std()


def test_inversion_then_full_injection_reproduces_the_render() -> None:
    """A keyframe's latent inverted (ControlNet scale 0, 20 steps) and sampled again with Q/K
    and residual injection on every step, visible and foreground everywhere, comes back:
    about 17 dB latent PSNR (the latent's range as peak; sd15, 20 steps), against about 9.5
    dB for the same inversion sampled without injection (DDIM inversion alone drifts on a
    random model)."""
    pipe = make_pipe("sd15")
    images, distance, _, _ = keyframes(1)
    everywhere = torch.ones(1, *images.shape[-2:], dtype=torch.bool)
    reference = smooth_latent((images.shape[-2] // 8, images.shape[-1] // 8))
    results = {}
    for name, guidance in (
        ("full", Guidance(residual_fraction=1.0, visibility_fraction=1.0)),
        ("none", Guidance(enabled=False)),
    ):
        out = pipe(
            images,
            depth_condition(distance),
            everywhere,
            everywhere,
            num_inference_steps=20,
            controlnet_conditioning_scale=0.0,
            guidance=guidance,
            generator=torch.Generator().manual_seed(1),
            image_latents=reference,
            output_type="latent",
        )
        results[name] = latent_psnr(out, reference)
    assert results["full"] > 15.0, results
    assert results["full"] > results["none"] + 5.0, results


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
def test_zero_masks_are_plain_controlnet_sampling(base: str) -> None:
    """Nothing visible, no foreground: every hook is installed (injection, extended
    attention over a window of one keyframe) and the sampling is diffusers' ControlNet
    pipeline's from the same noise. In float64, where it is bit-exact here (asserted to
    1e-10): in float32 the three-branch batch rounds differently from diffusers' two-branch
    one (2.6e-7 after a step), which guidance 7.5 on a random model grows to 3e-5 in 4 steps."""
    pipe = make_pipe(base).to(torch.float64)
    images, distance, _, _ = keyframes(1)
    images = images.double()
    zero = torch.zeros(1, *images.shape[-2:], dtype=torch.bool)
    depth = depth_condition(distance).double()
    height, width = images.shape[-2:]
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(1, 4, height // 8, width // 8, generator=generator, dtype=torch.float64)
    steps = 4
    ours = pipe(
        images,
        depth,
        zero,
        zero,
        "a red car",
        "ugly",
        num_inference_steps=steps,
        controlnet_conditioning_scale=0.8,
        noise=noise,
        output_type="latent",
    )
    parts = {
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
        "tokenizer": pipe.tokenizer,
        "unet": pipe.unet,
        "controlnet": pipe.controlnet,
        "scheduler": i2v3d_scheduler(),
    }
    if base == "sdxl":
        reference = StableDiffusionXLControlNetPipeline(
            **parts,
            text_encoder_2=pipe.text_encoder_2,
            tokenizer_2=pipe.tokenizer_2,
            add_watermarker=False,
        )
    else:
        reference = StableDiffusionControlNetPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        "a red car",
        image=depth,
        negative_prompt="ugly",
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=7.5,
        controlnet_conditioning_scale=0.8,
        latents=noise.clone(),
        output_type="latent",
    ).images
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, expected, atol=1e-10, rtol=0)
    assert not torch.equal(ours, noise)


def test_the_start_is_the_inversion_where_visible_and_the_seeded_noise_elsewhere() -> None:
    pipe = make_pipe("sd15")
    images, distance, foreground, visible = keyframes(2)
    pipe(
        images,
        depth_condition(distance),
        foreground,
        visible,
        "a cat",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(5),
    )
    shape = (2, 4, images.shape[-2] // 8, images.shape[-1] // 8)
    noise = randn_tensor(shape, generator=torch.Generator().manual_seed(5))
    inside = latent_mask(visible, shape[-2:]).expand(shape)
    assert pipe.start is not None and pipe.trajectory is not None
    assert bool(inside.any()) and bool((~inside).any())
    assert torch.equal(pipe.start[~inside], noise[~inside])
    assert torch.equal(pipe.start[inside], pipe.trajectory[0][inside])
    assert not torch.equal(pipe.trajectory[0][inside], noise[inside])


def test_seven_keyframes_are_two_windows_sharing_keyframe_three() -> None:
    """Windows 0-3 and 3-6; keyframe 3's prediction is the mean of both windows', the others
    their one window's (each window under its own masks and extended attention)."""
    assert sliding_windows(7, 4, 1) == [range(0, 4), range(3, 7)]
    pipe = make_pipe("sd15")
    images, distance, foreground, visible = keyframes(7, size=(32, 32))
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(7, 4, 4, 4, generator=generator)
    source = torch.randn(7, 4, 4, 4, generator=generator)
    depth = depth_condition(distance)
    texts = tuple(pipe.encode_text(p, (32, 32)) for p in ("", "ugly", "a cat"))
    guidance = Guidance()
    counter = StepCounter(3)
    t = torch.tensor(501)

    def window_hooks(rows: range, key: range) -> dict[tuple[int, int], WindowGuidance]:
        guide = WindowGuidance(
            pipe.unet, guidance, "sd15", 10, foreground[rows], visible[rows], counter
        )
        return {(key.start, key.stop): guide}

    def predict(rows: range, windows: list[range], hooks: dict) -> torch.Tensor:
        index = list(rows)
        return pipe.step_noise(
            windows, hooks, latents[index], source[index], t, texts, depth[index], 1.0, 7.5
        )

    both = window_hooks(range(0, 4), range(0, 4)) | window_hooks(range(3, 7), range(3, 7))
    joint = predict(range(7), sliding_windows(7, 4, 1), both)
    first = predict(range(0, 4), [range(0, 4)], window_hooks(range(0, 4), range(0, 4)))
    second = predict(range(3, 7), [range(0, 4)], window_hooks(range(3, 7), range(0, 4)))
    torch.testing.assert_close(joint[:3], first[:3], atol=1e-6, rtol=0)
    torch.testing.assert_close(joint[4:], second[1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(joint[3], (first[3] + second[0]) / 2, atol=1e-6, rtol=0)
    assert not torch.allclose(first[3], second[0], atol=1e-4)


def test_extended_attention_over_one_keyframe_is_plain_attention_and_over_two_is_not() -> None:
    pipe = make_pipe("sd15")
    unet = pipe.unet
    _, attention = default_layers("sd15")
    foreground = torch.zeros(2, 32, 32)
    foreground[:, 8:24, 8:24] = 1.0
    text = Text.cat([pipe.encode_text(p, (32, 32)) for p in ("", "ugly", "a cat")])

    def run(frames: int, hooked: bool) -> torch.Tensor:
        sample = torch.randn(3 * frames, 4, 4, 4, generator=torch.Generator().manual_seed(1))
        embeds = text.embeds.repeat_interleave(frames, dim=0)
        if not hooked:
            return unet(sample, 400, encoder_hidden_states=embeds).sample
        with extended_attention(
            unet,
            attention,
            window="all",
            num_frames=frames,
            foreground=foreground[:frames],
            branches=SOURCE_CFG_BRANCHES,
        ):
            return unet(sample, 400, encoder_hidden_states=embeds).sample

    torch.testing.assert_close(run(1, True), run(1, False), atol=1e-6, rtol=0)
    joint, alone = run(2, True), run(2, False)
    torch.testing.assert_close(joint[:2], alone[:2], atol=1e-6, rtol=0)  # the source branch
    assert not torch.allclose(joint[2:], alone[2:], atol=1e-4)


def test_keyframes_every_fifteen_frames_from_frame_zero() -> None:
    assert keyframe_indices(16) == [0, 15]
    assert keyframe_indices(46) == [0, 15, 30, 45]
    assert keyframe_indices(5, 2) == [0, 2, 4]


def test_depth_is_near_bright_min_max_per_keyframe() -> None:
    distance = torch.tensor([[[1.0, 2.0], [3.0, 5.0]], [[10.0, 10.0], [20.0, 30.0]]])
    depth = depth_condition(distance)
    assert depth.shape == (2, 3, 2, 2)
    torch.testing.assert_close(depth[0, 0], torch.tensor([[1.0, 0.75], [0.5, 0.0]]))
    torch.testing.assert_close(depth[1, 2], torch.tensor([[1.0, 1.0], [0.5, 0.0]]))
