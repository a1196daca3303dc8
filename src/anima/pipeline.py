"""The one data flow every entry point runs: MotionSpec -> Scene -> method.prepare -> generate.

The CLI, the studio and the Python API call `animate`; `write_dump` writes the intermediate truth
(`--dump DIR`) in the layout the README's CLI section fixes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from anima.errors import InputError
from anima.io import Staging, staged_outputs, write_depth_png, write_png
from anima.methods.base import Controls
from anima.methods.registry import default_method, get_method
from anima.scene import Scene, build_scene
from anima.spec import MotionSpec, format_validation_error, spec_to_json
from anima.weights import Weights

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or 'mps', checked against what this machine has."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(
            f"unknown device '{name}' (use cpu, cuda, cuda:N or mps)", "--device"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine", "--device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("MPS is not available on this machine", "--device")
    if device.type not in {"cpu", "cuda", "mps"}:
        raise InputError(f"unsupported device '{name}'", "--device")
    return device


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InputError(f"unknown dtype '{name}' (use {', '.join(DTYPES)})", "--dtype")
    return DTYPES[name]


def resolve_spec(
    spec: MotionSpec,
    method: str | None = None,
    seed: int | None = None,
    num_frames: int | None = None,
    weights: Weights | None = None,
) -> MotionSpec:
    """A copy of the spec with command-line overrides applied, the method chosen, and every
    path made absolute, so that it re-runs from anywhere (``spec.resolved.json``)."""
    weights = weights or Weights()
    if method is not None:
        get_method(method, "--method")
    elif spec.method is not None:
        get_method(spec.method, f"method {spec.where}")
    updates: dict = {"method": method or spec.method or default_method(weights)}
    if seed is not None:
        updates["seed"] = seed
    if num_frames is not None:
        updates["num_frames"] = num_frames
    data = spec.model_dump() | updates
    data["image"] = str(spec.resolve(spec.image).resolve())
    if spec.depth:
        data["depth"] = str(spec.resolve(spec.depth).resolve())
    for obj in data["objects"]:
        if obj.get("mask"):
            obj["mask"] = str(spec.resolve(obj["mask"]).resolve())
    if data.get("pose"):
        for key in ("video", "keypoints", "reference_keypoints"):
            if data["pose"].get(key):
                data["pose"][key] = str(spec.resolve(data["pose"][key]).resolve())
    try:
        resolved = MotionSpec.model_validate_json(json.dumps(data))
    except ValidationError as exc:  # an override out of range (e.g. --frames 1)
        raise InputError(format_validation_error(exc), "command-line overrides") from None
    return resolved.with_base_dir(spec.base_dir).with_source(spec.where)


@dataclass
class AnimateResult:
    frames: torch.Tensor  # (F, 3, H, W)
    controls: Controls
    spec: MotionSpec  # resolved
    seconds: dict[str, float] = field(default_factory=dict)


def animate(
    spec: MotionSpec,
    weights: Weights | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    on_stage: Callable[[str], None] | None = None,
    scene: Scene | None = None,
) -> AnimateResult:
    """Run ``spec`` (already resolved with `resolve_spec`) through its method. ``scene`` is
    the spec's scene when the caller has already built it (the studio keeps it between
    edits); it must be what `build_scene` gives for the spec."""
    weights = weights or Weights()
    stage = on_stage or (lambda _name: None)
    method_cls = get_method(spec.method or default_method(weights), f"method {spec.where}")
    options = method_cls.parse_options(spec.options, spec.where)  # fail before heavy work
    method = method_cls(options, weights, parse_device(device), parse_dtype(dtype), report=stage)
    seconds: dict[str, float] = {}

    if method_cls.components:
        start = time.perf_counter()
        stage(f"loading the {method_cls.name} models")
        method.load()
        seconds["load"] = time.perf_counter() - start

    if scene is None:
        start = time.perf_counter()
        stage("building the scene (depth, masks)")
        try:
            scene = build_scene(spec, weights)
        except InputError as exc:  # name the spec file as well as the field
            raise exc.in_spec(spec.where) from None
        seconds["scene"] = time.perf_counter() - start

    start = time.perf_counter()
    stage(f"preparing {method_cls.name} controls")
    controls = method.prepare(spec, scene)
    seconds["prepare"] = time.perf_counter() - start

    start = time.perf_counter()
    stage(f"generating with {method_cls.name}")
    frames = method.generate(controls)
    seconds["generate"] = time.perf_counter() - start
    return AnimateResult(frames.float().clamp(0, 1).cpu(), controls, spec, seconds)


def write_dump(directory: Path, result: AnimateResult, staging: Staging | None = None) -> None:
    """Every intermediate (`write_dump_files`) into ``directory``, atomically. An existing
    folder is written into: only the files a dump writes are replaced (`anima.io.Staging`).
    With ``staging`` the dump is part of the caller's outputs, moved in when they commit."""
    with nullcontext(staging) if staging else staged_outputs() as outputs:
        write_dump_files(outputs.folder(directory), result)


def write_dump_files(folder: Path, result: AnimateResult) -> None:
    """frames/, render/{rgb,depth,instance,visible}/, render/depth.npy, controls.json and
    spec.resolved.json, written into ``folder`` (the layout the README's CLI section fixes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f, frame in enumerate(result.frames):
        write_png(folder / "frames" / f"{f:04d}.png", frame)
    rendered = result.controls.render
    if rendered is not None:
        for f in range(rendered.num_frames):
            name = f"{f:04d}.png"
            write_png(folder / "render" / "rgb" / name, rendered.rgb[f])
            write_depth_png(folder / "render" / "depth" / name, rendered.distance[f])
            write_png(
                folder / "render" / "instance" / name,
                rendered.instance[f].clamp(0, 255).to(torch.uint8).numpy(),
            )
            write_png(
                folder / "render" / "visible" / name,
                (rendered.visible[f].numpy() * 255).astype(np.uint8),
            )
        np.save(folder / "render" / "depth.npy", rendered.distance.numpy().astype(np.float32))
    (folder / "controls.json").write_text(json.dumps(result.controls.to_json()))
    (folder / "spec.resolved.json").write_text(spec_to_json(result.spec) + "\n")
