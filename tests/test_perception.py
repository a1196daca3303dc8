"""Tests for anima.perception: ground-plane depth, disparity conversion, GrabCut, tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anima.errors import InputError
from anima.perception import (
    DepthAnythingEstimator,
    SamSegmenter,
    disparity_to_distance,
    estimate_distance,
    ground_plane_distance,
    mask_from_box,
    mask_from_points,
)

H, W = 96, 128
DISC_CENTER, DISC_RADIUS = (70.0, 50.0), 22.0


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / float((a | b).sum())


@pytest.fixture(scope="module")
def disc_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """Textured green/blue background with a distinct red disc; returns (image, disc mask)."""
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.random((3, H // 4, W // 4), dtype=np.float32))
    texture = F.interpolate(noise[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    image = torch.stack([0.1 + 0.2 * texture[0], 0.3 + 0.4 * texture[1], 0.3 + 0.4 * texture[2]])
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    disc = (xs - DISC_CENTER[0]) ** 2 + (ys - DISC_CENTER[1]) ** 2 <= DISC_RADIUS**2
    red = torch.tensor([0.9, 0.15, 0.1])[:, None]
    image[:, disc] = red + 0.05 * texture[:, disc]
    return image.clamp(0, 1), disc


# --------------------------------------------------------------------------- ground plane


def test_ground_distance_grows_towards_horizon() -> None:
    depth = ground_plane_distance((H, W), focal=100.0, horizon=0.5, max_distance=50.0)
    assert depth.shape == (H, W) and depth.dtype == torch.float32
    column = depth[:, 0]
    below = column[H // 2 + 1 :]
    assert torch.all(below[:-1] >= below[1:])  # farther towards the horizon
    assert below[-1] < below[0]
    assert torch.allclose(depth[: H // 2 + 1], torch.tensor(50.0))  # sky / far at and above
    y = H - 1
    assert depth[y, 3] == pytest.approx(100.0 * 1.6 / (y - H / 2), rel=1e-5)
    assert torch.all(depth == depth[:, :1])  # constant along rows


def test_ground_objects_stand_on_ground() -> None:
    focal = 120.0
    ground = ground_plane_distance((H, W), focal)
    low = torch.zeros(H, W, dtype=torch.bool)
    low[60:90, 10:40] = True
    high = torch.zeros(H, W, dtype=torch.bool)
    high[50:70, 70:100] = True
    depth = ground_plane_distance((H, W), focal, masks=[low, high])
    for mask, bottom in ((low, 89), (high, 69)):
        assert torch.all(depth[mask] == ground[bottom, 0])
    assert depth[low][0] < depth[high][0]  # the lower object is nearer
    assert torch.equal(depth[~(low | high)], ground[~(low | high)])


def test_ground_overlap_nearest_wins_and_errors() -> None:
    near = torch.zeros(H, W, dtype=torch.bool)
    near[40:90, 20:60] = True
    far = torch.zeros(H, W, dtype=torch.bool)
    far[30:70, 40:80] = True
    depth = ground_plane_distance((H, W), 100.0, masks=[near, far])
    ground = ground_plane_distance((H, W), 100.0)
    assert torch.all(depth[near] == ground[89, 0])
    with pytest.raises(InputError):
        ground_plane_distance((H, W), 100.0, masks=[torch.zeros(H, W + 1, dtype=torch.bool)])
    with pytest.raises(InputError):
        ground_plane_distance((H, W), -1.0)


# --------------------------------------------------------------------------- disparity


def test_disparity_to_distance_monotone_and_exact_endpoints() -> None:
    disparity = torch.linspace(-3.0, 7.0, 101) * 2.5 + 4.0
    distance = disparity_to_distance(disparity, near=0.5, far=20.0)
    assert torch.all(distance[1:] < distance[:-1])
    assert distance[-1] == pytest.approx(0.5, rel=1e-6)
    assert distance[0] == pytest.approx(20.0, rel=1e-6)
    # affine invariance of the input
    assert torch.allclose(distance, disparity_to_distance(3 * disparity - 1, 0.5, 20.0))


def test_disparity_constant_and_errors() -> None:
    flat = disparity_to_distance(torch.full((4, 5), 3.0), near=1.0, far=50.0)
    assert torch.allclose(flat, torch.tensor(2.0 / (1.0 + 1.0 / 50.0)))
    with pytest.raises(InputError):
        disparity_to_distance(torch.ones(3), near=2.0, far=1.0)
    with pytest.raises(InputError):
        disparity_to_distance(torch.tensor([1.0, float("nan")]))


# --------------------------------------------------------------------------- GrabCut


def test_mask_from_box_recovers_disc(disc_scene) -> None:
    image, disc = disc_scene
    cx, cy = DISC_CENTER
    r = DISC_RADIUS + 6
    mask = mask_from_box(image, (cx - r, cy - r, cx + r, cy + r))
    assert mask.shape == (H, W) and mask.dtype == torch.bool
    assert _iou(mask, disc) > 0.8
    assert torch.equal(mask, mask_from_box(image, (cx - r, cy - r, cx + r, cy + r)))


def test_mask_from_box_clips_and_falls_back(disc_scene) -> None:
    image, _ = disc_scene
    whole = mask_from_box(image, (-10, -10, W + 10, H + 10))
    assert whole.shape == (H, W) and whole.any()
    with pytest.raises(InputError):
        mask_from_box(image, (W + 1, 0, W + 20, 10))
    with pytest.raises(InputError):
        mask_from_box(image, (20, 20, 10, 30))


def test_mask_from_points_recovers_disc(disc_scene) -> None:
    image, disc = disc_scene
    cx, cy = DISC_CENTER
    for points in ([(cx, cy)], [(cx - 10, cy - 5), (cx + 8, cy + 9)]):
        mask = mask_from_points(image, points)
        assert mask.shape == (H, W) and mask.dtype == torch.bool
        assert _iou(mask, disc) > 0.8
        assert all(mask[int(y), int(x)] for x, y in points)


def test_mask_from_points_errors(disc_scene) -> None:
    image, _ = disc_scene
    with pytest.raises(InputError):
        mask_from_points(image, [(W + 0.5, 10.0)])
    with pytest.raises(InputError):
        mask_from_points(image, [(5.0, -1.0)])
    with pytest.raises(InputError):
        mask_from_points(image, [])
    with pytest.raises(InputError):
        mask_from_points(torch.zeros(H, W), [(5.0, 5.0)])


# --------------------------------------------------------------------------- tiny Depth Anything


def _save_tiny_depth_anything(directory: Path, kind: str) -> Path:
    from anima.models.tiny_depth import save_tiny_depth_anything

    return save_tiny_depth_anything(directory, kind)


def test_depth_anything_relative(tmp_path: Path, disc_scene) -> None:
    image, _ = disc_scene
    directory = _save_tiny_depth_anything(tmp_path / "relative", "relative")
    estimator = DepthAnythingEstimator(directory, near=1.0, far=50.0)
    assert not estimator.is_metric
    distance = estimator(image)
    raw = estimator.predict_raw(image)
    assert distance.shape == (H, W) and raw.shape == (H, W)
    assert torch.isfinite(distance).all() and (distance > 0).all()
    assert raw.max() > raw.min()
    assert float(distance.min()) == pytest.approx(1.0, rel=1e-5)
    assert float(distance.max()) == pytest.approx(50.0, rel=1e-5)
    assert torch.allclose(distance, disparity_to_distance(raw, 1.0, 50.0))
    # estimate_distance picks the model when the directory holds a config.json
    assert torch.allclose(estimate_distance(image, 100.0, [], directory), distance)


def test_depth_anything_metric(tmp_path: Path, disc_scene) -> None:
    image, _ = disc_scene
    directory = _save_tiny_depth_anything(tmp_path / "metric", "metric")
    estimator = DepthAnythingEstimator(directory)
    assert estimator.is_metric
    distance = estimator(image)
    assert distance.shape == (H, W)
    assert torch.isfinite(distance).all() and (distance > 0).all() and (distance <= 20).all()
    assert torch.allclose(distance, estimator.predict_raw(image).clamp_min(1e-3))


def test_depth_anything_pickle_needs_allow_pickle(tmp_path: Path, disc_scene) -> None:
    image, _ = disc_scene
    directory = _save_tiny_depth_anything(tmp_path / "relative", "relative")
    estimator = DepthAnythingEstimator(directory)
    reference = estimator(image)
    model = estimator.model
    (directory / "model.safetensors").unlink()
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    with pytest.raises(InputError, match="allow-pickle"):
        DepthAnythingEstimator(directory)
    loaded = DepthAnythingEstimator(directory, allow_pickle=True)
    assert torch.allclose(loaded(image), reference, atol=1e-5)


def test_depth_anything_missing_files(tmp_path: Path, disc_scene) -> None:
    image, _ = disc_scene
    with pytest.raises(InputError, match="not found"):
        DepthAnythingEstimator(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="config.json"):
        DepthAnythingEstimator(empty)
    (empty / "config.json").write_text("{}")
    with pytest.raises(InputError, match="weights"):
        DepthAnythingEstimator(empty)
    # estimate_distance: no directory or no config.json -> ground-plane fallback
    fallback = ground_plane_distance((H, W), 100.0)
    assert torch.equal(estimate_distance(image, 100.0, [], None), fallback)
    assert torch.equal(estimate_distance(image, 100.0, [], tmp_path / "nowhere"), fallback)


# --------------------------------------------------------------------------- tiny SAM


def _save_tiny_sam(directory: Path) -> Path:
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    channels = 16
    vision = SamVisionConfig(
        hidden_size=32,
        output_channels=channels,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
        window_size=2,
        global_attn_indexes=[1],
        num_pos_feats=channels // 2,
        mlp_dim=64,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=channels, image_size=64, patch_size=16, mask_input_channels=4
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=channels,
        mlp_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        iou_head_hidden_dim=16,
    )
    torch.manual_seed(0)
    SamModel(
        SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    ).save_pretrained(directory)
    image_processor = SamImageProcessor(
        size={"longest_edge": 64},
        pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16},
    )
    SamProcessor(image_processor).save_pretrained(directory)
    return directory


def test_sam_segmenter(tmp_path: Path, disc_scene) -> None:
    image, _ = disc_scene
    directory = _save_tiny_sam(tmp_path / "sam")
    points = [DISC_CENTER, (60.0, 40.0)]
    mask = SamSegmenter(directory)(image, points)
    assert mask.shape == (H, W) and mask.dtype == torch.bool
    routed = mask_from_points(image, points, sam_dir=directory)
    assert torch.equal(routed, mask)
    with pytest.raises(InputError, match="processor"):
        (tmp_path / "bare").mkdir()
        (tmp_path / "bare" / "config.json").write_text("{}")
        (tmp_path / "bare" / "model.safetensors").write_bytes(b"")
        SamSegmenter(tmp_path / "bare")
    with pytest.raises(InputError):
        mask_from_points(image, [(W + 3.0, 0.0)], sam_dir=directory)
