"""CLIP metrics of generated videos: CLIP-I, CLIP-T, CLIP frame consistency, CLIP-F, CLIP-R.

(README, "Evaluation"; docs/architecture.md, "Models and weights")

CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021) is read in transformers layout from ``DIR/metrics/clip/`` (``CLIPModel``, its
tokenizer and ``preprocessor_config.json``); ``--weights tiny`` builds a tiny random CLIP of
the same architecture offline. Every score is a cosine similarity of L2-normalised projected
embeddings (the raw cosine, not CLIPScore's ``2.5 * max(cos, 0)``, as the papers' tables show:
Animate124's CLIP-T is about 0.30, I2V3D's CLIP-I about 0.90):

- **CLIP-I** (I2V3D §4.2.2, after DreamBooth; Animate124 §4.1 "image-video alignment"): the mean
  over frames of the cosine between each frame and the input image.
- **CLIP-T** (Animate124 §4.1): the mean over frames of the cosine between each frame and the
  prompt.
- **CLIP frame consistency** (I2V3D §4.2.2, "CLIP similarity between consecutively generated
  frames", after Esser et al.): the mean cosine of consecutive frames.
- **CLIP-F** (Animate124 §4.1, "video quality"): the same consecutive-frame cosine, over every
  rendered view of a 4D scene (Animate124 renders 10 views around it), pooled over all pairs.
- **CLIP-R precision** (Animate124 §4.1, after Jain et al., "Zero-Shot Text-Guided Object
  Generation with Dream Fields", CVPR 2022): the fraction of images whose most similar caption
  among a caption set is the true one.

Images enter as float (F, 3, H, W) in [0, 1] and are preprocessed in torch as CLIP's image
processor does: the shorter side resized to ``size`` (bicubic, antialiased), a centre crop of
``crop_size``, then CLIP's mean and standard deviation (read from the folder's
``preprocessor_config.json`` when present, else OpenAI CLIP's 224 px and statistics). The
papers use ViT-B/32 (Animate124 §4.1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from anima.metrics.components import CLIP
from anima.weights import Weights

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224


@dataclass
class ClipModel:
    """A loaded CLIP: the transformers ``CLIPModel``, its tokenizer and the image preprocessing
    (shorter side ``size``, centre crop ``crop`` (H, W), ``mean`` / ``std``)."""

    model: Any
    tokenizer: Any
    size: int
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def _side(value: Any, default: int) -> int:
    """An image processor's ``size`` entry (int or dict) as the shorter-side length."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in ("shortest_edge", "height", "width"):
            if key in value:
                return int(value[key])
    return default


def _crop(value: Any, default: int) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    return default, default


def _preprocessing(folder: Path | None, image_size: int) -> dict[str, Any]:
    """Size, crop and statistics from ``preprocessor_config.json`` when present, else CLIP's."""
    config: dict[str, Any] = {}
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        config = json.loads((folder / "preprocessor_config.json").read_text())
    size = _side(config.get("size"), image_size)
    crop = _crop(config.get("crop_size"), size) if config.get("do_center_crop", True) else None
    return {
        "size": size,
        "crop": crop if crop is not None else (size, size),
        "mean": tuple(float(v) for v in config.get("image_mean", CLIP_MEAN)),
        "std": tuple(float(v) for v in config.get("image_std", CLIP_STD)),
    }


def tiny_clip(seed: int = 0) -> tuple[Any, Any]:
    """A tiny random ``CLIPModel`` (ViT with 224 px input, patch 32; a 2-layer text tower) and
    the byte-level tiny tokenizer of `anima.models.tiny_sd`, built offline."""
    from transformers import CLIPConfig, CLIPModel

    from anima.models.seeding import seeded
    from anima.models.tiny_sd import TINY_VOCAB_SIZE, tiny_tokenizer

    text = {
        "vocab_size": TINY_VOCAB_SIZE,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": TINY_VOCAB_SIZE - 2,
        "eos_token_id": TINY_VOCAB_SIZE - 1,
        "pad_token_id": TINY_VOCAB_SIZE - 1,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": CLIP_SIZE,
        "patch_size": 32,
    }
    with seeded(seed):
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    return model.eval(), tiny_tokenizer()


def load_clip(
    weights: Weights, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> ClipModel:
    """CLIP from ``DIR/metrics/clip/`` (transformers ``CLIPModel`` and ``AutoTokenizer``), or a
    tiny random CLIP for ``--weights tiny``. A missing folder or file is an `InputError`."""
    device = torch.device(device)
    if weights.builtin == "tiny":
        model, tokenizer = tiny_clip()
        settings = _preprocessing(None, model.config.vision_config.image_size)
    else:
        from transformers import AutoTokenizer, CLIPModel

        from anima.perception.common import load_local, require_model_dir

        folder = require_model_dir(
            weights.require(CLIP, "CLIP metrics"), "CLIP", allow_pickle=weights.allow_pickle
        )
        model, tokenizer = load_local(
            folder, "CLIP", CLIPModel, AutoTokenizer, allow_pickle=weights.allow_pickle
        )
        settings = _preprocessing(folder, model.config.vision_config.image_size)
    model = model.to(device=device, dtype=dtype).eval()
    return ClipModel(model=model, tokenizer=tokenizer, device=device, **settings)


def _check_frames(frames: torch.Tensor, where: str) -> torch.Tensor:
    if frames.dim() == 3:
        frames = frames[None]
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"{where}: expected (F, 3, H, W) or (3, H, W), got {tuple(frames.shape)}")
    return frames


def preprocess(frames: torch.Tensor, clip: ClipModel) -> torch.Tensor:
    """(F, 3, H, W) in [0, 1] to CLIP's pixel values: shorter side to ``clip.size`` (bicubic,
    antialiased, clamped to [0, 1]), centre crop ``clip.crop``, then ``(x - mean) / std``."""
    frames = _check_frames(frames, "frames").to(clip.device, torch.float32)
    height, width = frames.shape[-2:]
    scale = clip.size / min(height, width)
    new = (max(clip.size, round(height * scale)), max(clip.size, round(width * scale)))
    if (height, width) != new:
        frames = F.interpolate(
            frames, size=new, mode="bicubic", antialias=True, align_corners=False
        )
        frames = frames.clamp(0.0, 1.0)
    crop_h, crop_w = clip.crop
    if crop_h > new[0] or crop_w > new[1]:  # a crop larger than the image: pad with zeros
        pad_h, pad_w = max(crop_h - new[0], 0), max(crop_w - new[1], 0)
        frames = F.pad(frames, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        new = (frames.shape[-2], frames.shape[-1])
    top = int(round((new[0] - crop_h) / 2.0))
    left = int(round((new[1] - crop_w) / 2.0))
    frames = frames[..., top : top + crop_h, left : left + crop_w]
    mean = torch.tensor(clip.mean, device=clip.device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=clip.device).view(1, 3, 1, 1)
    return (frames - mean) / std


@torch.no_grad()
def clip_image_embeddings(
    frames: torch.Tensor, clip: ClipModel, batch_size: int = 32
) -> torch.Tensor:
    """L2-normalised projected CLIP image embeddings (F, D), float32, of (F, 3, H, W) frames in
    [0, 1] (or one (3, H, W) image)."""
    frames = _check_frames(frames, "frames")
    out = []
    for start in range(0, frames.shape[0], batch_size):
        pixels = preprocess(frames[start : start + batch_size], clip).to(clip.dtype)
        vision = clip.model.vision_model
        if tuple(pixels.shape[-2:]) == (vision.config.image_size,) * 2:
            pooled = vision(pixel_values=pixels).pooler_output
        else:  # a processor cropping to another size than the model's: interpolate positions
            pooled = vision(pixel_values=pixels, interpolate_pos_encoding=True).pooler_output
        out.append(clip.model.visual_projection(pooled).float())
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def clip_text_embeddings(texts: str | Sequence[str], clip: ClipModel) -> torch.Tensor:
    """L2-normalised projected CLIP text embeddings (N, D), float32 (prompts truncated to the
    tokenizer's 77 tokens)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    max_length = min(int(clip.tokenizer.model_max_length), 77)
    tokens = clip.tokenizer(
        texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    pooled = clip.model.text_model(
        input_ids=tokens["input_ids"].to(clip.device),
        attention_mask=tokens["attention_mask"].to(clip.device),
    ).pooler_output
    return F.normalize(clip.model.text_projection(pooled).float(), dim=-1)


def clip_i(frames: torch.Tensor, image: torch.Tensor, clip: ClipModel) -> float:
    """CLIP-I: mean cosine between each frame (F, 3, H, W) and the input ``image`` (3, H', W')
    (I2V3D §4.2.2; Animate124 §4.1, on the reference view's render)."""
    frame_embeddings = clip_image_embeddings(frames, clip)
    image_embedding = clip_image_embeddings(image, clip)
    return float((frame_embeddings @ image_embedding[0]).mean())


def clip_t(frames: torch.Tensor, prompt: str, clip: ClipModel) -> float:
    """CLIP-T: mean cosine between each frame (F, 3, H, W) and the prompt (Animate124 §4.1)."""
    frame_embeddings = clip_image_embeddings(frames, clip)
    text_embedding = clip_text_embeddings(prompt, clip)
    return float((frame_embeddings @ text_embedding[0]).mean())


def _consecutive_cosines(frames: torch.Tensor, clip: ClipModel) -> torch.Tensor:
    embeddings = clip_image_embeddings(frames, clip)
    return (embeddings[1:] * embeddings[:-1]).sum(dim=-1)


def clip_frame_consistency(frames: torch.Tensor, clip: ClipModel) -> float:
    """Mean cosine of consecutive frames' CLIP embeddings (I2V3D §4.2.2, "Consistency");
    ``nan`` for a single frame."""
    frames = _check_frames(frames, "frames")
    if frames.shape[0] < 2:
        return math.nan
    return float(_consecutive_cosines(frames, clip).mean())


def clip_f(views: torch.Tensor | Sequence[torch.Tensor], clip: ClipModel) -> float:
    """CLIP-F (Animate124 §4.1): the consecutive-frame cosine of every rendered view's video,
    pooled over all consecutive pairs of all views. ``views`` is a list of (F, 3, H, W) videos
    or one (V, F, 3, H, W) tensor; a single (F, 3, H, W) video is one view. ``nan`` when no
    view has two frames."""
    if isinstance(views, torch.Tensor):
        views = [views] if views.dim() == 4 else list(views)
    cosines = [
        _consecutive_cosines(v, clip) for v in views if _check_frames(v, "view").shape[0] > 1
    ]
    if not cosines:
        return math.nan
    return float(torch.cat(cosines).mean())


def clip_r_precision(
    images: torch.Tensor,
    captions: Sequence[str],
    true_index: int | Sequence[int] | torch.Tensor,
    clip: ClipModel,
) -> float:
    """CLIP-R precision (Animate124 §4.1, after Dream Fields): the fraction of ``images``
    (N, 3, H, W) whose highest-cosine caption in ``captions`` is the true one. ``true_index``
    is the true caption's index, one for all images or one per image (Animate124 scores every
    frame of the rendered views against the benchmark's prompts). Ties count as misses."""
    images = _check_frames(images, "images")
    if not captions:
        raise ValueError("CLIP-R needs at least one caption")
    truth = torch.as_tensor(true_index, dtype=torch.long).reshape(-1)
    if truth.numel() == 1:
        truth = truth.expand(images.shape[0])
    if truth.numel() != images.shape[0]:
        raise ValueError(f"true_index has {truth.numel()} entries for {images.shape[0]} images")
    if bool((truth < 0).any() or (truth >= len(captions)).any()):
        raise ValueError(f"true_index out of range for {len(captions)} captions")
    scores = clip_image_embeddings(images, clip) @ clip_text_embeddings(captions, clip).T
    truth = truth.to(scores.device)
    true_score = scores.gather(1, truth[:, None])
    others = scores.clone()
    others.scatter_(1, truth[:, None], -math.inf)
    hits = true_score[:, 0] > others.max(dim=1).values
    return float(hits.float().mean())
