"""Every metric the five papers report, on one generated video (``anima eval video``).

(README, "Evaluation"; docs/architecture.md, "Package layout": ``metrics/``, ``eval/``)

`evaluate` computes each metric of `METRICS` whose inputs are given and whose weights are
present, and says for every other one why it was skipped. The inputs (`EvalInputs`):

- the generated video; a reference video (X-Dyna §4.1: the ground truth of a test video);
- a guidance render (I2V3D §4: SSIM and D-RMSE are measured against the render) with its
  foreground masks, which also split X-Dyna's foreground / background metrics;
- the spec: its input image (CLIP-I, Face-Cos without a reference), its prompt (CLIP-T), its
  condition (AnyI2V's appendix: DINO structure similarity of frame 0 to the condition) and its
  motion (ObjMC: LeviTor §4.1, points of each moved object re-tracked against where the spec
  takes them, `anima.eval.trajectories`).

Distribution metrics (FID, FVD, cd-FVD, DTFVD) compare sets of features: on one video FID pools
its frames and the FVDs its clips of ``clip_length`` frames (every window, stride 1), an
estimate of one video; `anima eval suite` pools the features of all cases
(`distribution_features`, `frechet_scores`), as the papers do over their test sets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anima.errors import InputError
from anima.metrics import components as mc
from anima.metrics.features import CLIP_LENGTH  # the FVDs' clips: 16 frames
from anima.metrics.summary import PSNR_CAP  # identical videos stay a number in JSON
from anima.weights import DEPTH_ANYTHING, Component, Weights


@dataclass
class EvalInputs:
    """What a video is scored with; every field but ``generated`` is optional."""

    generated: Tensor  # (F, 3, H, W) float in [0, 1]
    reference: Tensor | None = None  # (F, 3, H, W): the ground-truth video
    render: Tensor | None = None  # (F, 3, H, W): the guidance render
    masks: Tensor | None = None  # (F, 1, H, W) in [0, 1]: foreground
    image: Tensor | None = None  # (3, H, W): the input image
    condition: Tensor | None = None  # (3, H, W): the condition image (AnyI2V)
    prompt: str | None = None
    captions: list[str] | None = None  # other captions, CLIP-R's distractors
    spec: Any | None = None  # the resolved MotionSpec (ObjMC)
    intended_tracks: Tensor | None = None  # (N, F, 2) px where the spec takes its points
    tracks_valid: Tensor | None = None  # (N, F) bool


@dataclass(frozen=True)
class Metric:
    """One reported metric: what it needs, the model folder it reads, its direction."""

    name: str
    needs: tuple[str, ...]  # fields of EvalInputs
    component: Component | None
    higher_is_better: bool
    distribution: bool = False
    paper: str = ""


def _m(name, needs, component, higher, distribution=False, paper=""):  # noqa: ANN001, ANN202
    return Metric(name, tuple(needs), component, higher, distribution, paper)


#: Every metric, in the order tables list them. ``fg_`` / ``bg_`` variants are the same metric
#: on the foreground / background (X-Dyna §4.1), computed where masks are given.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        _m("psnr", ["reference"], None, True, paper="X-Dyna Table 2"),
        _m("ssim", ["reference"], None, True, paper="X-Dyna Table 2"),
        _m("l1", ["reference"], None, False, paper="X-Dyna Table 2"),
        _m("lpips", ["reference"], mc.LPIPS, False, paper="X-Dyna Table 2"),
        _m("fid", ["reference"], mc.INCEPTION, False, True, "LeviTor Table 1, X-Dyna Table 2"),
        _m("fvd", ["reference"], mc.I3D, False, True, "LeviTor Table 1"),
        _m("cd_fvd", ["reference"], mc.VIDEOMAE, False, True, "X-Dyna Table 2"),
        _m("dtfvd", ["reference"], mc.DTFVD, False, True, "X-Dyna Table 1"),
        _m("face_cos", ["reference"], mc.FACE, True, paper="X-Dyna Table 2"),
        _m("face_det", [], None, True, paper="X-Dyna Table 2"),
        _m("ssim_render", ["render"], None, True, paper="I2V3D Table 1"),
        _m("d_rmse", ["render"], DEPTH_ANYTHING, False, paper="I2V3D Table 1"),
        _m("clip_i", ["image"], mc.CLIP, True, paper="I2V3D Table 1, Animate124 Table 1"),
        _m("clip_frame", [], mc.CLIP, True, paper="I2V3D Table 1, Animate124 Table 1 (CLIP-F)"),
        _m("clip_t", ["prompt"], mc.CLIP, True, paper="Animate124 Table 1"),
        _m("clip_r", ["prompt", "captions"], mc.CLIP, True, paper="Animate124 Table 1"),
        _m("dino_structure", ["condition"], mc.DINO, True, paper="AnyI2V appendix Table 1"),
        _m("objmc", ["intended_tracks"], None, False, paper="LeviTor Table 1"),
    )
}
#: Metrics with foreground / background variants when masks are given.
REGION_METRICS = ("psnr", "ssim", "l1", "lpips", "fid", "cd_fvd", "dtfvd")


def metric_names(with_regions: bool = True) -> list[str]:
    """Every metric's name, region variants included."""
    names = list(METRICS)
    if with_regions:
        names += [f"{r}_{n}" for r in ("fg", "bg") for n in REGION_METRICS]
    return names


def higher_is_better(name: str) -> bool:
    return METRICS[name.removeprefix("fg_").removeprefix("bg_")].higher_is_better


@dataclass
class EvalReport:
    """Values by metric name, and why each other metric was skipped."""

    values: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        values = {k: (None if not math.isfinite(v) else v) for k, v in self.values.items()}
        return {"values": values, "skipped": dict(self.skipped)}


def weights_reason(component: Component, weights: Weights) -> str | None:
    """Why ``component`` cannot be loaded from ``weights`` (None when it can)."""
    if weights.builtin == "tiny":
        return None
    if weights.root is None:
        return f"no weights given (--weights DIR with {component.subdir}/)"
    if component.present(weights.root):
        return None
    return f"{component.subdir}/{component.missing(weights.root)} not found in {weights.root}"


def _regions(inputs: EvalInputs) -> list[tuple[str, Tensor | None]]:
    """(prefix, mask or None) of the whole frame and, with masks, of each region."""
    regions: list[tuple[str, Tensor | None]] = [("", None)]
    if inputs.masks is not None:
        foreground = (inputs.masks > 0.5).float()
        regions += [("fg_", foreground), ("bg_", 1.0 - foreground)]
    return regions


def _apply(frames: Tensor, mask: Tensor | None) -> Tensor:
    """``frames`` with what the mask leaves out set to black (X-Dyna's segmented videos)."""
    return frames if mask is None else frames * mask


class _Scorer:
    """Loads each model once and computes the metrics a call asks for."""

    def __init__(
        self,
        inputs: EvalInputs,
        weights: Weights,
        device: str,
        clip_length: int,
        clip_stride: int = 1,
    ):
        self.inputs = inputs
        self.weights = weights
        self.device = torch.device(device)
        self.clip_length = clip_length
        self.clip_stride = clip_stride
        self._models: dict[str, Any] = {}

    def model(self, name: str, loader: Callable[[], Any]) -> Any:
        if name not in self._models:
            self._models[name] = loader()
        return self._models[name]

    # -- per-video metrics -------------------------------------------------------------------

    def full_reference(self, name: str, generated: Tensor, reference: Tensor, mask) -> float:
        from anima.metrics.image import psnr, ssim

        if name == "psnr":
            region = None if mask is None else mask[:, 0] > 0.5
            return psnr(generated, reference, mask=region, max_db=PSNR_CAP)
        if name == "ssim":
            return ssim(_apply(generated, mask), _apply(reference, mask))
        if name == "l1":
            if mask is None:
                return float((generated - reference).abs().mean())
            weight = mask.expand_as(generated)
            return float(((generated - reference).abs() * weight).sum() / weight.sum().clamp(1))
        if name == "lpips":
            from anima.metrics.lpips import load_lpips, lpips

            net = self.model("lpips", lambda: load_lpips(self.weights, self.device))
            a, b = _apply(generated, mask), _apply(reference, mask)
            return float(lpips(a.to(self.device), b.to(self.device), net).mean())
        raise KeyError(name)

    # -- distribution metrics ----------------------------------------------------------------

    def extractor(self, name: str) -> Any:
        from anima.metrics import features

        loaders = {
            "fid": features.load_inception,
            "fvd": features.load_i3d,
            "cd_fvd": features.load_videomae,
            "dtfvd": features.load_dtfvd,
        }
        return self.model(name, lambda: loaders[name](self.weights, self.device))

    def features(self, name: str, video: Tensor) -> Tensor:
        from anima.metrics.features import clip_features, frame_features

        extractor = self.extractor(name)
        if name == "fid":
            return frame_features(extractor, video.to(self.device))
        return clip_features(
            extractor, video.to(self.device), self.clip_length, stride=self.clip_stride
        )


def _needs_reason(metric: Metric, inputs: EvalInputs) -> str | None:
    flags = {
        "reference": "--reference VIDEO",
        "render": "--render DUMP",
        "image": "--spec SPEC",
        "condition": "--spec SPEC",
        "prompt": "--prompt TEXT (or a spec's prompt)",
        "captions": "--captions FILE (other captions, one a line)",
        "intended_tracks": "--spec SPEC with moving objects",
    }
    for need in metric.needs:
        if getattr(inputs, need) is None:
            return f"needs {flags[need]}"
    return None


def check_metric_names(metrics: Collection[str] | None) -> set[str]:
    """The metric names asked for (all when None); an unknown one is an `InputError`."""
    if metrics is None:
        return set(metric_names())
    unknown = sorted(set(metrics) - set(metric_names()))
    if unknown:
        raise InputError(
            f"unknown metric {unknown[0]!r} (known: {', '.join(metric_names())})", "--metrics"
        )
    return set(metrics)


def plan(
    inputs: EvalInputs,
    weights: Weights,
    metrics: Collection[str] | None = None,
    clip_length: int | None = CLIP_LENGTH,
) -> tuple[list[str], dict[str, str]]:
    """Which metrics `evaluate` will compute, and why each other one is skipped
    (``clip_length`` None: distribution metrics are pooled over cases, not one video's)."""
    wanted = check_metric_names(metrics)
    run: list[str] = []
    skipped: dict[str, str] = {}
    for metric in METRICS.values():
        names = [metric.name]
        if metric.name in REGION_METRICS:
            names += [f"fg_{metric.name}", f"bg_{metric.name}"]
        for name in names:
            if name not in wanted:
                continue
            reason = _needs_reason(metric, inputs)
            if reason is None and name.startswith(("fg_", "bg_")) and inputs.masks is None:
                reason = "needs foreground masks (--render DUMP or --masks VIDEO)"
            if reason is None and metric.component is not None:
                reason = weights_reason(metric.component, weights)
                reason = None if reason is None else f"weights: {reason}"
            if reason is None and metric.distribution and clip_length is not None:
                reason = _distribution_reason(metric, inputs, clip_length)
            if reason is None:
                run.append(name)
            else:
                skipped[name] = reason
    return run, skipped


def _distribution_reason(metric: Metric, inputs: EvalInputs, clip_length: int) -> str | None:
    """Why one video cannot give the metric: a covariance needs two samples (frames for FID,
    clips of ``clip_length`` frames, every window, for the FVDs)."""
    frames = int(inputs.generated.shape[0])
    if metric.name == "fid":
        return None if frames >= 2 else "needs at least 2 frames"
    if frames - clip_length + 1 >= 2:
        return None
    return (
        f"needs at least 2 clips of {clip_length} frames ({clip_length + 1} frames; "
        "--clip-length, or a suite, which pools the clips of every case)"
    )


def evaluate(
    inputs: EvalInputs,
    weights: Weights,
    device: str = "cpu",
    metrics: Collection[str] | None = None,
    clip_length: int = CLIP_LENGTH,
    on_metric: Callable[[str], None] | None = None,
) -> EvalReport:
    """Every metric of ``metrics`` (default all) that ``inputs`` and ``weights`` allow."""
    run, skipped = plan(inputs, weights, metrics, clip_length)
    report = EvalReport(skipped=skipped)
    scorer = _Scorer(inputs, weights, device, clip_length)
    regions = dict(_regions(inputs))
    for name in run:
        if on_metric is not None:
            on_metric(name)
        prefix = name[:3] if name.startswith(("fg_", "bg_")) else ""
        base = name[len(prefix) :]
        report.values[name] = _score(scorer, base, regions[prefix])
    return report


def _score(scorer: _Scorer, name: str, mask: Tensor | None) -> float:
    inputs = scorer.inputs
    generated = inputs.generated
    if name in ("psnr", "ssim", "l1", "lpips"):
        return scorer.full_reference(name, generated, inputs.reference, mask)
    if METRICS[name].distribution:
        from anima.metrics.frechet import frechet_from_features

        a = scorer.features(name, _apply(generated, mask))
        b = scorer.features(name, _apply(inputs.reference, mask))
        return frechet_from_features(a, b)
    if name == "ssim_render":
        from anima.metrics.image import ssim

        return ssim(generated, inputs.render)
    if name == "d_rmse":
        from anima.metrics.depth_error import depth_rmse, load_depth_fn

        depth = scorer.model("depth", lambda: load_depth_fn(scorer.weights, scorer.device))
        return depth_rmse(generated, inputs.render, depth)
    if name.startswith("clip_"):
        return _clip_metric(scorer, name)
    if name == "dino_structure":
        from anima.metrics.structure import dino_structure_similarity, load_dino

        dino = scorer.model("dino", lambda: load_dino(scorer.weights, scorer.device))
        return dino_structure_similarity(generated[0], inputs.condition, dino)
    if name in ("face_cos", "face_det"):
        return _face_metric(scorer, name)
    if name == "objmc":
        return _objmc(scorer)
    raise KeyError(name)


def _clip_metric(scorer: _Scorer, name: str) -> float:
    from anima.metrics.clip import (
        clip_frame_consistency,
        clip_i,
        clip_r_precision,
        clip_t,
        load_clip,
    )

    clip = scorer.model("clip", lambda: load_clip(scorer.weights, scorer.device))
    frames = scorer.inputs.generated.to(scorer.device)
    if name == "clip_i":
        return clip_i(frames, scorer.inputs.image.to(scorer.device), clip)
    if name == "clip_t":
        return clip_t(frames, scorer.inputs.prompt, clip)
    if name == "clip_r":  # every frame retrieves among the prompt and the other captions
        captions = [scorer.inputs.prompt, *scorer.inputs.captions]
        return clip_r_precision(frames, captions, 0, clip)
    return clip_frame_consistency(frames, clip)


def _face_metric(scorer: _Scorer, name: str) -> float:
    from anima.metrics import face

    if name == "face_det":
        return face.face_detection_rate(scorer.inputs.generated)
    embedder = scorer.model("face", lambda: face.load_face_embedder(scorer.weights, scorer.device))
    return face.face_cosine(scorer.inputs.generated, scorer.inputs.reference, embedder)


def _objmc(scorer: _Scorer) -> float:
    from anima.metrics.cotracker import track_for_objmc
    from anima.metrics.trajectory import objmc

    intended = scorer.inputs.intended_tracks
    tracks, tracked = track_for_objmc(
        scorer.inputs.generated, intended[:, 0], scorer.weights, scorer.device
    )
    valid = tracked & scorer.inputs.tracks_valid
    return objmc(tracks, intended, valid)


def distribution_features(
    inputs: EvalInputs,
    weights: Weights,
    device: str = "cpu",
    metrics: Collection[str] | None = None,
    clip_length: int = CLIP_LENGTH,
) -> dict[str, dict[str, Tensor]]:
    """Per distribution metric that can run: the features of the generated and the reference
    video (``{"generated": (N, D), "reference": (M, D)}``), for a suite to pool over cases:
    FID's of every frame, the FVDs' of consecutive clips of ``clip_length`` frames (a
    16-frame test video gives one clip, as in LeviTor §4.1); none for a video shorter than
    one clip."""
    run, _skipped = plan(inputs, weights, metrics, clip_length=None)
    scorer = _Scorer(inputs, weights, device, clip_length, clip_stride=clip_length)
    regions = dict(_regions(inputs))
    out: dict[str, dict[str, Tensor]] = {}
    for name in run:
        prefix = name[:3] if name.startswith(("fg_", "bg_")) else ""
        base = name[len(prefix) :]
        if not METRICS[base].distribution:
            continue
        if base != "fid" and int(inputs.generated.shape[0]) < clip_length:
            continue
        mask = regions[prefix]
        out[name] = {
            "generated": scorer.features(base, _apply(inputs.generated, mask)).cpu(),
            "reference": scorer.features(base, _apply(inputs.reference, mask)).cpu(),
        }
    return out


def frechet_scores(features: dict[str, list[dict[str, Tensor]]]) -> dict[str, float]:
    """Each distribution metric over the pooled features of all cases."""
    from anima.metrics.frechet import frechet_from_features

    scores = {}
    for name, cases in features.items():
        generated = torch.cat([case["generated"] for case in cases])
        reference = torch.cat([case["reference"] for case in cases])
        scores[name] = frechet_from_features(generated, reference)
    return scores


def _same_shape(video: Tensor, generated: Tensor, what: str, where: str) -> None:
    if tuple(video.shape) != tuple(generated.shape):
        raise InputError(
            f"{what} has {video.shape[0]} frames of {video.shape[-1]}x{video.shape[-2]}, the "
            f"generated video {generated.shape[0]} of {generated.shape[-1]}x{generated.shape[-2]}",
            where,
        )


def inputs_from(
    generated: Tensor,
    spec: Any | None = None,
    reference: Path | None = None,
    render: Path | None = None,
    prompt: str | None = None,
    masks: Path | None = None,
    weights: Weights | None = None,
    captions: Path | None = None,
) -> EvalInputs:
    """`EvalInputs` from files: ``reference`` and ``masks`` are videos (or frame folders),
    ``render`` a guidance render in I2V3D's layout or a ``--dump`` folder holding one under
    ``render/i2v3d/`` (`anima.render_import`), ``spec`` a resolved MotionSpec (its image,
    prompt, condition and motion). Videos must match the generated one in frames and size
    (`InputError` naming the flag)."""
    from anima.io import read_video

    inputs = EvalInputs(generated=generated, prompt=prompt or None)
    size = (int(generated.shape[-2]), int(generated.shape[-1]))
    if reference is not None:
        inputs.reference, _fps = read_video(reference, where="--reference")
        _same_shape(inputs.reference, generated, "the reference video", "--reference")
    if render is not None:
        inputs.render, render_masks = read_render(render, generated)
        inputs.masks = render_masks
    if masks is not None:
        video, _fps = read_video(masks, where="--masks")
        _same_shape(video, generated, "the mask video", "--masks")
        inputs.masks = video.mean(dim=1, keepdim=True)
    if captions is not None:
        inputs.captions = read_captions(captions)
    if spec is not None:
        from anima.eval.trajectories import spec_inputs

        found = spec_inputs(spec, size, int(generated.shape[0]), weights or Weights())
        inputs.image = found.image
        inputs.condition = found.condition
        inputs.intended_tracks = found.tracks
        inputs.tracks_valid = found.valid
        if inputs.prompt is None and spec.prompt:
            inputs.prompt = spec.prompt
    return inputs


def read_render(path: Path, generated: Tensor) -> tuple[Tensor, Tensor]:
    """The render's RGB frames and foreground masks at the generated video's size."""
    from anima.render_import import read_render_folder

    folder = Path(path)
    if (folder / "render" / "i2v3d").is_dir():  # an `anima animate --dump` folder
        folder = folder / "render" / "i2v3d"
    size = (int(generated.shape[-2]), int(generated.shape[-1]))
    frames = int(generated.shape[0])
    result = read_render_folder(folder, size, "--render", num_frames=frames)
    if result.num_frames != frames:
        raise InputError(
            f"the render has {result.num_frames} frames, the generated video {frames}", "--render"
        )
    rgb = torch.stack([frame.rgb for frame in result])
    masks = torch.stack([(frame.instance > 0).float()[None] for frame in result])
    return rgb, masks


def read_captions(path: Path) -> list[str]:
    """CLIP-R's distractor captions: one a line, blank lines left out (Animate124 §4.1 scores
    retrieval of the true prompt among the benchmark's other prompts)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.__class__.__name__
        raise InputError(f"cannot read the captions ({reason})", f"--captions {path}") from None
    captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise InputError("the captions file has no caption", f"--captions {path}")
    return captions
