"""D-RMSE (`anima.metrics.depth_error`), Face-Det and Face-Cos (`anima.metrics.face`),
foreground/background splits (`anima.metrics.regions`) and ObjMC tracks from a CoTracker
TorchScript or the project's tracker (`anima.metrics.cotracker`)."""

from __future__ import annotations

import functools
import json
import math
import warnings

import pytest
import torch
from conftest import EXAMPLES

from anima.errors import InputError
from anima.io import read_image
from anima.metrics.cotracker import track_for_objmc
from anima.metrics.depth_error import depth_rmse, depth_rmse_per_frame, load_depth_fn
from anima.metrics.face import (
    ARCFACE_EYES,
    FaceBox,
    HaarFaceDetector,
    align_face,
    face_cosine,
    face_cosine_per_frame,
    face_detection_rate,
    load_face_embedder,
    tiny_face_embedder,
)
from anima.metrics.image import psnr
from anima.metrics.regions import masked, per_region
from anima.metrics.trajectory import objmc
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = Weights(builtin="tiny")


def _video(frames: int, seed: int = 0, size: tuple[int, int] = (42, 56)) -> torch.Tensor:
    return torch.rand(frames, 3, *size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- D-RMSE


@pytest.fixture(scope="module")
def depth_fn():
    return load_depth_fn(TINY)


def test_d_rmse_of_a_video_against_itself_is_zero(depth_fn):
    video = _video(3)
    assert depth_rmse(video, video, depth_fn) == 0.0


def test_d_rmse_of_a_shifted_video_is_positive(depth_fn):
    video = _video(3)
    shifted = video.roll(shifts=9, dims=-1)
    per_frame = depth_rmse_per_frame(shifted, video, depth_fn)
    assert per_frame.shape == (3,)
    assert bool((per_frame > 0).all())
    assert depth_rmse(shifted, video, depth_fn) == pytest.approx(float(per_frame.mean()))


def test_d_rmse_normalises_each_frames_depth():
    # The luma as "depth": an affine change of one video's maps changes nothing.
    def luma(image: torch.Tensor) -> torch.Tensor:
        return image.mean(dim=0)

    def rescaled(image: torch.Tensor) -> torch.Tensor:
        return 7.0 * image.mean(dim=0) + 3.0

    a, b = _video(2, seed=1), _video(2, seed=2)
    assert depth_rmse(a, b, luma) == pytest.approx(depth_rmse(a, b, rescaled), abs=1e-6)

    def unit(image: torch.Tensor) -> torch.Tensor:
        grey = image.mean(dim=0).double()
        return (grey - grey.min()) / (grey.max() - grey.min())

    errors = [float((unit(p) - unit(q)).square().mean().sqrt()) for p, q in zip(a, b, strict=True)]
    expected = sum(errors) / 2
    assert depth_rmse(a, b, luma) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        depth_rmse(a, b[:1], luma)


def test_d_rmse_needs_depth_anything(tmp_path):
    with pytest.raises(InputError, match="depth-anything"):
        load_depth_fn(Weights(root=tmp_path))


# --------------------------------------------------------------------------- faces


@pytest.fixture(scope="module")
def face_image() -> torch.Tensor:
    return read_image(EXAMPLES / "astronaut.png")


@pytest.fixture(scope="module")
def detector():
    return HaarFaceDetector()


def test_haar_detects_no_face_in_a_blank_image(detector):
    blank = torch.full((3, 3, 96, 128), 0.5)
    assert face_detection_rate(blank, detector) == 0.0


def test_haar_finds_the_astronauts_face_and_eyes(face_image, detector):
    face = detector(face_image)
    assert face is not None and face.eyes is not None
    x, y, w, h = face.box
    (lx, ly), (rx, ry) = face.eyes
    assert x < lx < x + w / 2 <= rx < x + w and y < ly < y + h / 2 and y < ry < y + h / 2
    blank = torch.zeros_like(face_image)
    video = torch.stack([face_image, blank, face_image])
    assert face_detection_rate(video, detector) == pytest.approx(200 / 3)


def test_face_cosine_of_identical_frames_is_one(face_image, detector):
    embedder = load_face_embedder(TINY)
    video = torch.stack([face_image, face_image])
    assert face_cosine(video, video, embedder, detector) == pytest.approx(1.0, abs=1e-6)
    assert face_cosine(video, face_image, embedder, detector) == pytest.approx(1.0, abs=1e-6)


def test_face_cosine_skips_frames_without_a_face_and_differs_for_other_faces():
    embedder = load_face_embedder(TINY)
    box = FaceBox((8.0, 8.0, 48.0, 48.0))

    def every_other(image: torch.Tensor) -> FaceBox | None:
        return box if float(image[0, 0, 0]) < 2.0 and float(image.mean()) > 0.1 else None

    a = _video(3, seed=3, size=(64, 64))
    b = _video(3, seed=4, size=(64, 64))
    b[1] = 0.0  # no face in the second reference frame
    per_frame = face_cosine_per_frame(a, b, embedder, every_other)
    assert math.isnan(float(per_frame[1])) and not bool(per_frame[[0, 2]].isnan().any())
    assert bool((per_frame[[0, 2]] < 1.0 - 1e-4).all())
    assert face_cosine(a, b, embedder, every_other) == pytest.approx(
        float(per_frame[[0, 2]].mean())
    )
    assert math.isnan(face_cosine(a, b, embedder, lambda image: None))


def test_alignment_puts_the_eyes_on_arcfaces_template():
    image = torch.zeros(3, 120, 160)
    eyes = ((60.0, 50.0), (96.0, 58.0))  # tilted: the transform rotates and scales
    for ex, ey in eyes:
        image[:, int(ey) - 1 : int(ey) + 2, int(ex) - 1 : int(ex) + 2] = 1.0
    crop = align_face(image, FaceBox((40.0, 30.0, 80.0, 80.0), eyes))
    assert crop.shape == (3, 112, 112)
    for tx, ty in ARCFACE_EYES:
        assert float(crop[0, round(ty), round(tx)]) > 0.5
    assert float(crop[0].sum()) < 60.0  # only the two dots are bright


def test_load_face_embedder_from_a_folder(tmp_path):
    with pytest.raises(InputError, match="embedder.pt"):
        load_face_embedder(Weights(root=tmp_path))
    folder = tmp_path / "metrics" / "face"
    folder.mkdir(parents=True)
    tiny_face_embedder(seed=1).save(str(folder / "embedder.pt"))
    (folder / "embedder.json").write_text(json.dumps({"channel_order": "rgb"}))
    embedder = load_face_embedder(Weights(root=tmp_path))
    assert embedder.channel_order == "rgb"
    crops = _video(2, seed=5, size=(112, 112))
    embeddings = embedder(crops)
    assert embeddings.shape == (2, 32)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2))
    (folder / "embedder.json").write_text(json.dumps({"channel_order": "bgr"}))
    flipped = load_face_embedder(Weights(root=tmp_path))
    assert torch.allclose(flipped(crops.flip(1)), embeddings, atol=1e-6)


# --------------------------------------------------------------------------- regions


def test_masked_keeps_one_region_and_fills_the_other():
    video = _video(2, seed=6, size=(8, 10))
    mask = torch.zeros(8, 10, dtype=torch.bool)
    mask[2:6, 3:7] = True
    fg = masked(video, mask, "foreground", fill=0.25)
    bg = masked(video, mask.float(), "background", fill=(0.0, 0.5, 1.0))
    assert torch.equal(fg[:, :, mask], video[:, :, mask])
    assert bool((fg[:, :, ~mask] == 0.25).all())
    assert torch.equal(bg[:, :, ~mask], video[:, :, ~mask])
    assert bool((bg[:, 1][:, mask] == 0.5).all()) and bool((bg[:, 2][:, mask] == 1.0).all())
    with pytest.raises(ValueError):
        masked(video, mask[:4], "foreground")
    with pytest.raises(ValueError):
        masked(video, mask, "middle")  # type: ignore[arg-type]


def test_per_region_scores_each_part():
    truth = _video(2, seed=7, size=(8, 10))
    masks = torch.zeros(2, 8, 10)
    masks[:, :, :5] = 1.0
    generated = truth.clone()
    generated[:, :, :, 5:] = 0.5  # the background changed, the foreground kept
    scores = per_region(functools.partial(psnr, max_db=100.0), generated, truth, masks=masks)
    assert scores["foreground"] == 100.0
    assert scores["background"] < 30.0
    # Each video cut by its own masks: the whole frame as foreground of one, none of the other.
    own = per_region(
        functools.partial(psnr, max_db=100.0),
        generated,
        truth,
        masks=[torch.ones(8, 10), torch.zeros(8, 10)],
        fill=0.0,
    )
    assert own["foreground"] < 30.0 and own["background"] < 30.0


# --------------------------------------------------------------------------- ObjMC tracks


class _ScriptedTracker(torch.nn.Module):
    """CoTracker's calling convention with known tracks: each query moves by
    ``video.max() / 255`` pixels per frame in x and 2 in y (1 px in x for a 0..255 video); the
    last point is invisible in the last frame."""

    def forward(
        self, video: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = video.shape[0], video.shape[1]
        n = queries.shape[1]
        steps = torch.arange(t, dtype=torch.float32).view(1, t, 1)
        speed = video.amax() / 255.0
        x = queries[:, None, :, 1] + steps * speed
        y = queries[:, None, :, 2] + steps * 2.0
        visible = torch.ones(b, t, n, dtype=torch.bool)
        visible[:, t - 1, n - 1] = False
        return torch.stack([x, y], dim=-1), visible


def test_track_for_objmc_uses_cotracker_when_present(tmp_path):
    folder = tmp_path / "metrics" / "cotracker"
    folder.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_ScriptedTracker()).save(str(folder / "cotracker.pt"))
    video = torch.ones(4, 3, 16, 20)
    points = torch.tensor([[3.0, 4.0], [10.0, 5.0]])
    tracks, ok = track_for_objmc(video, points, Weights(root=tmp_path))
    steps = torch.arange(4, dtype=torch.float32)
    expected = torch.stack([points[:, None, 0] + steps, points[:, None, 1] + 2 * steps], dim=-1)
    assert tracks.shape == (2, 4, 2) and ok.shape == (2, 4)
    assert torch.allclose(tracks, expected)
    assert ok.sum() == 7 and not bool(ok[1, 3])
    assert objmc(tracks, expected, ok) == 0.0
    assert objmc(tracks, expected + torch.tensor([3.0, 4.0]), ok) == pytest.approx(5.0)


def test_track_for_objmc_falls_back_to_the_projects_tracker(tmp_path):
    generator = torch.Generator().manual_seed(8)
    texture = torch.rand(3, 48, 48, generator=generator)
    video = torch.stack([texture.roll(shifts=t, dims=-1) for t in range(3)])  # 1 px right a frame
    points = torch.tensor([[20.0, 20.0], [28.0, 24.0]])
    for weights in (Weights(root=tmp_path), TINY):
        tracks, ok = track_for_objmc(video, points, weights)
        assert tracks.shape == (2, 3, 2) and bool(ok.all())
        expected = points[:, None] + torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
        assert objmc(tracks, expected, ok) < 0.2


def test_a_broken_torchscript_is_an_input_error(tmp_path):
    for sub, name in (("cotracker", "cotracker.pt"), ("face", "embedder.pt")):
        folder = tmp_path / "metrics" / sub
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"not a TorchScript archive")
    with pytest.raises(InputError, match="CoTracker"):
        track_for_objmc(torch.zeros(2, 3, 8, 8), torch.zeros(1, 2), Weights(root=tmp_path))
    with pytest.raises(InputError, match="face embedder"):
        load_face_embedder(Weights(root=tmp_path))
