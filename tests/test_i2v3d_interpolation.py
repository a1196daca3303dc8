"""I2V3D's interpolation between keyframes (I2V3D §3.3) on tiny random SVD models: the
bidirectional fusion's endpoints, inversion then sampling returning to the render, equality with
diffusers' SVD pipeline when every addition is off, reversed masks in the reversed pass."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline

from anima.methods.i2v3d import interpolation
from anima.methods.i2v3d.interpolation import (
    I2V3DInterpolationPipeline,
    InterpolationGuidance,
    Segment,
)
from anima.models.tiny import tiny_controlnet, tiny_svd_components
from anima.sampling.fusion import fuse_bidirectional, fusion_weights

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (64, 64)
OFF = InterpolationGuidance(enabled=False)


@pytest.fixture(scope="module")
def components() -> dict:
    return tiny_svd_components(seed=0)


def make_pipe(components: dict, random_output: bool = True) -> I2V3DInterpolationPipeline:
    controlnet = tiny_controlnet(components["unet"], seed=1, random_output=random_output)
    pipe = I2V3DInterpolationPipeline(**components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def photo(seed: int) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))


def tensor(image: PIL.Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float() / 255


def segment(frames: int, seed: int = 0, visible: torch.Tensor | None = None) -> Segment:
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.rand(frames, 3, *SIZE, generator=generator)
    depth = torch.rand(frames, 1, *SIZE, generator=generator).expand(-1, 3, -1, -1) * 2 - 1
    if visible is None:
        visible = torch.rand(frames, *SIZE, generator=generator) > 0.3
    return Segment(rgb, depth.contiguous(), visible)


def run(pipe, start, end, window, seed: int = 7, **kwargs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return pipe(start, end, window, generator=generator, **kwargs)


def test_fusion_takes_each_end_from_the_pass_conditioned_there() -> None:
    generator = torch.Generator().manual_seed(0)
    forward = torch.randn(2, 5, 4, 3, 3, generator=generator)
    backward = torch.randn(2, 5, 4, 3, 3, generator=generator)
    fused = fuse_bidirectional(forward, backward)
    assert torch.equal(fused[:, 0], forward[:, 0])
    assert torch.equal(fused[:, -1], backward[:, 0])  # the reversed pass's own first frame
    middle = 0.5 * forward[:, 2] + 0.5 * backward[:, 2]
    torch.testing.assert_close(fused[:, 2], middle)
    assert fusion_weights(5).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_time_symmetric_window_gives_the_reversed_pass_the_forward_pass(components) -> None:
    """Render, depth, masks and latents read the same both ways and both keyframes are one
    image: the reversed pass sees exactly the forward pass's inputs, so its prediction, brought
    back to forward time, is the forward one reversed."""
    pipe = make_pipe(components)
    half = segment(3, seed=2)
    window = Segment(
        torch.cat([half.rgb, half.rgb[:2].flip(0)]),
        torch.cat([half.depth, half.depth[:2].flip(0)]),
        torch.cat([half.visible, half.visible[:2].flip(0)]),
    )
    key = tensor(photo(3))
    pipe.scheduler.set_timesteps(3)
    aug = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    args = (aug, 30, 127, 0.02, True)
    forward = pipe.pass_inputs(window.rgb[0], key, window, *args)
    back = window.reversed()
    backward = pipe.pass_inputs(back.rgb[0], key, back, *args)
    latents = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    latents = torch.cat([latents, latents[:, :2].flip(1)], dim=1)
    for inputs in (forward, backward):
        inputs.inverted = [latents * 1.1] * 3
    guidance = InterpolationGuidance()
    ahead = pipe._guided_pass(latents, 0, forward, guidance, 1.0)
    behind = pipe._guided_pass(latents.flip(1), 0, backward, guidance, 1.0)
    assert torch.equal(behind.flip(1), ahead.flip(1)) and torch.equal(behind, ahead)
    fused = fuse_bidirectional(ahead, behind)
    weights = fusion_weights(5).to(ahead.dtype).reshape(1, 5, 1, 1, 1)
    torch.testing.assert_close(fused, torch.lerp(ahead, ahead.flip(1), weights))


def test_with_everything_off_it_is_stock_svd(components) -> None:
    """ControlNet scale 0, no injection, no reversed pass, no anchoring: diffusers'
    StableVideoDiffusionPipeline from the start keyframe with constant guidance 1.5."""
    pipe = make_pipe(components)
    start = photo(0)
    frames = 4
    latents = torch.randn(1, frames, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    ours = run(
        pipe,
        tensor(start),
        tensor(photo(1)),
        segment(frames, visible=torch.zeros(frames, *SIZE, dtype=torch.bool)),  # all fresh noise
        num_inference_steps=3,
        controlnet_conditioning_scale=0.0,
        guidance=OFF,
        bidirectional=False,
        anchor_keyframes=False,
        latents=latents,
        output_type="latent",
    )
    stock = StableVideoDiffusionPipeline(**components)
    stock.set_progress_bar_config(disable=True)
    expected = stock(
        start,
        height=SIZE[0],
        width=SIZE[1],
        num_frames=frames,
        num_inference_steps=3,
        min_guidance_scale=1.5,
        max_guidance_scale=1.5,
        fps=30,
        motion_bucket_id=127,
        noise_aug_strength=0.02,
        generator=torch.Generator().manual_seed(7),
        latents=latents,
        output_type="latent",
    ).frames
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max() <= 1e-5


@torch.no_grad()
def test_inversion_then_sampling_returns_to_the_render(components) -> None:
    """From the forward inversion's most noisy latent, sampling with the render's own first
    frame as the keyframe and no guidance retraces the inversion back to the render's latents.
    On this random model the plain Euler inversion (the release's) is far off (mean relative
    error 2.77 at 25 steps: SVD's sigmas reach 700 and a random model's prediction is not
    smooth); solving each step by fixed-point iteration brings it back (0.026 with 10)."""
    pipe = make_pipe(components)
    window = segment(4, seed=3, visible=torch.ones(4, *SIZE, dtype=torch.bool))
    render = pipe.encode_frames(window.rgb)

    def error(refinements: int) -> float:
        out = run(
            pipe,
            window.rgb[0],
            window.rgb[-1],
            window,
            num_inference_steps=25,
            guidance_scale=1.0,
            guidance=OFF,
            bidirectional=False,
            anchor_keyframes=False,
            noise_aug_strength=0.0,
            inversion_refinements=refinements,
            output_type="latent",
        )
        return float((out - render).abs().mean() / render.abs().mean())

    plain, refined = error(0), error(10)
    assert refined < 0.05 and refined < plain / 20, (plain, refined)


def test_the_reversed_pass_gets_the_masks_reversed(components, monkeypatch) -> None:
    """The release reverses latents, depth and inverted latents but not the visibility masks;
    here the reversed pass's masks are the forward pass's in reverse order."""
    masks: list[torch.Tensor] = []
    original = interpolation.inject

    def recording(*args, **kwargs):
        if kwargs.get("mask") is not None:
            masks.append(kwargs["mask"].clone())
        return original(*args, **kwargs)

    monkeypatch.setattr(interpolation, "inject", recording)
    pipe = make_pipe(components)
    window = segment(4, seed=4)
    run(pipe, window.rgb[0], window.rgb[-1], window, num_inference_steps=1, output_type="latent")
    forward, backward = masks  # one step: one forward and one reversed pass
    assert torch.equal(forward, window.visible.float())
    assert torch.equal(backward, window.visible.flip(0).float())
    assert not torch.equal(backward, forward)


def test_injection_and_the_reversed_pass_change_the_video(components) -> None:
    pipe = make_pipe(components)
    window = segment(4, seed=5)
    start, end = tensor(photo(6)), tensor(photo(7))
    kwargs = {"num_inference_steps": 2, "output_type": "latent"}
    full = run(pipe, start, end, window, **kwargs)
    assert full.shape == (1, 4, 4, 8, 8) and torch.isfinite(full).all()
    for change in ({"guidance": OFF}, {"bidirectional": False}):
        assert (run(pipe, start, end, window, **kwargs, **change) - full).abs().max() > 1e-4
    again = run(pipe, start, end, window, **kwargs)
    assert torch.equal(again, full)  # deterministic by seed


def test_anchoring_makes_the_window_end_on_its_keyframes(components) -> None:
    pipe = make_pipe(components)
    window = segment(4, seed=8)
    start, end = tensor(photo(9)), tensor(photo(10))
    latents = run(pipe, start, end, window, num_inference_steps=2, output_type="latent")
    keys = pipe.encode_frames(torch.stack([start, end]))
    assert torch.equal(latents[:, 0], keys[:, 0]) and torch.equal(latents[:, -1], keys[:, 1])


def test_sequential_branches_equal_the_batched_pass(components) -> None:
    """Source, uncond and cond one call each (the source's features recorded and replayed):
    the same video as the batched three-branch pass, with a third of the activations (up to
    float32 rounding of another batch size, which SVD's first sigma, 700, magnifies: at most
    6e-5 here)."""
    pipe = make_pipe(components)
    window = segment(4, seed=11)
    start, end = tensor(photo(12)), tensor(photo(13))
    kwargs = {"num_inference_steps": 2, "output_type": "latent"}
    batched = run(pipe, start, end, window, **kwargs)
    sequential = run(pipe, start, end, window, sequential_branches=True, **kwargs)
    torch.testing.assert_close(sequential, batched, atol=2e-4, rtol=1e-3)
    weaker = InterpolationGuidance(strength=0.5)
    torch.testing.assert_close(
        run(pipe, start, end, window, guidance=weaker, sequential_branches=True, **kwargs),
        run(pipe, start, end, window, guidance=weaker, **kwargs),
        atol=2e-4,
        rtol=1e-3,
    )
    assert (run(pipe, start, end, window, guidance=weaker, **kwargs) - batched).abs().max() > 1e-3
