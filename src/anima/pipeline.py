"""The one data flow every entry point runs: MotionSpec -> Scene -> method.prepare -> generate.

The CLI, the studio and the Python API call `animate`, which returns the video as a stream of
frames (`anima.stream`); `write_outputs` consumes it frame by frame into the video and the dump
of intermediate truth (`--dump DIR`, in the layout the README's CLI section fixes), so that
memory does not grow with the clip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from pydantic import ValidationError

from anima.errors import InputError
from anima.io import Staging, VideoWriter, staged_outputs, write_depth_png, write_png
from anima.methods.base import Controls
from anima.methods.registry import default_method, get_method
from anima.perception.inpaint import inpainter_for, plate_inpainting
from anima.render_import import RenderFolderWriter
from anima.scene import Scene, build_scene
from anima.spec import MotionSpec, format_validation_error, spec_to_json
from anima.stream import FrameStream, OutputFrame
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
    if spec.render:
        data["render"] = str(spec.resolve(spec.render).resolve())
    for obj in data["objects"]:
        for key in ("mask", "mesh"):
            if obj.get(key):
                obj[key] = str(spec.resolve(obj[key]).resolve())
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
    """A run's video as a stream (`anima.stream`: consumed once by the outputs, or held),
    its controls, the resolved spec and the seconds each stage took."""

    stream: FrameStream
    controls: Controls
    spec: MotionSpec  # resolved
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def frames(self) -> torch.Tensor:
        """The whole video (F, 3, H, W) float in [0, 1], held in memory (`FrameStream.hold`)."""
        return self.stream.tensor()


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
    with plate_inpainting(inpainter_for(weights, method.device, method.dtype)):
        controls = method.prepare(spec, scene)  # background plates inpainted as the weights say
    seconds["prepare"] = time.perf_counter() - start

    start = time.perf_counter()
    stage(f"generating with {method_cls.name}")
    stream = method.stream(controls)
    seconds["generate"] = time.perf_counter() - start
    return AnimateResult(stream, controls, spec, seconds)


def write_outputs(
    result: AnimateResult,
    video: Path | None,
    dump: Path | None,
    staging: Staging,
    where: str = "-o",
    on_frame: Callable[[int], None] | None = None,
) -> None:
    """Consume the run's stream once into its video (``video``) and its dump (``dump``), frame
    by frame as the method makes them, into ``staging`` (committed by the caller: both or
    neither), calling ``on_frame(frames done)`` after each. ``result.seconds`` gains
    ``frames`` (making them) and ``write`` (the rest)."""
    start = time.perf_counter()
    with ExitStack() as stack:
        writer = None
        if video is not None:
            writer = stack.enter_context(VideoWriter(video, result.spec.fps, where, staging))
        dumper = None
        if dump is not None:
            dumper = stack.enter_context(DumpWriter(staging.folder(dump), result))
        for done, frame in enumerate(result.stream, 1):
            if writer is not None:
                writer.write(frame.image)
            if dumper is not None:
                dumper.write(frame)
            if on_frame is not None:
                on_frame(done)
    result.seconds["frames"] = result.stream.seconds
    result.seconds["write"] = time.perf_counter() - start - result.stream.seconds


def write_dump(directory: Path, result: AnimateResult, staging: Staging | None = None) -> None:
    """The run's dump (`DumpWriter`) into ``directory``, atomically. An existing folder is
    written into: only the files a dump writes are replaced (`anima.io.Staging`). With
    ``staging`` the dump is part of the caller's outputs, moved in when they commit."""
    with nullcontext(staging) if staging else staged_outputs() as outputs:
        write_dump_files(outputs.folder(directory), result)


def write_dump_files(folder: Path, result: AnimateResult) -> None:
    """The dump of ``result`` written into ``folder`` (`DumpWriter`), consuming its stream."""
    with DumpWriter(folder, result) as dumper:
        for frame in result.stream:
            dumper.write(frame)


def _open_npy(path: Path, shape: tuple[int, ...]) -> BinaryIO:
    """A ``.npy`` file of float32 ``shape`` opened after its header, for the data to be written
    in order (one frame at a time, never the whole array in memory)."""
    file = path.open("wb")
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(file, header)
    return file


class DumpWriter:
    """Writes a dump frame by frame (the layout the README's CLI section fixes):
    ``frames/NNNN.png``; where the method rendered, ``render/{rgb,depth,instance,visible}/
    NNNN.png``, ``render/depth.npy`` (F, h, w) float32 and the render in I2V3D's layout under
    ``render/i2v3d/`` (`anima.render_import`), written frame by frame; then, on a clean exit,
    ``controls.json``, the controls' images (``NAME.png``, `Controls.images`) and
    ``spec.resolved.json``."""

    def __init__(self, folder: Path, result: AnimateResult) -> None:
        self.folder = folder
        self.result = result
        self.index = 0
        self._depth: BinaryIO | None = None
        self._i2v3d: RenderFolderWriter | None = None

    def __enter__(self) -> DumpWriter:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, frame: OutputFrame) -> None:
        name = f"{self.index:04d}.png"
        write_png(self.folder / "frames" / name, frame.image)
        rendered = frame.render
        if rendered is not None:
            render = self.folder / "render"
            write_png(render / "rgb" / name, rendered.rgb)
            write_depth_png(render / "depth" / name, rendered.distance)
            instance = rendered.instance.clamp(0, 255).to(torch.uint8).numpy()
            write_png(render / "instance" / name, instance)
            write_png(render / "visible" / name, rendered.visible.numpy().astype(np.uint8) * 255)
            if self._depth is None:
                self._depth = _open_npy(
                    render / "depth.npy", (self.result.stream.num_frames, *rendered.distance.shape)
                )
            self._depth.write(rendered.distance.numpy().astype("<f4").tobytes())
            if self._i2v3d is None:
                self._i2v3d = RenderFolderWriter(render / "i2v3d")
            self._i2v3d.write(rendered)
        self.index += 1

    def __exit__(self, kind: type[BaseException] | None, *_rest: object) -> None:
        if self._depth is not None:
            self._depth.close()
            self._depth = None
        if kind is None:
            controls = json.dumps(self.result.controls.to_json())
            (self.folder / "controls.json").write_text(controls)
            for name, image in self.result.controls.images().items():
                write_png(self.folder / f"{name}.png", image)
            spec = spec_to_json(self.result.spec) + "\n"
            (self.folder / "spec.resolved.json").write_text(spec)
