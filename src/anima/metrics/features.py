"""Feature extractors of the Frechet metrics (FID, FVD, content-debiased FVD, DTFVD), their
loaders from local weights, batch runners, and `fid` / `fvd`.

(README, "Evaluation"; docs/architecture.md, "Models and weights"; the folders:
`anima.metrics.components`)

Every loader takes ``(weights, device)`` and returns a module mapping inputs in [0, 1] to
features [N, D]: frames [N, 3, H, W] (`load_inception`) or clips [N, T, 3, H, W] (`load_i3d`,
`load_videomae`, `load_dtfvd`), in the calling convention of the reference implementation whose
weights it reads, stated on each. ``--weights tiny`` gives tiny random networks of the same
kind; a missing file is an `InputError` naming it and the folder looked in.

- **FID** (Heusel et al. 2017, §3; LeviTor §4, X-Dyna §4.1): Inception-v3 pool-3 features.
- **FVD** (Unterthiner et al. 2018, §3; LeviTor §4): I3D logits of 16-frame clips.
- **cd-FVD** (Ge et al., "On the Content Bias in Frechet Video Distance", CVPR 2024, §4;
  X-Dyna §4.1): VideoMAE(-v2) features of 16-frame clips.
- **DTFVD** (X-Dyna §4.1, foreground and background): FVD over a dynamic-texture backbone the
  user supplies.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anima.errors import InputError
from anima.metrics.components import DTFVD, I3D, INCEPTION, VIDEOMAE
from anima.metrics.frechet import frechet_from_features
from anima.models.inception import (
    I3D_SIZE,
    PYTORCH_FID_FILE,
    fid_inception,
    random_i3d,
)
from anima.weights import Weights, checkpoint_format

#: clean-fid's / StyleGAN2-ADA's TorchScript Inception.
INCEPTION_TORCHSCRIPT_FILE = "inception-2015-12-05.pt"
#: StyleGAN-V's TorchScript I3D.
I3D_TORCHSCRIPT_FILE = "i3d_torchscript.pt"
#: The user's DTFVD backbone.
DTFVD_FILE = "model.pt"
#: The clip length FVD, cd-FVD and DTFVD are computed on (StyleGAN-V, cd-FVD: 16 frames).
CLIP_LENGTH = 16
#: The side DTFVD's backbone receives (an I3D's input size).
DTFVD_SIZE = I3D_SIZE

#: Tiny models: channel multipliers and input sides (the smallest the architectures take).
TINY_INCEPTION = {"width": 1 / 16, "size": 75}
TINY_I3D = {"width": 1 / 16, "size": 32}


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to the uint8 values a file holds (round to nearest)."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


class FeatureExtractor(nn.Module):
    """A feature extractor: ``forward`` maps frames or clips in [0, 1] to features [N, D].

    ``clip_length`` is None for frame extractors and the clip length it reads for video ones;
    ``batch_size`` a default batch for the runners."""

    clip_length: int | None = None
    batch_size: int = 16

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")


class InceptionFeatures(FeatureExtractor):
    """FID's Inception-v3 pool-3 features: frames [N, 3, H, W] in [0, 1] -> [N, 2048].

    Two formats, as the reference implementations ship the same TensorFlow graph:

    - clean-fid's / StyleGAN2-ADA's TorchScript ``inception-2015-12-05.pt``: called as StyleGAN
      (and clean-fid with resizing inside) call it, ``model(images, return_features=True)`` on
      [N, 3, H, W] in the [0, 255] range (uint8 here, the frames rounded as a file stores them);
      it resizes to 299 x 299 bilinearly and maps 0..255 to [-1, 1] itself.
    - pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` in the hand-written
      `anima.models.inception.FIDInceptionV3`: [0, 1] floats resized bilinearly to 299 (no
      corner alignment) and mapped to [-1, 1], as pytorch-fid's ``InceptionV3`` does.
    """

    batch_size = 32

    def __init__(self, model: nn.Module, scripted: bool) -> None:
        super().__init__()
        self.model = model
        self.scripted = scripted

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected frames (N, 3, H, W), got {tuple(frames.shape)}")
        if self.scripted:
            features = self.model(_to_uint8(frames), return_features=True)
        else:
            features = self.model(frames.float())
        return features.reshape(frames.shape[0], -1).float()


class I3DFeatures(FeatureExtractor):
    """FVD's I3D features: clips [N, T, 3, H, W] in [0, 1] -> the 400 Kinetics logits [N, 400].

    StyleGAN-V's FVD (its ``compute_fvd``) calls the TorchScript ``i3d_torchscript.pt`` on uint8
    videos [N, 3, T, H, W] with ``rescale=True, resize=True, return_features=True``: the
    detector maps 0..255 to [-1, 1], resizes every frame to 224 x 224 and returns the logits
    before the softmax. That is the call made here, on the clip rounded to uint8 as StyleGAN-V
    rounds its generator's frames."""

    clip_length = CLIP_LENGTH
    batch_size = 8

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        _check_clips(clips)
        videos = _to_uint8(clips).permute(0, 2, 1, 3, 4).contiguous()
        features = self.model(videos, rescale=True, resize=True, return_features=True)
        return features.reshape(clips.shape[0], -1).float()


class VideoMAEFeatures(FeatureExtractor):
    """Content-debiased FVD's VideoMAE features: clips [N, T, 3, H, W] in [0, 1] -> [N, D].

    cd-FVD (Ge et al. 2024, §4; its ``cd-fvd`` package) reads VideoMAE-v2 ViT-g/14 fine-tuned on
    Something-Something v2, on 16-frame clips whose frames are resized bilinearly (no corner
    alignment) to 224 x 224 and kept in [0, 1] (no mean/std normalisation), and takes the
    classifier's pre-logit features: the patch tokens mean-pooled, then ``fc_norm``. Here the
    model is in transformers layout: a ``VideoMAEForVideoClassification`` with
    ``use_mean_pooling`` gives exactly that (``fc_norm`` of the mean of the last hidden
    state); a bare ``VideoMAEModel`` gives the mean of its last hidden state (after its final
    layer norm when it has one). The input side and frame count are the config's
    ``image_size`` and ``num_frames``; a clip of another length is resampled to it by nearest
    frame."""

    batch_size = 4

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.size = int(config.image_size)
        self.clip_length = int(config.num_frames)
        self.classifier = hasattr(model, "videomae")

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        _check_clips(clips)
        n, t = clips.shape[:2]
        if t != self.clip_length:
            index = torch.linspace(0, t - 1, self.clip_length, device=clips.device)
            clips = clips[:, index.round().long()]
        frames = clips.flatten(0, 1).float()
        frames = F.interpolate(
            frames, size=(self.size, self.size), mode="bilinear", align_corners=False
        )
        pixels = frames.view(n, self.clip_length, 3, self.size, self.size)
        dtype = next(self.model.parameters()).dtype
        if self.classifier:
            hidden = self.model.videomae(pixel_values=pixels.to(dtype)).last_hidden_state
            pooled = hidden.mean(dim=1)
            if self.model.fc_norm is not None:
                pooled = self.model.fc_norm(pooled)
        else:
            pooled = self.model(pixel_values=pixels.to(dtype)).last_hidden_state.mean(dim=1)
        return pooled.float()


class DTFVDFeatures(FeatureExtractor):
    """DTFVD's backbone features: clips [N, T, 3, H, W] in [0, 1] -> [N, D].

    The convention of ``DIR/metrics/dtfvd/model.pt`` (a TorchScript module the user exports
    from DTFVD's dynamic-texture I3D): it is called once per batch as ``model(x)`` with ``x``
    float32 [N, 3, T, 224, 224] in [-1, 1] (every frame resized bilinearly, no corner
    alignment, as FVD's I3D receives it), and returns features [N, D] (any trailing singleton
    dimensions are flattened)."""

    clip_length = CLIP_LENGTH
    batch_size = 8

    def __init__(self, model: nn.Module, size: int = DTFVD_SIZE) -> None:
        super().__init__()
        self.model = model
        self.size = size

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        _check_clips(clips)
        n, t = clips.shape[:2]
        frames = F.interpolate(
            clips.flatten(0, 1).float(),
            size=(self.size, self.size),
            mode="bilinear",
            align_corners=False,
        )
        x = (2 * frames.clamp(0, 1) - 1).view(n, t, 3, self.size, self.size).permute(0, 2, 1, 3, 4)
        return self.model(x.contiguous()).reshape(n, -1).float()


class _I3DBackbone(nn.Module):
    """A random I3D called as DTFVD's backbone is (``model(x)`` on [-1, 1]): the tiny DTFVD."""

    def __init__(self) -> None:
        super().__init__()
        self.i3d = random_i3d(seed=1, **TINY_I3D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.i3d(x, rescale=False, resize=False, return_features=True)


def _check_clips(clips: torch.Tensor) -> None:
    if clips.dim() != 5 or clips.shape[2] != 3:
        raise ValueError(f"expected clips (N, T, 3, H, W), got {tuple(clips.shape)}")


def _load_torchscript(path: Path, kind: str, device: torch.device | str) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in torch, but it is the format these weights ship in.
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=device).eval()
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's input
        raise InputError(
            f"{kind}: cannot load {path.name} as TorchScript ({_first_line(error)})",
            f"in {path.parent}",
        ) from None


def load_inception(weights: Weights, device: torch.device | str = "cpu") -> InceptionFeatures:
    """FID's Inception (`InceptionFeatures`) from ``DIR/metrics/inception/``: the TorchScript
    ``inception-2015-12-05.pt`` when present, else pytorch-fid's state dict
    ``pt_inception-2015-12-05-6726825d.pth`` (a pickle: ``--allow-pickle``, tensors only) in
    the hand-written network;
    ``--weights tiny``: a width-1/16 FID Inception at 75 px."""
    if weights.builtin == "tiny":
        model = fid_inception(random=True, **TINY_INCEPTION)
        return InceptionFeatures(model, scripted=False).eval().to(device)
    folder = weights.require(INCEPTION, "FID")
    scripted = folder / INCEPTION_TORCHSCRIPT_FILE
    if scripted.is_file():
        module = _load_torchscript(scripted, "FID Inception", device)
        return InceptionFeatures(module, scripted=True).eval()
    from anima.models.loading import read_weights_file

    path = folder / PYTORCH_FID_FILE
    state = read_weights_file(path, weights.allow_pickle)
    try:
        model = fid_inception(state_dict=state)
    except KeyError as error:
        raise InputError(
            f"FID Inception: {path.name}: {_first_line(error)}", f"in {folder}"
        ) from None
    except Exception as error:  # noqa: BLE001 - an unreadable file is the user's input
        raise InputError(
            f"FID Inception: cannot read {path.name} ({_first_line(error)})", f"in {folder}"
        ) from None
    return InceptionFeatures(model, scripted=False).eval().to(device)


def load_i3d(weights: Weights, device: torch.device | str = "cpu") -> I3DFeatures:
    """FVD's I3D (`I3DFeatures`) from StyleGAN-V's TorchScript ``DIR/metrics/i3d/
    i3d_torchscript.pt``; ``--weights tiny``: a width-1/16 `InceptionI3D` at 32 px, called the
    same way."""
    if weights.builtin == "tiny":
        return I3DFeatures(random_i3d(**TINY_I3D)).eval().to(device)
    folder = weights.require(I3D, "FVD")
    return I3DFeatures(_load_torchscript(folder / I3D_TORCHSCRIPT_FILE, "FVD I3D", device)).eval()


def tiny_videomae_config() -> Any:
    """A tiny VideoMAE classifier config (16 frames of 32 px, two layers of width 32)."""
    from transformers import VideoMAEConfig

    return VideoMAEConfig(
        image_size=32,
        patch_size=8,
        num_frames=CLIP_LENGTH,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        use_mean_pooling=True,
        num_labels=2,
    )


def videomae_v2_giant_config() -> Any:
    """cd-FVD's network's shape as a transformers config: VideoMAE-v2 ViT-g/14, 16 frames of
    224 px, tubelets of 2, mean pooling, the 174 Something-Something v2 classes (for timing
    the full-size architecture with random weights)."""
    from transformers import VideoMAEConfig

    return VideoMAEConfig(
        image_size=224,
        patch_size=14,
        num_frames=CLIP_LENGTH,
        tubelet_size=2,
        hidden_size=1408,
        num_hidden_layers=40,
        num_attention_heads=16,
        intermediate_size=6144,
        use_mean_pooling=True,
        num_labels=174,
    )


def random_videomae(config: Any = None, seed: int = 0) -> VideoMAEFeatures:
    """`VideoMAEFeatures` over a ``VideoMAEForVideoClassification`` with random weights (tiny
    by default; `videomae_v2_giant_config` for the full-size benchmark)."""
    from transformers import VideoMAEForVideoClassification

    from anima.models.seeding import seeded

    with seeded(seed):
        model = VideoMAEForVideoClassification(config or tiny_videomae_config())
    return VideoMAEFeatures(model.eval().requires_grad_(False)).eval()


def load_videomae(weights: Weights, device: torch.device | str = "cpu") -> VideoMAEFeatures:
    """cd-FVD's VideoMAE (`VideoMAEFeatures`) from ``DIR/metrics/videomae/`` (transformers
    layout: a ``VideoMAEForVideoClassification``, as the ViT-g SSv2 checkpoint cd-FVD reads is,
    or a ``VideoMAEModel``); safetensors unless ``--allow-pickle``; ``--weights tiny``: a tiny
    random classifier."""
    if weights.builtin == "tiny":
        return random_videomae().to(device)
    folder = weights.require(VIDEOMAE, "content-debiased FVD")
    kwargs = checkpoint_format(folder, "VideoMAE", weights.allow_pickle)
    from transformers import VideoMAEForVideoClassification, VideoMAEModel

    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures")
    except (OSError, ValueError, AttributeError) as error:
        raise InputError(
            f"VideoMAE: cannot read config.json ({_first_line(error)})", f"in {folder}"
        ) from None
    classifier = "VideoMAEForVideoClassification" in (architectures or [])
    cls = VideoMAEForVideoClassification if classifier else VideoMAEModel
    model = cls.from_pretrained(str(folder), **kwargs)
    return VideoMAEFeatures(model.eval().requires_grad_(False)).eval().to(device)


def load_dtfvd(weights: Weights, device: torch.device | str = "cpu") -> DTFVDFeatures:
    """DTFVD's backbone (`DTFVDFeatures`, its calling convention there) from the user's
    TorchScript ``DIR/metrics/dtfvd/model.pt``; ``--weights tiny``: a tiny random I3D at
    32 px called the same way."""
    if weights.builtin == "tiny":
        return DTFVDFeatures(_I3DBackbone().eval(), size=TINY_I3D["size"]).eval().to(device)
    folder = weights.require(DTFVD, "DTFVD")
    return DTFVDFeatures(_load_torchscript(folder / DTFVD_FILE, "DTFVD", device)).eval()


def frame_features(
    extractor: nn.Module, frames: torch.Tensor, batch_size: int | None = None
) -> torch.Tensor:
    """Features [F, D] (float32, on the CPU) of frames [F, 3, H, W] in [0, 1], ``batch_size``
    frames at a time (the extractor's default when None), moved to the extractor's device."""
    if frames.dim() != 4:
        raise ValueError(f"expected frames (F, 3, H, W), got {tuple(frames.shape)}")
    size = batch_size or getattr(extractor, "batch_size", 16)
    device = _device_of(extractor)
    outputs = []
    with torch.no_grad():
        for start in range(0, frames.shape[0], size):
            outputs.append(extractor(frames[start : start + size].to(device)).float().cpu())
    return torch.cat(outputs)


def video_clips(
    video: torch.Tensor, clip_length: int = CLIP_LENGTH, stride: int | None = None
) -> torch.Tensor:
    """The clips [K, clip_length, 3, H, W] of a video [F, 3, H, W] starting every ``stride``
    frames (``clip_length`` when None: consecutive, non-overlapping clips); a video shorter
    than one clip is an error."""
    frames = int(video.shape[0])
    if clip_length < 1 or frames < clip_length:
        raise ValueError(f"a clip of {clip_length} frames does not fit a video of {frames}")
    step = stride or clip_length
    starts = range(0, frames - clip_length + 1, step)
    return torch.stack([video[s : s + clip_length] for s in starts])


def clip_features(
    extractor: nn.Module,
    video: torch.Tensor,
    clip_length: int = CLIP_LENGTH,
    stride: int | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Features [K, D] (float32, on the CPU) of the clips of ``video`` [F, 3, H, W] in [0, 1]
    (`video_clips`: ``clip_length`` frames every ``stride``), ``batch_size`` clips at a time."""
    if video.dim() != 4:
        raise ValueError(f"expected a video (F, 3, H, W), got {tuple(video.shape)}")
    clips = video_clips(video, clip_length, stride)
    return batch_clip_features(extractor, clips, batch_size)


def batch_clip_features(
    extractor: nn.Module, clips: torch.Tensor, batch_size: int | None = None
) -> torch.Tensor:
    """Features [N, D] (float32, on the CPU) of clips [N, T, 3, H, W] in [0, 1]."""
    _check_clips(clips)
    size = batch_size or getattr(extractor, "batch_size", 8)
    device = _device_of(extractor)
    outputs = []
    with torch.no_grad():
        for start in range(0, clips.shape[0], size):
            outputs.append(extractor(clips[start : start + size].to(device)).float().cpu())
    return torch.cat(outputs)


def fid(
    generated_frames: torch.Tensor,
    reference_frames: torch.Tensor,
    extractor: nn.Module,
    batch_size: int | None = None,
) -> float:
    """FID (Heusel et al. 2017, §3) between two frame sets [N, 3, H, W] and [M, 3, H, W] in
    [0, 1]: the Frechet distance of Gaussians fitted to their ``extractor`` features."""
    generated = frame_features(extractor, generated_frames, batch_size)
    reference = frame_features(extractor, reference_frames, batch_size)
    return frechet_from_features(generated, reference)


def fvd(
    generated_clips: torch.Tensor,
    reference_clips: torch.Tensor,
    extractor: nn.Module,
    batch_size: int | None = None,
) -> float:
    """FVD (Unterthiner et al. 2018, §3), cd-FVD or DTFVD, by ``extractor``, between two clip
    sets [N, T, 3, H, W] and [M, T, 3, H, W] in [0, 1]."""
    generated = batch_clip_features(extractor, generated_clips, batch_size)
    reference = batch_clip_features(extractor, reference_clips, batch_size)
    return frechet_from_features(generated, reference)


def _device_of(module: nn.Module) -> torch.device:
    if isinstance(module, FeatureExtractor):
        return module.device
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _first_line(error: BaseException) -> str:
    """An exception's message on one line (its first, surrounding quotes of a ``KeyError``
    dropped), for the one-line `anima.errors.InputError` of an unreadable weights file."""
    message = str(error.args[0]) if error.args else str(error)
    return message.strip().splitlines()[0] if message.strip() else type(error).__name__
