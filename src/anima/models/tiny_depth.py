"""A tiny random Depth Anything in transformers layout (``--weights tiny`` for what reads
``DIR/depth-anything/``: D-RMSE in ``anima eval``, and the perception tests).

Written to a folder exactly as ``save_pretrained`` writes a real checkpoint, so it is read by
the same loader as a user's (`anima.perception.depth.DepthAnythingEstimator`).
"""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_depth_anything(directory: Path, kind: str = "relative", seed: int = 0) -> Path:
    """A two-layer DINOv2-backed Depth Anything (56 px input) of ``kind`` ("relative" or
    "metric") saved with its image processor into ``directory``."""
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=14,
        image_size=56,
        out_indices=[1, 2],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        reassemble_factors=[2, 1],
        neck_hidden_sizes=[8, 16],
        fusion_hidden_size=8,
        head_hidden_size=4,
        depth_estimation_type=kind,
        max_depth=20,
    )
    generator = torch.Generator().manual_seed(seed)
    model = DepthAnythingForDepthEstimation(config).eval()
    with torch.no_grad():  # random init is nearly constant; make the output vary over the image
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.save_pretrained(directory)
    processor = DPTImageProcessor(
        size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14
    )
    processor.save_pretrained(directory)
    return directory
