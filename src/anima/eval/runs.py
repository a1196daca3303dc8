"""One spec made ready for one method, checked and run: what `anima eval suite` and
`anima compare` share (README, "Evaluation"; docs/architecture.md,
"The CLI's promises": everything is checked before the first render).

`spec_for_method` applies a run's overrides to a loaded spec: the number of frames, the
working size (the spec's pixel coordinates scaled onto the new grid, `anima.scene.pixel_mapping`),
the samplers' steps and per-method options. A spec written for another method keeps its motion
but not its options (they belong to that method); `anima.preflight.check_resolved_spec` checks
it before any run; `run_method` animates it and holds the frames.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anima.errors import InputError
from anima.methods.registry import get_method
from anima.pipeline import AnimateResult, animate, resolve_spec
from anima.spec import MotionSpec, format_validation_error
from anima.weights import Weights

#: Options that count a sampler's denoising steps: ``steps`` sets each one a method has.
STEP_OPTIONS = ("num_inference_steps", "interpolation_steps")

Side = Annotated[int, Field(ge=16, le=4096)]


class Overrides(BaseModel):
    """What a suite (or `anima compare`) changes in every spec it runs."""

    model_config = ConfigDict(extra="forbid")
    frames: int | None = Field(None, ge=2, le=1024, description="num_frames of every spec.")
    size: Side | tuple[Side, Side] | None = Field(
        None,
        description="Working size: [H, W], or the longer side (aspect kept, the other side "
        "a multiple of 8); the spec's coordinates are scaled onto it.",
    )
    steps: int | None = Field(
        None, ge=1, le=1000, description="Denoising steps of each method that has them."
    )
    seed: int | None = Field(None, ge=0, lt=2**63, description="Seed of every spec.")

    def key(self) -> dict[str, Any]:
        """The overrides as JSON data (part of a run's inputs hash)."""
        return self.model_dump(mode="json")


def parse_overrides(data: dict[str, Any], where: str) -> Overrides:
    """`Overrides` from data (None values left out); a bad value is one `InputError`."""
    try:
        return Overrides.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        raise InputError(format_validation_error(exc), where) from None


def _round8(value: float) -> int:
    return max(16, int(round(value / 8.0)) * 8)


def target_size(current: tuple[int, int], size: int | tuple[int, int]) -> tuple[int, int]:
    """The working size an override ``size`` asks for, from the spec's ``current`` (H, W)."""
    if not isinstance(size, int):
        return int(size[0]), int(size[1])
    height, width = current
    scale = size / max(height, width)
    if height >= width:
        return size, _round8(width * scale)
    return _round8(height * scale), size


def _working_size(spec: MotionSpec) -> tuple[int, int]:
    if spec.size is not None:
        return int(spec.size[0]), int(spec.size[1])
    from anima.scene import source_size

    return source_size(spec.resolve(spec.image))


def _scale_objects(data: dict[str, Any], source: tuple[int, int], target: tuple[int, int]) -> None:
    """Every pixel coordinate of the spec's objects moved from the ``source`` grid to ``target``'s
    (`anima.scene.pixel_mapping`: pixel centres at integers, outer edges aligned)."""
    from anima.scene import pixel_mapping

    mapping = pixel_mapping(source, target)
    sx, ox, sy, oy = (float(mapping[0, 0]), float(mapping[0, 2]), float(mapping[1, 1]),
                      float(mapping[1, 2]))  # fmt: skip

    def point(xy: list[float]) -> list[float]:
        return [xy[0] * sx + ox, xy[1] * sy + oy]

    for obj in data["objects"]:
        if obj.get("box") is not None:
            x0, y0, x1, y1 = obj["box"]
            obj["box"] = [*point([x0, y0]), *point([x1, y1])]
        for key in ("points", "polygon"):
            if obj.get(key) is not None:
                obj[key] = [point(xy) for xy in obj[key]]
        for keyframe in obj.get("trajectory", []):
            keyframe["x"], keyframe["y"] = point([keyframe["x"], keyframe["y"]])


def spec_for_method(
    spec: MotionSpec,
    method: str,
    weights: Weights,
    overrides: Overrides | None = None,
    options: dict[str, Any] | None = None,
    where: str = "command-line overrides",
) -> MotionSpec:
    """``spec`` resolved (`anima.pipeline.resolve_spec`) for ``method`` with ``overrides`` and
    ``options`` (merged over the spec's own options when the spec names no method or this one;
    a spec written for another method keeps only its motion). Bad values are one `InputError`
    naming ``where`` (the place of the overrides and options)."""
    overrides = overrides or Overrides()
    method_cls = get_method(method, where)
    data = spec.model_dump(mode="json")
    data["method"] = method
    own = dict(spec.options) if spec.method in (None, method) else {}
    merged = own | dict(options or {})
    if overrides.steps is not None:
        for name in STEP_OPTIONS:
            if name in method_cls.options_model.model_fields:
                merged[name] = overrides.steps
    data["options"] = merged
    if overrides.size is not None:
        current = _working_size(spec)
        size = target_size(current, overrides.size)
        _scale_objects(data, current, size)
        data["size"] = list(size)
    try:
        changed = MotionSpec.model_validate_json(json.dumps(data))
    except ValidationError as exc:
        raise InputError(format_validation_error(exc), where) from None
    changed = changed.with_base_dir(spec.base_dir).with_source(spec.where)
    resolved = resolve_spec(
        changed, method=method, seed=overrides.seed, num_frames=overrides.frames, weights=weights
    )
    method_cls.parse_options(resolved.options, where)
    return resolved


def method_ready(method: str, weights: Weights) -> bool:
    """Whether ``method``'s weights (for its default options) are present (or built in)."""
    return not get_method(method).missing_components(weights)


def run_method(
    spec: MotionSpec,
    weights: Weights,
    device: str = "cpu",
    dtype: str = "float32",
    on_stage: Callable[[str], None] | None = None,
) -> AnimateResult:
    """Animate a checked spec; the stream is held, so that it can be written and scored."""
    result = animate(spec, weights, device=device, dtype=dtype, on_stage=on_stage)
    result.stream.hold()
    return result


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's file names and sizes (a run's inputs hash)."""
    import hashlib

    digest = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{item.relative_to(path).as_posix()}:{item.stat().st_size}\n".encode())
    elif path.is_file():
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def spec_files(spec: MotionSpec) -> list[Path]:
    """The files a resolved spec names (image, depth, render, masks, meshes, pose)."""
    names = [spec.image, spec.depth, spec.render]
    names += [obj.mask for obj in spec.objects] + [obj.mesh for obj in spec.objects]
    if spec.pose is not None:
        pose = spec.pose
        names += [pose.video, pose.keypoints, pose.reference_keypoints, pose.skeleton_video]
    return [spec.resolve(name) for name in names if name]
