"""LeviTorPipeline on tiny random SVD models: equivalences, determinism, memory options."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline

from anima.methods.levitor.pipeline import LeviTorPipeline
from anima.models.tiny import tiny_controlnet, tiny_svd_components

STEPS = 2


@pytest.fixture(scope="module")
def components() -> dict:
    return tiny_svd_components(seed=0)


def make_pipe(components: dict, random_output: bool) -> LeviTorPipeline:
    controlnet = tiny_controlnet(components["unet"], seed=1, random_output=random_output)
    pipe = LeviTorPipeline(**components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def photo(size: tuple[int, int], seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def controls(frames: int, size: tuple[int, int], seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(frames, 3, *size, generator=generator) * 255


def run(pipe, image, control, seed: int = 7, **kwargs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return pipe(image, control, num_inference_steps=STEPS, generator=generator, **kwargs)


def test_zero_controlnet_equals_stock_svd(components) -> None:
    """A zero-initialised ControlNet leaves Stable Video Diffusion's output unchanged."""
    image, control = photo((64, 96)), controls(4, (64, 96))
    ours = run(make_pipe(components, random_output=False), image, control, fps=7)
    stock = StableVideoDiffusionPipeline(**components)
    stock.set_progress_bar_config(disable=True)
    expected = stock(
        image,
        height=64,
        width=96,
        num_frames=4,
        num_inference_steps=STEPS,
        fps=7,
        motion_bucket_id=100,
        noise_aug_strength=0.02,
        generator=torch.Generator().manual_seed(7),
        output_type="pt",
    ).frames[0]
    assert ours.shape == expected.shape == (4, 3, 64, 96)
    assert (ours - expected).abs().max() <= 1e-5


def test_controlnet_changes_the_video_more_with_a_larger_scale(components) -> None:
    pipe = make_pipe(components, random_output=True)
    image, control = photo((64, 96)), controls(4, (64, 96))
    base = run(pipe, image, control, controlnet_conditioning_scale=0.0)
    diffs = [
        (run(pipe, image, control, controlnet_conditioning_scale=s) - base).abs().mean().item()
        for s in (0.5, 2.0)
    ]
    assert 0 < diffs[0] < diffs[1]


@pytest.mark.parametrize(("frames", "size"), [(3, (64, 64)), (5, (48, 80))])
def test_runs_at_any_size_and_frame_count_deterministic_by_seed(
    components, frames: int, size: tuple[int, int]
) -> None:
    pipe = make_pipe(components, random_output=True)
    image, control = photo(size), controls(frames, size)
    first = run(pipe, image, control, seed=3)
    assert first.shape == (frames, 3, *size)
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, run(pipe, image, control, seed=3))
    assert not torch.equal(first, run(pipe, image, control, seed=4))


def test_sequential_cfg_equals_batched_cfg(components) -> None:
    pipe = make_pipe(components, random_output=True)
    image, control = photo((64, 96)), controls(4, (64, 96))
    batched = run(pipe, image, control)
    sequential = run(pipe, image, control, sequential_cfg=True)
    assert (batched - sequential).abs().max() <= 1e-4


def test_tensor_input_equals_pil_input_and_callback_sees_every_step(components) -> None:
    pipe = make_pipe(components, random_output=True)
    image, control = photo((64, 64)), controls(4, (64, 64))
    from_pil = run(pipe, image, control)
    tensor_image = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    steps: list[int] = []

    def on_step(pipe, step, t, tensors):
        steps.append(step)
        assert tensors["latents"].shape == (1, 4, 4, 8, 8)
        return tensors

    from_tensor = run(pipe, tensor_image, control, callback_on_step_end=on_step)
    assert steps == list(range(STEPS))
    assert (from_pil - from_tensor).abs().max() <= 1e-4  # /255 rounds differently in numpy


def test_chunked_decode(components) -> None:
    """Chunks are decoded as short clips by the temporal decoder: same shape, bounded memory;
    one chunk of all frames is the unchunked result."""
    pipe = make_pipe(components, random_output=True)
    image, control = photo((64, 64)), controls(4, (64, 64))
    whole = run(pipe, image, control)
    assert torch.equal(whole, run(pipe, image, control, decode_chunk_size=4))
    chunked = run(pipe, image, control, decode_chunk_size=1)
    assert chunked.shape == whole.shape and torch.isfinite(chunked).all()


def test_no_cfg_when_the_maximum_guidance_is_one(components) -> None:
    pipe = make_pipe(components, random_output=True)
    image, control = photo((64, 64)), controls(3, (64, 64))
    calls: list[int] = []
    original = pipe.predict_noise

    def counting(sample, *args):
        calls.append(sample.shape[0])
        return original(sample, *args)

    pipe.predict_noise = counting
    run(pipe, image, control, min_guidance_scale=1.0, max_guidance_scale=1.0)
    assert calls == [1] * STEPS


def test_control_size_must_match_and_be_a_multiple_of_8(components) -> None:
    pipe = make_pipe(components, random_output=False)
    with pytest.raises(ValueError, match="multiples of 8"):
        run(pipe, photo((60, 64)), controls(3, (60, 64)))
    with pytest.raises(ValueError, match="control maps"):
        run(pipe, photo((64, 64)), controls(3, (64, 64)), height=72, width=64)
