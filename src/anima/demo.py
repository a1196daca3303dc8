"""``anima demo --toy``: a held-out toy scene animated by a tiny LeviTor trained on the toy world,
beside the truth.

A toy clip is drawn from the evaluation seed namespace (`anima.eval.levitor.eval_clip_seed`,
never a training seed); its MotionSpec (first frame, object paths as 3D trajectories) is run
through the ordinary ``levitor`` method with the given weights (a directory with ``svd/`` and
``levitor/``, or ``toy``: the packaged toy weights, which are not shipped yet, so that ``toy`` is
a one-line error until they are; README, "Toy weights"), and three panels are written
side by side: the clip's ground truth | the coarse 3D render the control points come from | the
generated video.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from anima.pipeline import AnimateResult, animate, resolve_spec
from anima.spec import load_spec
from anima.weights import Weights

if TYPE_CHECKING:
    from anima.world import ToyClip

PANEL_LABELS = ("ground truth", "coarse render", "generated")
#: Default demo seed (any value works: the clip comes from the evaluation namespace).
DEFAULT_DEMO_SEED = 0


@dataclass
class ToyDemo:
    """The demo's panels, each (F, 3, H, W) in [0, 1], and the run that made them."""

    clip: ToyClip
    truth: torch.Tensor
    coarse: torch.Tensor
    generated: torch.Tensor
    result: AnimateResult
    clip_seed: int
    fps: float


def run_toy_demo(
    weights: Weights,
    seed: int = DEFAULT_DEMO_SEED,
    steps: int = 25,
    on_stage: Callable[[str], None] | None = None,
) -> ToyDemo:
    """Draw the held-out clip of ``seed``, animate its spec with tiny LeviTor and return the
    three panels."""
    from anima.eval.levitor import eval_clip_seed
    from anima.world import WorldConfig, make_clip
    from anima.world.writer import write_clip

    clip_seed = eval_clip_seed(seed, 0)
    clip = make_clip(clip_seed, WorldConfig())
    with tempfile.TemporaryDirectory(prefix="anima-demo-") as tmp:
        folder = write_clip(clip, Path(tmp) / "clip")
        spec = load_spec(folder / "spec.json")
        spec = spec.model_copy(update={"options": {"num_inference_steps": steps}})
        spec = resolve_spec(spec, method="levitor", weights=weights)
        result = animate(spec, weights, on_stage=on_stage)
    assert result.controls.render is not None  # levitor always renders
    truth = torch.from_numpy(clip.frames).float()
    return ToyDemo(
        clip=clip,
        truth=truth,
        coarse=_at_size(result.controls.render.rgb.float(), tuple(truth.shape[-2:])),
        generated=result.frames,
        result=result,
        clip_seed=clip_seed,
        fps=clip.config.fps,
    )


def _at_size(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(F, 3, H, W) frames at ``size`` (bilinear): the coarse render is made at LeviTor's
    generation size, the panels are shown at the clip's."""
    if tuple(frames.shape[-2:]) == size:
        return frames
    resized = torch.nn.functional.interpolate(frames, size=size, mode="bilinear")
    return resized.clamp(0, 1)


def side_by_side(
    panels: list[torch.Tensor], labels: tuple[str, ...] = PANEL_LABELS, scale: int = 4
) -> torch.Tensor:
    """(F, 3, H', W') frames: the panels (each (F, 3, H, W)) enlarged ``scale`` times with
    nearest-neighbour (pixels stay pixels), 4-pixel gaps, and a label strip on top."""
    frames, _, height, width = panels[0].shape
    gap, strip = 4, 18
    out_h, out_w = strip + height * scale, len(panels) * (width * scale + gap) - gap
    canvas = np.full((frames, out_h, out_w, 3), 24, np.uint8)
    for i, (panel, label) in enumerate(zip(panels, labels, strict=True)):
        x0 = i * (width * scale + gap)
        images = (panel.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        for f in range(frames):
            big = cv2.resize(
                images[f], (width * scale, height * scale), interpolation=cv2.INTER_NEAREST
            )
            canvas[f, strip:, x0 : x0 + width * scale] = big
            cv2.putText(
                canvas[f], label, (x0 + 4, strip - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (235, 235, 235), 1, cv2.LINE_AA,
            )  # fmt: skip
    return torch.from_numpy(canvas).permute(0, 3, 1, 2).float() / 255.0
