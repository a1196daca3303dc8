"""CLIP metrics (`anima.metrics.clip`) on a tiny random CLIP: the issue's properties (identical
frames give consistency 1; a planted caption match gives CLIP-R 1) and ones that can fail."""

from __future__ import annotations

import json
import math

import pytest
import torch

from anima.errors import InputError
from anima.metrics.clip import (
    clip_f,
    clip_frame_consistency,
    clip_i,
    clip_image_embeddings,
    clip_r_precision,
    clip_t,
    clip_text_embeddings,
    load_clip,
    preprocess,
    tiny_clip,
)
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["a red cube", "a dog on grass", "the moon at night", "two boats"]


@pytest.fixture(scope="module")
def clip():
    return load_clip(Weights(builtin="tiny"))


def _frames(n: int, seed: int = 0, size: tuple[int, int] = (40, 56)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *size, generator=generator)


def test_identical_frames_have_consistency_one(clip):
    frame = _frames(1)
    video = frame.expand(5, -1, -1, -1)
    assert clip_frame_consistency(video, clip) == pytest.approx(1.0, abs=1e-5)
    assert clip_f([video, video[:3]], clip) == pytest.approx(1.0, abs=1e-5)
    assert clip_i(video, frame[0], clip) == pytest.approx(1.0, abs=1e-5)


def test_different_frames_have_lower_consistency(clip):
    video = _frames(4, seed=1)
    consistency = clip_frame_consistency(video, clip)
    assert consistency < 1.0 - 1e-4
    embeddings = clip_image_embeddings(video, clip)
    expected = sum(float(embeddings[t] @ embeddings[t + 1]) for t in range(3)) / 3
    assert consistency == pytest.approx(expected, abs=1e-6)
    assert clip_i(video, video[0], clip) < 1.0 - 1e-5
    assert math.isnan(clip_frame_consistency(video[:1], clip))


def test_clip_f_pools_every_consecutive_pair_of_every_view(clip):
    a, b = _frames(3, seed=2), _frames(2, seed=3)
    ea, eb = clip_image_embeddings(a, clip), clip_image_embeddings(b, clip)
    pairs = [float(ea[0] @ ea[1]), float(ea[1] @ ea[2]), float(eb[0] @ eb[1])]
    assert clip_f([a, b], clip) == pytest.approx(sum(pairs) / 3, abs=1e-6)


def test_clip_t_is_the_mean_frame_text_cosine(clip):
    video = _frames(3, seed=4)
    text = clip_text_embeddings("a red cube", clip)[0]
    expected = float((clip_image_embeddings(video, clip) @ text).mean())
    assert clip_t(video, "a red cube", clip) == pytest.approx(expected, abs=1e-6)
    other = clip_t(video, "the moon at night", clip)
    assert other != pytest.approx(expected, abs=1e-6)


def test_embeddings_are_unit_norm_and_preprocessing_crops(clip):
    pixels = preprocess(_frames(2, size=(30, 90)), clip)
    assert pixels.shape == (2, 3, 224, 224)
    assert torch.allclose(clip_image_embeddings(_frames(2), clip).norm(dim=-1), torch.ones(2))
    assert torch.allclose(clip_text_embeddings(CAPTIONS, clip).norm(dim=-1), torch.ones(4))


def _plant_captions(clip, images: torch.Tensor) -> None:
    """Set the text projection so that caption k embeds exactly as image k (least squares on
    the text tower's pooled features; exact for fewer captions than features)."""
    tokens = clip.tokenizer(CAPTIONS, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        pooled = clip.model.text_model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).pooler_output.double()
        target = clip_image_embeddings(images, clip).double()
        solution = torch.linalg.lstsq(pooled, target).solution  # (hidden, D)
        clip.model.text_projection.weight.copy_(solution.T.float())


def test_clip_r_precision_with_a_planted_match_is_one():
    clip = load_clip(Weights(builtin="tiny"))
    images = _frames(4, seed=5)
    _plant_captions(clip, images)
    text = clip_text_embeddings(CAPTIONS, clip)
    assert torch.allclose(text, clip_image_embeddings(images, clip), atol=1e-4)
    assert clip_r_precision(images, CAPTIONS, [0, 1, 2, 3], clip) == 1.0
    assert clip_r_precision(images, CAPTIONS, [1, 2, 3, 0], clip) == 0.0
    assert clip_r_precision(images[:1], CAPTIONS, 0, clip) == 1.0
    assert clip_r_precision(images[:2], CAPTIONS, [0, 3], clip) == 0.5
    with pytest.raises(ValueError):
        clip_r_precision(images, CAPTIONS, [0, 1], clip)


def test_load_clip_from_a_folder_reads_the_preprocessor(tmp_path):
    folder = tmp_path / "metrics" / "clip"
    model, tokenizer = tiny_clip()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "size": {"shortest_edge": 256},
                "crop_size": {"height": 224, "width": 224},
                "do_center_crop": True,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.25, 0.25, 0.25],
            }
        )
    )
    clip = load_clip(Weights(root=tmp_path))
    assert (clip.size, clip.crop, clip.mean) == (256, (224, 224), (0.5, 0.5, 0.5))
    video = _frames(3, seed=6)
    assert preprocess(video, clip).shape == (3, 3, 224, 224)
    assert -1.0 <= clip_t(video, "a dog on grass", clip) <= 1.0
    reference = load_clip(Weights(builtin="tiny"))
    text = clip_text_embeddings(CAPTIONS, clip)
    assert torch.allclose(text, clip_text_embeddings(CAPTIONS, reference), atol=1e-5)


def test_missing_clip_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="clip"):
        load_clip(Weights(root=tmp_path))
