"""Point tracks for ObjMC: CoTracker when its weights are given, else the project's tracker.

(README, "Evaluation"; docs/architecture.md, "Models and weights")

LeviTor (§4.1, Tab. 1) computes ObjMC on trajectories that "are extracted using Co-Tracker"
(Karaev et al., "CoTracker: It is Better to Track Together", 2023). CoTracker is read as a
TorchScript ``DIR/metrics/cotracker/cotracker.pt`` called as CoTracker's public predictor is:
``model(video, queries)`` with ``video`` (B, T, 3, H, W) float in 0..255 and ``queries``
(B, N, 3) rows ``(t, x, y)`` (query frame, pixel position), returning ``tracks`` (B, T, N, 2)
pixel positions and ``visibility`` (B, T, N) (or (B, T, N, 1)). The predictor resizes the video
to its own working size and maps the tracks back, so the video goes in at its own size. Without
that file the weight-free Lucas-Kanade tracker (`anima.metrics.tracking.track_points`) is used.
Either way the result is in `track_points`' form, which `anima.metrics.trajectory.objmc` scores.
"""

from __future__ import annotations

import functools
import warnings

import torch

from anima.errors import InputError
from anima.metrics.components import COTRACKER
from anima.metrics.tracking import track_points
from anima.weights import Weights


@functools.lru_cache(maxsize=1)
def _load_scripted(path: str, device: str) -> torch.nn.Module:
    """The TorchScript at ``path`` on ``device``, kept for the next video of an evaluation."""
    try:
        with warnings.catch_warnings():  # TorchScript is how CoTracker is exported
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(path, map_location=torch.device(device))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise InputError(f"cannot load CoTracker ({reason})", path) from error
    return module.eval()


def load_cotracker(weights: Weights, device: str | torch.device = "cpu") -> torch.nn.Module | None:
    """The TorchScript CoTracker in ``DIR/metrics/cotracker/``, or None when it is absent (and
    for ``--weights tiny``: CoTracker has no tiny stand-in, the project's tracker is one). The
    last one loaded is cached."""
    folder = weights.component_dir(COTRACKER)
    if folder is None:
        return None
    return _load_scripted(str((folder / "cotracker.pt").resolve()), str(torch.device(device)))


@torch.no_grad()
def cotracker_tracks(
    video: torch.Tensor,
    points: torch.Tensor,
    model: torch.nn.Module,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Track ``points`` (N, 2) pixel positions (x, y) of frame 0 through ``video``
    (F, 3, H, W) in [0, 1] with a CoTracker predictor ``model`` on ``device``. Returns
    ``tracks`` (N, F, 2) float32 and ``ok`` (N, F) bool (CoTracker's visibility), on the CPU."""
    if video.dim() != 4 or video.shape[1] != 3:
        raise ValueError(f"expected a video (F, 3, H, W), got shape {tuple(video.shape)}")
    points = points.reshape(-1, 2).to(torch.float32)
    num_frames, n = int(video.shape[0]), int(points.shape[0])
    if n == 0:
        return torch.zeros(0, num_frames, 2), torch.zeros(0, num_frames, dtype=torch.bool)
    device = torch.device(device)
    clip = (video.detach().to(device, torch.float32).clamp(0, 1) * 255.0)[None]
    queries = torch.cat([torch.zeros(n, 1), points.cpu()], dim=1)[None].to(device)
    out = model(clip, queries)
    if not isinstance(out, (tuple, list)) or len(out) < 2:
        raise ValueError("CoTracker must return (tracks, visibility)")
    tracks, visibility = out[0], out[1]
    if tuple(tracks.shape) != (1, num_frames, n, 2):
        raise ValueError(
            f"CoTracker tracks should be (1, {num_frames}, {n}, 2), got {tuple(tracks.shape)}"
        )
    visibility = visibility.reshape(1, num_frames, n)
    ok = visibility > 0.5 if visibility.is_floating_point() else visibility.bool()
    tracks = tracks[0].permute(1, 0, 2).float().cpu()
    ok = ok[0].permute(1, 0).cpu() & torch.isfinite(tracks).all(dim=-1)
    return tracks.contiguous(), ok.contiguous()


def track_for_objmc(
    video: torch.Tensor,
    points: torch.Tensor,
    weights: Weights,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tracks (N, F, 2) and ``ok`` (N, F) of ``points`` (N, 2, frame 0) through ``video``
    (F, 3, H, W) in [0, 1]: CoTracker when ``DIR/metrics/cotracker/cotracker.pt`` is present
    (LeviTor §4.1), else `anima.metrics.tracking.track_points`. Feed them to
    `anima.metrics.trajectory.objmc`."""
    model = load_cotracker(weights, device)
    if model is None:
        return track_points(video, points)
    return cotracker_tracks(video, points, model, device)
