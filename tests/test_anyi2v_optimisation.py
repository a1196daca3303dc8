"""AnyI2V's latent optimisation (appendix A.1) on tiny random models: the loss goes down, the
semantic mask finds a planted object, the PCA features' shape, boxes off the image, and the
pipeline unchanged without tracks."""

from __future__ import annotations

import pytest
import torch

from anima.methods.anyi2v.boxes import BoxTrack
from anima.methods.anyi2v.injection import InjectionOptions
from anima.methods.anyi2v.loading import tiny_anyi2v_components
from anima.methods.anyi2v.optimisation import (
    OPTIMISED_LAYERS,
    LatentOptimisation,
    OptimisationOptions,
    appendix_loss,
    feature_box,
    pca_features,
    semantic_mask,
    token_grid,
    two_means,
)
from anima.methods.anyi2v.pipeline import AnyI2VPipeline

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES, SIZE = 4, (64, 96)


@pytest.fixture(scope="module")
def pipe() -> AnyI2VPipeline:
    pipe = AnyI2VPipeline(**tiny_anyi2v_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def moving_track(object_id: int = 1, step: float = 8.0) -> BoxTrack:
    """A 32x32 box moving right by ``step`` pixels a frame, its query point at its centre."""
    boxes = [[8 + step * f, 16, 40 + step * f, 48] for f in range(FRAMES)]
    return BoxTrack(
        object_id,
        torch.tensor(boxes, dtype=torch.float64),
        torch.tensor([[24.0, 32.0]], dtype=torch.float64),
    )


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def optimisation(pipe, tracks, **options) -> tuple[LatentOptimisation, torch.Tensor]:
    text = pipe.encode_prompt("a horse")
    pipe.scheduler.set_timesteps(25)
    optimiser = LatentOptimisation(
        pipe.unet, tracks, SIZE, text, [range(FRAMES)], OptimisationOptions(**options)
    )
    return optimiser, pipe.scheduler.timesteps[0]


@pytest.mark.parametrize("release", [False, True])
def test_the_appendix_loss_goes_down_over_a_steps_iterations(pipe, release) -> None:
    optimiser, t = optimisation(pipe, [moving_track()], lr=0.05, release_optimiser=release)
    latents = randn(1, 4, FRAMES, SIZE[0] // 8, SIZE[1] // 8)
    with torch.no_grad():
        before = float(optimiser.loss(latents, t, 0))
    optimised = optimiser.optimise(latents, t, 0)
    with torch.no_grad():
        after = float(optimiser.loss(optimised, t, 0))
    assert before > 0
    assert after <= 0.7 * before, (before, after)
    assert len(optimiser.losses[0]) == 5 and optimiser.losses[0][0] == pytest.approx(before)
    assert optimised.dtype == latents.dtype and not optimised.requires_grad
    assert all(p.grad is None for p in pipe.unet.parameters())  # only the latent is optimised
    # off the optimisation steps nothing happens
    assert optimiser.optimise(latents, t, 6) is latents


def test_the_fresh_optimiser_differs_from_the_kept_one(pipe) -> None:
    latents = randn(1, 4, FRAMES, SIZE[0] // 8, SIZE[1] // 8)
    kept, t = optimisation(pipe, [moving_track()], iterations=3)
    fresh, _ = optimisation(pipe, [moving_track()], iterations=3, release_optimiser=True)
    a, b = kept.optimise(latents, t, 0), fresh.optimise(latents, t, 0)
    assert not torch.equal(a, b)
    # the first update is the same (a first Adam step either way)
    one_kept, _ = optimisation(pipe, [moving_track()], iterations=1)
    one_fresh, _ = optimisation(pipe, [moving_track()], iterations=1, release_optimiser=True)
    torch.testing.assert_close(one_kept.optimise(latents, t, 0), one_fresh.optimise(latents, t, 0))


def test_the_semantic_mask_recovers_a_planted_object() -> None:
    generator = torch.Generator().manual_seed(3)
    channels, height, width = 16, 24, 32
    background = torch.randn(channels, generator=generator)
    target = torch.randn(channels, generator=generator)
    crop = background[:, None, None] + 0.3 * torch.randn(
        channels, height, width, generator=generator
    )
    planted = torch.zeros(height, width, dtype=torch.bool)
    planted[6:18, 10:24] = True
    crop[:, planted] = target[:, None] + 0.3 * torch.randn(channels, int(planted.sum()))
    anchors = crop[:, [10, 12], [14, 20]].T  # two query points inside the object
    mask = semantic_mask(crop, anchors)
    iou = (mask & planted).sum() / (mask | planted).sum()
    assert float(iou) > 0.9
    assert two_means(torch.ones(5)).all()  # no split of equal values


def test_pca_features_have_64_channels_a_layer_at_a_quarter_of_the_image() -> None:
    image = (128, 192)
    latent = (16, 24)
    queries = [
        randn(2, 8 * 12, 96, seed=1).requires_grad_(True),  # a layer at 1/2 of the latent
        randn(2, 16 * 24, 80, seed=2),
    ]
    assert token_grid(96, latent) == (8, 12)
    features = pca_features(queries, latent, image)
    assert features.shape == (2, 128, 32, 48)
    features.sum().backward()  # the projection keeps the queries' gradient
    assert queries[0].grad is not None and queries[0].grad.abs().sum() > 0
    # fewer tokens than 64: as many components as tokens (all frames jointly)
    few = pca_features([randn(3, 4, 96)], (4, 4), (32, 32))
    assert few.shape == (3, 12, 8, 8)
    with pytest.raises(ValueError, match="grid"):
        token_grid(7, latent)


def test_boxes_outside_the_image_are_skipped() -> None:
    features = randn(FRAMES, 8, SIZE[0] // 4, SIZE[1] // 4)
    track = moving_track()
    track.boxes[2] = torch.tensor([200.0, 200.0, 260.0, 240.0])  # outside
    track.boxes[3] = torch.tensor([-30.0, 10.0, -20.0, 20.0])  # outside on the left
    loss, terms = appendix_loss(features, [track], SIZE)
    assert terms[0].frames == [1] and loss > 0
    # a box that leaves the image in every frame but the first, and one never on it
    gone = moving_track(2)
    gone.boxes[1:] = torch.tensor([500.0, 500.0, 510.0, 510.0])
    never = moving_track(3)
    never.boxes[:] = torch.tensor([-50.0, -50.0, -40.0, -40.0])
    loss, terms = appendix_loss(features, [gone, never], SIZE)
    assert [t.frames for t in terms] == [[], []] and float(loss) == 0.0
    # a zero-size box is one feature cell, not an empty crop
    assert feature_box(torch.tensor([10.0, 10.0, 10.0, 10.0])) == (2, 2, 3, 3)


def test_nothing_to_align_leaves_the_latent(pipe) -> None:
    never = moving_track()
    never.boxes[:] = torch.tensor([-50.0, -50.0, -40.0, -40.0])
    optimiser, t = optimisation(pipe, [never])
    latents = randn(1, 4, FRAMES, SIZE[0] // 8, SIZE[1] // 8)
    assert torch.equal(optimiser.optimise(latents, t, 0), latents)


def test_without_tracks_the_pipeline_is_unchanged(pipe) -> None:
    image = torch.rand(3, *SIZE, generator=torch.Generator().manual_seed(5))
    short = InjectionOptions(inversion_timestep=11)

    def run(**kwargs) -> torch.Tensor:
        return pipe(
            image,
            "a horse",
            num_frames=FRAMES,
            num_inference_steps=3,
            injection=short,
            generator=torch.Generator().manual_seed(7),
            **kwargs,
        )

    plain = run()
    assert torch.equal(run(tracks=None), plain)
    assert torch.equal(run(tracks=[]), plain)
    no_steps = OptimisationOptions(steps=())
    assert torch.equal(run(tracks=[moving_track()], optimisation=no_steps), plain)
    moved = run(tracks=[moving_track()], optimisation=OptimisationOptions(iterations=2))
    assert moved.shape == plain.shape and not torch.equal(moved, plain)
    assert sorted(pipe.optimiser.losses) == [0, 1, 2]  # three steps, all optimised
    assert OPTIMISED_LAYERS[0].startswith("up_blocks.1")


def test_long_videos_are_optimised_window_by_window(pipe) -> None:
    image = torch.rand(3, *SIZE, generator=torch.Generator().manual_seed(5))
    track = moving_track()
    shift = torch.tensor([[4.0, 0.0, 4.0, 0.0]], dtype=torch.float64)
    track.boxes = torch.cat([track.boxes, track.boxes[-1:] + shift, track.boxes[-1:] + 2 * shift])
    frames = pipe(
        image,
        num_frames=6,
        num_inference_steps=2,
        window=4,
        overlap=2,
        injection=InjectionOptions(inversion_timestep=11),
        tracks=[track],
        optimisation=OptimisationOptions(iterations=2),
        generator=torch.Generator().manual_seed(7),
    )
    assert frames.shape == (6, 3, *SIZE)
    losses = pipe.optimiser.losses
    assert sorted(losses) == [0, 1] and all(len(v) == 2 and v[0] > 0 for v in losses.values())
