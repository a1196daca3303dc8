"""Face metrics of human animations: Face-Det and Face-Cos.

(README, "Evaluation"; docs/architecture.md, "Models and weights")

X-Dyna (§4.2, Tab. 2), after MagicPose, reports:

- **Face-Det**: "the rate of detected faces among all frames in percentage" of a generated
  video. Detection here is OpenCV's weight-free Viola-Jones cascade (Viola and Jones, "Rapid
  Object Detection using a Boosted Cascade of Simple Features", CVPR 2001;
  ``haarcascade_frontalface_default.xml``, shipped with opencv-python-headless): learned
  detectors (YuNet, RetinaFace) need weights that are not available offline.
- **Face-Cos**: "align and crop the facial region in both the generated image and the ground
  truth", embed both with a face recognition model (X-Dyna uses AdaFace) and average the cosine
  similarity frame by frame. Frames where either video has no detected face are left out (no
  crop exists there; Face-Det reports them); ``nan`` when no frame has both.

**Alignment.** ArcFace/AdaFace embedders read 112x112 crops whose eyes sit at the ArcFace
template's eye points (38.2946, 51.6963) and (73.5318, 51.5014) (Deng et al., "ArcFace",
CVPR 2019, the 5-point template). Within the detected face box the eyes are looked for with
OpenCV's ``haarcascade_eye.xml`` in the box's upper part; with one eye on either side of the
box centre, the similarity transform (rotation, uniform scale, translation) taking the two eye
centres to the template's is applied. Otherwise the crop is the square of the box's side around
the box centre (Viola-Jones boxes span brows to mouth, as the template's crop does).

**The embedder** is a TorchScript ``DIR/metrics/face/embedder.pt`` taking (N, 3, 112, 112) in
[-1, 1] and returning (N, D) embeddings (normalised here). Channel order: AdaFace reads BGR,
insightface's ArcFace exports RGB; ``DIR/metrics/face/embedder.json`` may say
``{"channel_order": "rgb"}`` (default ``"bgr"``, AdaFace's, which X-Dyna uses). ``--weights
tiny`` builds a tiny scripted random network.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from anima.metrics.components import FACE
from anima.weights import Weights

CROP_SIZE = 112
ARCFACE_EYES = ((38.2946, 51.6963), (73.5318, 51.5014))
"""Left and right eye centres (x, y) of ArcFace's 112x112 alignment template."""


@dataclass(frozen=True)
class FaceBox:
    """A detected face: its box (x, y, w, h) in pixels and, when found, the two eye centres
    ((x, y) on the image's left, (x, y) on its right)."""

    box: tuple[float, float, float, float]
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None


FaceDetector = Callable[[torch.Tensor], "FaceBox | None"]
"""A face detector: one image (3, H, W) in [0, 1] to its largest face, or None."""


def _grey(image: torch.Tensor) -> np.ndarray:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image (3, H, W), got {tuple(image.shape)}")
    rgb = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    rgb = np.ascontiguousarray(rgb.permute(1, 2, 0).cpu().numpy())
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


class HaarFaceDetector:
    """OpenCV's Viola-Jones frontal-face cascade, with the eye cascade for alignment.

    ``scale_factor`` 1.1 and ``min_neighbors`` 5 are OpenCV's usual settings; faces smaller
    than ``min_face`` of the image's shorter side (or 24 px, the cascade's window) are ignored.
    The largest face of an image is returned.
    """

    def __init__(
        self, scale_factor: float = 1.1, min_neighbors: int = 5, min_face: float = 0.05
    ) -> None:
        root = cv2.data.haarcascades
        self.faces = cv2.CascadeClassifier(root + "haarcascade_frontalface_default.xml")
        self.eyes = cv2.CascadeClassifier(root + "haarcascade_eye.xml")
        if self.faces.empty() or self.eyes.empty():
            raise RuntimeError(f"OpenCV's Haar cascades are missing from {root}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face = min_face

    def __call__(self, image: torch.Tensor) -> FaceBox | None:
        grey = cv2.equalizeHist(_grey(image))
        side = max(24, int(self.min_face * min(grey.shape)))
        found = self.faces.detectMultiScale(
            grey, self.scale_factor, self.min_neighbors, minSize=(side, side)
        )
        if len(found) == 0:
            return None
        x, y, w, h = (int(v) for v in max(found, key=lambda b: int(b[2]) * int(b[3])))
        return FaceBox((float(x), float(y), float(w), float(h)), self._eyes(grey, x, y, w, h))

    def _eyes(
        self, grey: np.ndarray, x: int, y: int, w: int, h: int
    ) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """The two eye centres in the box's upper 60 %, one each side of its centre line."""
        upper = grey[y : y + int(0.6 * h), x : x + w]
        side = max(5, w // 10)
        found = self.eyes.detectMultiScale(upper, 1.1, 5, minSize=(side, side))
        centres = [(x + ex + ew / 2.0, y + ey + eh / 2.0) for ex, ey, ew, eh in found]
        middle = x + w / 2.0
        left = [c for c in centres if c[0] < middle]
        right = [c for c in centres if c[0] >= middle]
        if not left or not right:
            return None
        # The pair nearest the same height: eyes are roughly level in frontal faces.
        pair = min(((a, b) for a in left for b in right), key=lambda p: abs(p[0][1] - p[1][1]))
        return pair


def _eye_transform(eyes: tuple[tuple[float, float], tuple[float, float]]) -> np.ndarray:
    """The 2x3 similarity taking the two eye centres to ArcFace's template eyes."""
    (sx0, sy0), (sx1, sy1) = eyes
    (tx0, ty0), (tx1, ty1) = ARCFACE_EYES
    src = complex(sx1 - sx0, sy1 - sy0)
    dst = complex(tx1 - tx0, ty1 - ty0)
    if abs(src) < 1e-6:
        raise ValueError("eye centres coincide")
    rotation_scale = dst / src  # a similarity in the plane is one complex multiplication
    a, b = rotation_scale.real, rotation_scale.imag
    offset = complex(tx0, ty0) - rotation_scale * complex(sx0, sy0)
    return np.array([[a, -b, offset.real], [b, a, offset.imag]], dtype=np.float64)


def _box_transform(box: tuple[float, float, float, float]) -> np.ndarray:
    """The 2x3 affine taking the square of the box's side around its centre to the crop."""
    x, y, w, h = box
    side = max(w, h)
    scale = CROP_SIZE / side
    cx, cy = x + w / 2.0, y + h / 2.0
    centre = CROP_SIZE / 2.0
    return np.array([[scale, 0, centre - scale * cx], [0, scale, centre - scale * cy]])


def align_face(image: torch.Tensor, face: FaceBox) -> torch.Tensor:
    """The aligned 112x112 crop (3, 112, 112) in [0, 1] of ``face`` in ``image`` (3, H, W):
    eyes to ArcFace's template when both were found, else the box's square (module doc)."""
    matrix = _eye_transform(face.eyes) if face.eyes is not None else _box_transform(face.box)
    rgb = np.ascontiguousarray(image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy())
    crop = cv2.warpAffine(
        rgb,
        matrix,
        (CROP_SIZE, CROP_SIZE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0.0, 0.0, 0.0),
    )
    return torch.from_numpy(crop).permute(2, 0, 1).contiguous()


@dataclass
class FaceEmbedder:
    """A face recognition network (TorchScript): (N, 3, 112, 112) in [-1, 1] to (N, D)."""

    module: torch.nn.Module
    device: torch.device
    channel_order: Literal["rgb", "bgr"] = "bgr"

    @torch.no_grad()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings (N, D), float32, of aligned crops (N, 3, 112, 112) in
        [0, 1]."""
        x = crops.to(self.device, torch.float32) * 2.0 - 1.0
        if self.channel_order == "bgr":
            x = x.flip(1)
        out = self.module(x)
        if isinstance(out, (tuple, list)):  # AdaFace's forward returns (embedding, norm)
            out = out[0]
        return F.normalize(out.float().reshape(out.shape[0], -1), dim=-1)


class _TinyFaceNet(torch.nn.Module):
    """Three stride-2 convolutions, global pooling and a linear layer: 112x112 to 32."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(16 * 4 * 4, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 4)
        return self.head(x.flatten(1))


def tiny_face_embedder(seed: int = 0) -> torch.jit.ScriptModule:
    """A tiny random face embedder, scripted like a user's ``embedder.pt``."""
    from anima.models.seeding import seeded

    with seeded(seed), warnings.catch_warnings():  # the embedder's format is TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_TinyFaceNet().eval())


def load_face_embedder(weights: Weights, device: str | torch.device = "cpu") -> FaceEmbedder:
    """The Face-Cos embedder: TorchScript ``DIR/metrics/face/embedder.pt`` (channel order from
    an optional ``embedder.json``), or a tiny scripted random net for ``--weights tiny``. A
    missing file is an `InputError`."""
    device = torch.device(device)
    if weights.builtin == "tiny":
        return FaceEmbedder(tiny_face_embedder().to(device), device, "rgb")
    from anima.errors import InputError

    folder = weights.require(FACE, "Face-Cos")
    order = "bgr"
    settings = folder / "embedder.json"
    if settings.is_file():
        order = str(json.loads(settings.read_text()).get("channel_order", "bgr")).lower()
        if order not in ("rgb", "bgr"):
            raise InputError(f"channel_order must be 'rgb' or 'bgr', got {order!r}", str(settings))
    try:
        with warnings.catch_warnings():  # the embedder's format is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(folder / "embedder.pt"), map_location=device)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise InputError(f"cannot load the face embedder ({reason})", str(folder)) from error
    return FaceEmbedder(module.eval(), device, order)  # type: ignore[arg-type]


def detect_faces(
    frames: torch.Tensor, detector: FaceDetector | None = None
) -> list[FaceBox | None]:
    """The largest face of each frame of (F, 3, H, W) in [0, 1] (None where there is none);
    ``detector`` defaults to `HaarFaceDetector`."""
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected a video (F, 3, H, W), got shape {tuple(frames.shape)}")
    detector = detector or HaarFaceDetector()
    return [detector(frame) for frame in frames]


def face_detection_rate(frames: torch.Tensor, detector: FaceDetector | None = None) -> float:
    """Face-Det (X-Dyna §4.2): the percentage (0 to 100) of frames with a detected face."""
    faces = detect_faces(frames, detector)
    return 100.0 * sum(face is not None for face in faces) / max(len(faces), 1)


def face_cosine_per_frame(
    generated: torch.Tensor,
    reference: torch.Tensor,
    embedder: FaceEmbedder,
    detector: FaceDetector | None = None,
) -> torch.Tensor:
    """The cosine (F,) of each generated frame's aligned face embedding to the reference
    frame's; ``nan`` where either has no face. ``reference`` is a video of the same length or
    one image (3, H, W) every frame is compared with."""
    if reference.dim() == 3:
        reference = reference[None].expand(generated.shape[0], -1, -1, -1)
    if reference.dim() != 4 or reference.shape[0] != generated.shape[0]:
        raise ValueError(
            f"reference must be (3, H, W) or have the generated video's {generated.shape[0]} "
            f"frames, got shape {tuple(reference.shape)}"
        )
    detector = detector or HaarFaceDetector()
    generated_faces = detect_faces(generated, detector)
    reference_faces = detect_faces(reference, detector)
    both = [
        t
        for t, (a, b) in enumerate(zip(generated_faces, reference_faces, strict=True))
        if a is not None and b is not None
    ]
    cosines = torch.full((generated.shape[0],), math.nan, dtype=torch.float64)
    if not both:
        return cosines
    crops_a = torch.stack([align_face(generated[t], generated_faces[t]) for t in both])  # type: ignore[arg-type]
    crops_b = torch.stack([align_face(reference[t], reference_faces[t]) for t in both])  # type: ignore[arg-type]
    values = (embedder(crops_a) * embedder(crops_b)).sum(dim=-1)
    cosines[torch.tensor(both)] = values.double().cpu()
    return cosines


def face_cosine(
    generated: torch.Tensor,
    reference: torch.Tensor,
    embedder: FaceEmbedder,
    detector: FaceDetector | None = None,
) -> float:
    """Face-Cos (X-Dyna §4.2): the mean cosine of aligned face embeddings of the generated and
    the ground-truth frames, over the frames where both have a face; ``nan`` if none has."""
    cosines = face_cosine_per_frame(generated, reference, embedder, detector)
    valid = ~torch.isnan(cosines)
    return float(cosines[valid].mean()) if bool(valid.any()) else math.nan
