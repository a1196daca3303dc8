"""DINO structure similarity (`anima.metrics.structure`) on a tiny random ViT: 1 for an image
with itself, lower for another layout, and the keys are those of the last attention layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anima.errors import InputError
from anima.metrics.structure import (
    dino_key_self_similarity,
    dino_keys,
    dino_structure_distance,
    dino_structure_similarity,
    load_dino,
    tiny_dino,
)
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dino():
    return load_dino(Weights(builtin="tiny"))


def _image(seed: int, size: tuple[int, int] = (48, 80)) -> torch.Tensor:
    return torch.rand(3, *size, generator=torch.Generator().manual_seed(seed))


def test_an_image_with_itself_has_similarity_one(dino):
    image = _image(0)
    assert dino_structure_similarity(image, image, dino) == pytest.approx(1.0, abs=1e-9)
    assert dino_structure_distance(image, image, dino) == pytest.approx(0.0, abs=1e-12)


def test_another_layout_is_less_similar(dino):
    image = _image(0)
    other = _image(1)
    flipped = image.flip(-1)
    assert dino_structure_similarity(image, other, dino) < 0.99
    assert dino_structure_similarity(image, flipped, dino) < 0.99
    assert dino_structure_distance(image, other, dino) > 0
    # A brightness change keeps the layout: closer than an unrelated image.
    brighter = (image * 0.8 + 0.1).clamp(0, 1)
    assert dino_structure_similarity(image, brighter, dino) > dino_structure_similarity(
        image, other, dino
    )


def test_self_similarity_is_the_cosine_of_the_last_layers_keys(dino):
    image = _image(2)
    keys = dino_keys(image, dino)
    config = dino.model.config
    tokens = 1 + (config.image_size // config.patch_size) ** 2
    assert keys.shape == (tokens, config.hidden_size)
    similarity = dino_key_self_similarity(image, dino)
    assert similarity.shape == (tokens, tokens)
    assert torch.allclose(similarity.diagonal(), torch.ones(tokens), atol=1e-5)
    # The keys recomputed by hand: the last layer's key projection of its normalised input.
    pixels = F.interpolate(
        image[None], size=(config.image_size,) * 2, mode="bicubic", antialias=True
    ).clamp(0, 1)
    mean = torch.tensor(dino.mean).view(1, 3, 1, 1)
    std = torch.tensor(dino.std).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = dino.model(pixel_values=(pixels - mean) / std, output_hidden_states=True)
        last_input = hidden.hidden_states[-2]
        layer = [m for m in dino.model.modules() if hasattr(m, "layernorm_before")][-1]
        expected = dino.key_projection(layer.layernorm_before(last_input))[0]
    assert torch.allclose(keys, expected, atol=1e-5)


def test_load_dino_from_a_folder_and_missing_folder(tmp_path):
    with pytest.raises(InputError, match="dino"):
        load_dino(Weights(root=tmp_path))
    folder = tmp_path / "metrics" / "dino"
    tiny_dino().save_pretrained(folder)
    loaded = load_dino(Weights(root=tmp_path))
    image, other = _image(3), _image(4)
    reference = load_dino(Weights(builtin="tiny"))
    assert dino_structure_similarity(image, other, loaded) == pytest.approx(
        dino_structure_similarity(image, other, reference), abs=1e-6
    )
