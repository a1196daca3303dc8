"""Preview and generation of a draft: `anima.pipeline.animate` on its spec, writing videos.

The preview is the weight-free ``coarse`` method (at most `PREVIEW_MAX_FRAMES` frames) on the
scene the page already shows, written twice: as the video ``anima animate SPEC --method coarse``
writes (``<photo>.coarse.mp4``, offered for download) and with LeviTor's K-means control points
drawn on it (shown in the page). Generation runs the chosen method and writes
``<photo>.<method>.mp4``. Neither changes the draft.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from anima.io import write_video
from anima.methods.registry import get_method
from anima.pipeline import AnimateResult, animate, resolve_spec
from anima.spec import MotionSpec
from anima.studio import state
from anima.studio.draw import control_points_overlay
from anima.studio.perception import Perception
from anima.studio.state import Draft
from anima.weights import Weights

PREVIEW_MAX_FRAMES = 24
"""The preview renders at most this many frames (``--frames`` says the same to the CLI)."""


@dataclass
class Video:
    """A finished run: the video file(s) and what to tell the user."""

    path: Path
    shown: Path
    frames: torch.Tensor
    messages: list[str] = field(default_factory=list)


def _run_folder(draft: Draft) -> Path:
    return Path(tempfile.mkdtemp(prefix="run-", dir=draft.workdir))


def _animate(
    spec: MotionSpec,
    perception: Perception,
    weights: Weights,
    draft: Draft,
    device: str,
    on_stage: Callable[[str], None],
) -> tuple[AnimateResult, list[str]]:
    """`animate` on the cached scene, with warnings turned into messages."""
    on_stage("building the scene (depth, masks)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = perception.scene(spec, Path(draft.workdir) / "cache")
        result = animate(spec, weights, device=device, on_stage=on_stage, scene=scene)
    return result, [str(w.message) for w in caught]


def preview(
    draft: Draft,
    perception: Perception,
    on_stage: Callable[[str], None] = lambda _text: None,
) -> Video:
    """The coarse preview of the draft (see the module docstring)."""
    spec = state.preview_spec(draft, PREVIEW_MAX_FRAMES)
    messages = []
    if not any(obj.moves for obj in spec.objects) and spec.camera is None:
        messages.append(
            "nothing moves yet: give an object a path of two or more points, or pick a camera "
            "move; the preview shows the still photo"
        )
    if spec.num_frames < int((draft.spec or {}).get("num_frames", 16)):
        messages.append(
            f"the preview has {spec.num_frames} frames (the spec {draft.spec['num_frames']})"
        )
    resolved = resolve_spec(spec, method="coarse")
    result, warned = _animate(resolved, perception, perception.weights, draft, "cpu", on_stage)
    on_stage("writing the preview")
    folder = _run_folder(draft)
    stem = Path(spec.image).stem
    path = folder / f"{stem}.coarse.mp4"
    write_video(path, result.frames, spec.fps, where="preview")
    points = getattr(result.controls, "points", None)
    overlay = control_points_overlay(result.frames, points)
    shown = folder / "preview.mp4"
    frames = torch.from_numpy(overlay.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    write_video(shown, frames, spec.fps, where="preview")
    return Video(path, shown, result.frames, messages + warned)


def generate(
    draft: Draft,
    method: str,
    perception: Perception,
    weights: Weights,
    device: str = "cpu",
    on_stage: Callable[[str], None] = lambda _text: None,
) -> Video:
    """The draft's video by ``method`` (its weights must be present)."""
    spec = resolve_spec(state.to_spec(draft), method=method, weights=weights)
    get_method(method, "method").parse_options(spec.options, "spec options")
    result, warned = _animate(spec, perception, weights, draft, device, on_stage)
    on_stage("writing the video")
    folder = _run_folder(draft)
    path = folder / f"{Path(spec.image).stem}.{method}.mp4"
    write_video(path, result.frames, spec.fps, where="video")
    return Video(path, path, result.frames, warned)
