"""X-Dyna: human image animation from a driving pose and face video.

Driving inputs (one job a module): `keypoints` (the `DrivingKeypoints` container, OpenPose
JSON in/out, toy-world figures), `extract` (keypoints from images and videos with mediapipe,
an optional extra), `align` (driving skeleton -> reference person), `pose_map` (the Pose
ControlNet condition: the body skeleton without head) and `face` (the S-Face ControlNet
condition: eye + mouth patches and the face crop of the driving frame).

Generation: `adapter` (the Dynamics-Adapter), `reference_frame` (the reference as a clean frame
0: skipped by the motion modules, zero ControlNet residuals), `pipeline` (`XDynaPipeline`),
`loading` (components from a weights directory or tiny, with the optional IP-Adapter-Plus of
`anima.models.ip_adapter`). Training: `dataset`, `train` (``anima train xdyna``). Release
checkpoints: `convert` (``anima weights convert xdyna``).

This module is the ``xdyna`` method. ``prepare`` reads the spec's ``pose`` section: driving
keypoints (OpenPose JSON, or found in the driving video with mediapipe), frames ``start, start +
stride, ...`` (``num_frames`` of them), aligned to the person in the image
(`anima.methods.xdyna.align`) unless ``align`` is off, then rendered as headless skeleton maps
with hands, the way the release's skeleton videos are drawn (`pose_map`), and, when the driving
video and its face landmarks are there, the S-Face condition (`face`) cropped from the driving
frames and moved by the same alignment. A ready-made ``skeleton_video`` instead is the pose
condition as it is: its frames ``start, start + stride, ...`` resized to the generation size
(`pose_map.skeleton_maps`), never aligned; the S-Face condition then comes from ``video`` if
given (the face needs driving frames: without them the S-Face ControlNet gets no condition, and
a warning says so). ``generate`` runs
`XDynaPipeline` at the generation size (the image size rounded down to multiples of 8; at most
64 px with ``--weights tiny``) and resizes back.

Weights (``--weights DIR``)::

    DIR/sd15/                    SD1.5, diffusers layout (vae, text_encoder, tokenizer, unet)
    DIR/motion-adapter/          AnimateDiff MotionAdapter (diffusers layout)
    DIR/xdyna/adapter/           DynamicsAdapter (`anima weights convert xdyna` writes these)
    DIR/xdyna/pose_controlnet/   pose ControlNetModel
    DIR/xdyna/face_controlnet/   S-Face ControlNetModel (optional)
    DIR/ip-adapter/              IP-Adapter-Plus (optional; the release uses it):
        image_encoder/                      CLIP vision model (IP-Adapter's models/image_encoder,
                                            OpenCLIP ViT-H/14, transformers layout)
        ip-adapter-plus_sd15.safetensors    image_proj.* (resampler) + ip_adapter.* (to_k_ip /
                                            to_v_ip), diffusers' IP-Adapter format
                                            (`anima weights convert xdyna --ip-adapter` writes it)

With ``DIR/ip-adapter/`` the reference image also gives 16 image tokens to every cross-attention
(``options.ip_adapter_scale`` weights them, 1 as in the release) and CFG always runs both
branches (the unconditional one gets a zero image's tokens). ``--weights tiny`` has none.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.nn import functional as F

from anima.errors import InputError
from anima.methods.base import Controls, Method
from anima.methods.registry import register
from anima.methods.xdyna.align import Alignment, align_to_reference
from anima.methods.xdyna.face import face_condition_from_keypoints
from anima.methods.xdyna.keypoints import DrivingKeypoints, load_openpose
from anima.methods.xdyna.pose_map import pose_maps, skeleton_maps, skeleton_video_length
from anima.sampling.steps import step_reporter
from anima.scene import Scene, check_generation_size, generation_size
from anima.spec import MotionSpec, PoseDrive
from anima.weights import SD15, Component, Weights

MOTION_ADAPTER = Component("AnimateDiff motion adapter", "motion-adapter", "AnimateDiff v1 modules")
XDYNA_ADAPTER = Component("X-Dyna Dynamics-Adapter", "xdyna/adapter", "reference attention")
XDYNA_POSE = Component("X-Dyna pose ControlNet", "xdyna/pose_controlnet", "pose ControlNet")
XDYNA_FACE = Component(
    "X-Dyna S-Face ControlNet", "xdyna/face_controlnet", "face ControlNet", optional=True
)
#: Sub-folder of ``DIR/ip-adapter/`` with the CLIP vision model, and the checkpoint file.
IMAGE_ENCODER_DIR = "image_encoder"
IP_ADAPTER_WEIGHTS = "ip-adapter-plus_sd15.safetensors"
XDYNA_IP_ADAPTER = Component(
    "IP-Adapter-Plus",
    "ip-adapter",
    "reference image tokens in cross-attention",
    required_files=(f"{IMAGE_ENCODER_DIR}/config.json", IP_ADAPTER_WEIGHTS),
    optional=True,
)

#: Longest side generated by default with ``--weights tiny`` (a smoke test).
TINY_MAX_SIDE = 64
#: Longest side generated by default with real weights: X-Dyna samples at 896x512 (H x W).
TRAINED_MAX_SIDE = 896


#: Shortest generation side the ``size`` option and the default allow.
MIN_SIDE = 16


class XDynaOptions(BaseModel):
    """Options of the xdyna method (``spec.options``); defaults are the release's."""

    model_config = ConfigDict(extra="forbid")
    num_inference_steps: int = Field(25, ge=1, le=1000, description="DDIM steps.")
    guidance_scale: float = Field(7.5, ge=0.0, le=30.0, description="Classifier-free guidance.")
    window: int = Field(16, ge=1, le=64, description="Frames a window (motion module context).")
    overlap: int = Field(4, ge=0, le=63, description="Frames shared by neighbouring windows.")
    pose_scale: float = Field(1.0, ge=0.0, le=10.0, description="Pose ControlNet strength.")
    face_scale: float = Field(1.0, ge=0.0, le=10.0, description="S-Face ControlNet strength.")
    ip_adapter_scale: float = Field(
        1.0, ge=0.0, le=10.0, description="IP-Adapter image-token strength (with DIR/ip-adapter)."
    )
    decode_chunk_size: int = Field(8, ge=1, description="Frames decoded at a time.")
    size: tuple[int, int] | None = Field(
        None,
        description="Generation [H, W], multiples of 8 (release: [896, 512]); default: the "
        "scene size scaled to a longest side of at most 896, rounded down to multiples of 8.",
    )

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, size: tuple[int, int] | None) -> tuple[int, int] | None:
        return check_generation_size(size, MIN_SIDE)


@dataclass
class XDynaControls(Controls):
    pose: torch.Tensor | None = None  # (F, 3, h, w) skeleton maps at the generation size
    face: torch.Tensor | None = None  # (F, 6, h, w) or None
    size: tuple[int, int] = (0, 0)
    keypoints: DrivingKeypoints | None = None  # aligned, in image pixels
    alignment: Alignment | None = None
    frames_used: list[int] | None = None
    skeleton_video: bool = False  # the pose maps are a ready-made skeleton video's frames

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "generation_size": list(self.size),
            "driving_frames": self.frames_used,
            "face_condition": self.face is not None,
            "skeleton_video": self.skeleton_video,
        }
        if self.alignment is not None:
            out["alignment"] = {
                "scale": self.alignment.scale,
                "offset": [float(v) for v in self.alignment.offset],
                "measure": self.alignment.measure,
                "anchor": self.alignment.anchor,
            }
        if self.keypoints is not None:
            out["keypoints"] = self.keypoints.body.round(3).tolist()
        return out


@functools.lru_cache(maxsize=1)
def load_pipeline(weights: Weights, device: torch.device, dtype: torch.dtype):
    """`XDynaPipeline` from `loading.load_components`: the weights directory (see the module
    docstring), or tiny random models whose adapter and ControlNets have small random outputs
    (so controls matter)."""
    from anima.methods.xdyna.loading import load_components
    from anima.methods.xdyna.pipeline import XDynaPipeline

    return XDynaPipeline(**load_components(weights, dtype))


def _driving(drive: PoseDrive, spec: MotionSpec) -> tuple[DrivingKeypoints, torch.Tensor | None]:
    """Driving keypoints and, when a video is given, its frames (F, 3, H, W)."""
    frames = None
    if drive.video is not None:
        from anima.io import read_video

        frames, _ = read_video(spec.resolve(drive.video), where="pose.video")
    if drive.keypoints is not None:
        size = None if frames is None else tuple(frames.shape[-2:])
        keypoints = load_openpose(spec.resolve(drive.keypoints), size=size)
        if frames is not None and keypoints.num_frames != frames.shape[0]:
            raise InputError(
                f"{keypoints.num_frames} keypoint frames for a {frames.shape[0]}-frame video",
                "pose.keypoints",
            )
        return keypoints, frames
    from anima.methods.xdyna.extract import extract_keypoints

    assert frames is not None
    return extract_keypoints(frames, face=drive.face), frames


def _reference_keypoints(drive: PoseDrive, spec: MotionSpec, scene: Scene) -> DrivingKeypoints:
    if drive.reference_keypoints is not None:
        keypoints = load_openpose(spec.resolve(drive.reference_keypoints), size=scene.size)
        if keypoints.size != scene.size:
            keypoints = keypoints.resized(scene.size)
        return keypoints
    from anima.methods.xdyna.extract import extract_keypoints

    return extract_keypoints(scene.image[None], face=False, hands=False)


def _frame_index(count: int, drive: PoseDrive, num_frames: int, what: str, where: str) -> list[int]:
    """Frames ``start, start + stride, ...`` of a ``count``-frame sequence, ``num_frames`` of
    them, or `InputError` when it is too short."""
    index = list(range(drive.start, count, drive.stride))[:num_frames]
    if len(index) < num_frames:
        raise InputError(
            f"{what} has {len(index)} frames from start {drive.start} with stride "
            f"{drive.stride}, num_frames asks for {num_frames}",
            where,
        )
    return index


def _face_condition(
    frames: torch.Tensor,
    keypoints: DrivingKeypoints,
    alignment: Alignment | None,
    scene_size: tuple[int, int],
    size: tuple[int, int],
) -> torch.Tensor:
    """The S-Face condition (F, 6, h, w) at ``size``: patches of the driving ``frames``, moved
    by ``alignment`` onto the scene when there is one, resized nearest."""
    patches = face_condition_from_keypoints(frames, keypoints)
    if alignment is not None:
        patches = _warp(patches, alignment.scale, alignment.offset, scene_size)
    return F.interpolate(patches, size=size, mode="nearest")


def _check_skeleton_video(spec: MotionSpec, drive: PoseDrive) -> None:
    """The skeleton video has a frame for every one ``num_frames`` uses (counted, not read)."""
    assert drive.skeleton_video is not None
    count = skeleton_video_length(spec.resolve(drive.skeleton_video))
    needed = drive.start + (spec.num_frames - 1) * drive.stride + 1
    if count < needed:
        raise InputError(
            f"has {count} frames; num_frames {spec.num_frames} from start {drive.start} with "
            f"stride {drive.stride} need {needed}",
            "pose.skeleton_video",
        )


def _warp(
    maps: torch.Tensor, scale: float, offset: np.ndarray, size: tuple[int, int]
) -> torch.Tensor:
    """(F, C, H, W) images moved by ``x' = scale * x + offset`` onto a ``size`` canvas
    (nearest neighbour: the face patches keep their pixels)."""
    matrix = np.array([[scale, 0.0, offset[0]], [0.0, scale, offset[1]]], dtype=np.float64)
    out = []
    for frame in maps.permute(0, 2, 3, 1).numpy():
        warped = cv2.warpAffine(frame, matrix, (size[1], size[0]), flags=cv2.INTER_NEAREST)
        out.append(warped.reshape(size[0], size[1], -1))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


@register
class XDynaMethod(Method):
    name = "xdyna"
    summary = "X-Dyna: human image animation from a driving pose/face sequence"
    components = (SD15, MOTION_ADAPTER, XDYNA_ADAPTER, XDYNA_POSE, XDYNA_FACE, XDYNA_IP_ADAPTER)
    builtin_weights = ("tiny",)
    options_model = XDynaOptions

    @classmethod
    def describe_weights(cls, weights: Weights) -> str:
        """What ``anima weights check xdyna`` adds: the normalisation the adapter's config
        records (`anima.models.frame_norms`; the converter writes the release's)."""
        from anima.models.frame_norms import DIFFUSERS_NORMS  # diffusers: not at CLI start-up

        folder = weights.component_dir(XDYNA_ADAPTER)
        config_file = None if folder is None else folder / "config.json"
        config = {}
        if config_file is not None and config_file.is_file():
            config = json.loads(config_file.read_text())
        motion = config.get("motion_norm", DIFFUSERS_NORMS.motion).replace("_", " ")
        resnet = config.get("resnet_norm", DIFFUSERS_NORMS.resnet).replace("_", " ")
        return f"norms: motion modules {motion}, resnets {resnet}"

    def load(self):
        return load_pipeline(self.weights, self.device, self.dtype)

    @classmethod
    def check_inputs(cls, spec: MotionSpec, options: XDynaOptions) -> None:
        """The spec has a ``pose`` section whose files exist, a skeleton video long enough for
        ``num_frames``; windows overlap by less than their length."""
        drive = spec.pose
        if drive is None:
            raise InputError("the xdyna method needs a 'pose' section", spec.where)
        if options.overlap >= options.window:
            raise InputError("must be smaller than options.window", "options.overlap")
        for name in ("video", "keypoints", "reference_keypoints", "skeleton_video"):
            relative = getattr(drive, name)
            if relative is not None and not spec.resolve(relative).exists():
                raise InputError(f"file not found: {spec.resolve(relative)}", f"pose.{name}")
        if drive.skeleton_video is not None:
            _check_skeleton_video(spec, drive)

    def prepare(self, spec: MotionSpec, scene: Scene) -> XDynaControls:
        self.check_inputs(spec, self.options)
        drive = spec.pose
        assert drive is not None
        pipe = self.load()
        context = pipe.unet.config.motion_max_seq_length
        if self.options.window > context:
            raise InputError(
                f"must be at most {context} (the motion modules' positional encoding)",
                "options.window",
            )
        max_side = TINY_MAX_SIDE if self.weights.builtin == "tiny" else TRAINED_MAX_SIDE
        size = self.options.size or generation_size(scene.size, max_side, MIN_SIDE)
        if drive.skeleton_video is not None:
            controls = self._skeleton_controls(spec, scene, size)
        else:
            controls = self._keypoint_controls(spec, scene, size)
        self.report(
            f"xdyna: {len(controls.frames_used or [])} driving frames, face condition: "
            f"{controls.face is not None}, IP-Adapter image tokens: {pipe.has_ip_adapter}"
        )
        return controls

    def _keypoint_controls(
        self, spec: MotionSpec, scene: Scene, size: tuple[int, int]
    ) -> XDynaControls:
        """Driving keypoints (OpenPose JSON or extracted), aligned, drawn at ``size``."""
        drive = spec.pose
        assert drive is not None
        driving, video = _driving(drive, spec)
        index = _frame_index(
            driving.num_frames, drive, spec.num_frames, "the driving sequence", "pose"
        )
        driving = driving.frames(index)
        frames = None if video is None else video[index]
        alignment = None
        if drive.align:
            reference = _reference_keypoints(drive, spec, scene)
            alignment, aligned = align_to_reference(driving, reference)
        else:
            aligned = driving.resized(scene.size)
        pose = pose_maps(aligned.resized(size))
        face = None
        if drive.face and frames is not None and driving.face is not None:
            face = _face_condition(frames, driving, alignment, scene.size, size)
        return XDynaControls(spec, scene, None, pose, face, size, aligned, alignment, index)

    def _skeleton_controls(
        self, spec: MotionSpec, scene: Scene, size: tuple[int, int]
    ) -> XDynaControls:
        """The skeleton video's frames as they are, resized to ``size``; the face condition
        from the driving video when there is one (X-Dyna §3.3: it crops driving frames)."""
        from anima.io import read_video

        drive = spec.pose
        assert drive is not None and drive.skeleton_video is not None
        where = "pose.skeleton_video"
        skeleton, _ = read_video(spec.resolve(drive.skeleton_video), where=where)
        index = _frame_index(skeleton.shape[0], drive, spec.num_frames, "the skeleton video", where)
        pose = skeleton_maps(skeleton[index], size)
        height, width = skeleton.shape[-2:]
        self.report(
            f"xdyna: skeleton video used as is, {height}x{width} resized to "
            f"{size[0]}x{size[1]} (area filter), not aligned"
        )
        face = None
        if drive.face and drive.video is None:
            warnings.warn(
                "pose.skeleton_video without pose.video: the S-Face ControlNet gets no "
                "condition (it crops the driving video's faces)",
                stacklevel=2,
            )
        elif drive.face and drive.video is not None:
            face = self._skeleton_face(spec, index, size)
        return XDynaControls(
            spec, scene, None, pose, face, size, frames_used=index, skeleton_video=True
        )

    def _skeleton_face(
        self, spec: MotionSpec, index: list[int], size: tuple[int, int]
    ) -> torch.Tensor | None:
        """The S-Face condition from the driving video's frames ``index`` (the skeleton
        video's frames), face landmarks found with mediapipe; None without a face."""
        from anima.io import read_video
        from anima.methods.xdyna.extract import extract_keypoints

        drive = spec.pose
        assert drive is not None and drive.video is not None
        video, _ = read_video(spec.resolve(drive.video), where="pose.video")
        if video.shape[0] <= index[-1]:
            raise InputError(
                f"has {video.shape[0]} frames, the skeleton video's frames up to "
                f"{index[-1]} are used",
                "pose.video",
            )
        frames = video[index]
        keypoints = extract_keypoints(frames, face=True, hands=False)
        if keypoints.face is None:
            return None
        return _face_condition(frames, keypoints, None, tuple(frames.shape[-2:]), size)

    def generate(self, controls: Controls) -> torch.Tensor:
        assert isinstance(controls, XDynaControls) and controls.pose is not None
        options = self.options
        pipe = self.load()
        pipe.set_progress_bar_config(disable=True)
        pipe.to(self.device)
        image = controls.scene.image[None].float()
        if tuple(image.shape[-2:]) != controls.size:
            image = F.interpolate(image, size=controls.size, mode="area")
        steps = options.num_inference_steps

        frames = pipe(
            image[0].to(self.device, self.dtype),
            controls.pose.to(self.device, self.dtype),
            None if controls.face is None else controls.face.to(self.device, self.dtype),
            prompt=controls.spec.prompt,
            negative_prompt=controls.spec.negative_prompt,
            num_inference_steps=steps,
            guidance_scale=options.guidance_scale,
            window=options.window,
            overlap=options.overlap,
            pose_scale=options.pose_scale,
            face_scale=options.face_scale,
            ip_adapter_scale=options.ip_adapter_scale,
            generator=torch.Generator(device="cpu").manual_seed(controls.spec.seed),
            decode_chunk_size=options.decode_chunk_size,
            callback_on_step_end=step_reporter(self.report, self.name, steps),
        )
        return frames.float().cpu()  # generation size; `stream` resizes to the scene
