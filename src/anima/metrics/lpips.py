"""LPIPS: the learned perceptual distance of Zhang et al., written out in torch.

(README, "Evaluation"; docs/architecture.md, "Models and weights")

Zhang, Isola, Efros, Shechtman and Wang, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric" (CVPR 2018), §3 and Eq. 1: both images go through a frozen ImageNet backbone;
at each of its five tapped layers the features are unit-normalised along channels, their
squared difference is weighted per channel by a learned non-negative 1x1 convolution ``w_l`` and
averaged over space, and the five averages are summed::

    d(x, x0) = sum_l mean_hw | w_l * (f_l(x) / |f_l(x)| - f_l(x0) / |f_l(x0)|) |^2

Version 0.1 of the released metric (the one every paper reports; X-Dyna §4.1 uses the AlexNet
backbone) first maps images from [-1, 1] through a fixed scaling layer (shift
``(-0.030, -0.088, -0.188)``, scale ``(0.458, 0.448, 0.450)``) and normalises with
``|f| + 1e-10``. Backbones: AlexNet (taps after ReLUs 1-5, ``features.1, 4, 7, 9, 11``) and
VGG16 (``relu1_2, relu2_2, relu3_3, relu4_3, relu5_3``, ``features.3, 8, 15, 22, 29``), both in
torchvision's module layout so its ImageNet state dicts load with strict keys; the linear
layers are in the lpips package's layout (``lin0.model.1.weight`` ...).

Weights (``DIR/metrics/lpips/``, `anima.metrics.components.LPIPS`)::

    lpips.json                      {"net": "alex"} or {"net": "vgg"} (version 0.1)
    alexnet.pth | vgg16.pth         torchvision's ImageNet state dict of the backbone (the
                                    ``features.*`` entries are read; ``classifier.*`` ignored)
    alex.pth | vgg.pth              the lpips package's v0.1 linear layers
                                    (``lpips/weights/v0.1/<net>.pth``)

Each ``.pth`` may be a ``.safetensors`` file of the same name instead; ``.pth`` files are
pickles, read only with ``--allow-pickle`` and then tensors-only
(`anima.models.loading.read_weights_file`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from anima.errors import InputError
from anima.weights import Weights

#: The scaling layer of LPIPS v0.1 (applied to images in [-1, 1]).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
#: The normaliser's offset (``f / (|f| + eps)``).
LPIPS_EPS = 1e-10
#: Per backbone: its torchvision ``features`` layers as (out channels, kernel, stride, padding)
#: for a convolution (each followed by a ReLU) or ``"M"`` (3x3 / 2 max pool for AlexNet, 2x2 /
#: 2 for VGG), and the indices of the layers whose outputs are tapped.
_ALEX = ((64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
_VGG16 = tuple(
    "M" if v == "M" else (v, 3, 1, 1)
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
)
NETS: dict[str, tuple[tuple[tuple[int, int, int, int] | str, ...], tuple[int, ...]]] = {
    "alex": (_ALEX, (1, 4, 7, 9, 11)),
    "vgg": (_VGG16, (3, 8, 15, 22, 29)),
}
#: The torchvision backbone's file stem per net (``alexnet.pth``, ``vgg16.pth``).
BACKBONE_FILES = {"alex": "alexnet", "vgg": "vgg16"}
CONFIG_FILE = "lpips.json"


def backbone_features(net: str, width: float = 1.0) -> nn.Sequential:
    """The backbone's ``features`` in torchvision's layout (``features.0.weight`` ...), up to
    the last tapped ReLU; ``width`` scales every channel count (tiny models)."""
    layers_spec, taps = NETS[net]
    layers: list[nn.Module] = []
    channels = 3
    for spec in layers_spec:
        if isinstance(spec, str):
            pool = (3, 2) if net == "alex" else (2, 2)
            layers.append(nn.MaxPool2d(kernel_size=pool[0], stride=pool[1]))
            continue
        out, kernel, stride, padding = spec
        out = max(1, int(round(out * width)))
        layers.append(nn.Conv2d(channels, out, kernel, stride=stride, padding=padding))
        layers.append(nn.ReLU())
        channels = out
    return nn.Sequential(*layers[: taps[-1] + 1])


class NetLinLayer(nn.Module):
    """One learned channel weighting ``w_l``: ``model`` = (dropout, 1x1 conv without bias), the
    lpips package's layout (``model.1.weight``); the dropout is inert in eval mode."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS v0.1 (module docstring): ``model(a, b)`` of images [N, 3, H, W] in [0, 1] is the
    distance per image [N]."""

    def __init__(self, net: str = "alex", width: float = 1.0) -> None:
        super().__init__()
        if net not in NETS:
            raise ValueError(f"unknown LPIPS backbone {net!r}; choose from {sorted(NETS)}")
        self.net = net
        self.taps = list(NETS[net][1])
        self.features = backbone_features(net, width)
        channels = [self.features[i - 1].out_channels for i in self.taps]
        self.lin0 = NetLinLayer(channels[0])
        self.lin1 = NetLinLayer(channels[1])
        self.lin2 = NetLinLayer(channels[2])
        self.lin3 = NetLinLayer(channels[3])
        self.lin4 = NetLinLayer(channels[4])
        shift = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1)
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def lins(self) -> list[NetLinLayer]:
        return [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]

    def tapped(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five tapped activations of images in [0, 1] (after the scaling layer)."""
        x = ((2 * images - 1) - self.shift) / self.scale
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
        return outputs

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(f"expected two image batches (N, 3, H, W), got {a.shape}, {b.shape}")
        dtype = self.lin0.model[1].weight.dtype
        features = self.tapped(torch.cat([a, b]).to(dtype))
        total = torch.zeros(a.shape[0], dtype=dtype, device=a.device)
        for feature, lin in zip(features, self.lins(), strict=True):
            fa, fb = feature.chunk(2)
            fa = fa / (fa.square().sum(dim=1, keepdim=True).sqrt() + LPIPS_EPS)
            fb = fb / (fb.square().sum(dim=1, keepdim=True).sqrt() + LPIPS_EPS)
            total = total + lin((fa - fb).square()).mean(dim=(1, 2, 3))
        return total

    def load_backbone(self, state_dict: dict[str, torch.Tensor]) -> None:
        """torchvision's backbone state dict: its ``features.*`` entries must match this
        backbone's exactly (other entries, the classifier, are ignored); else ``KeyError``."""
        features = {
            key[len("features.") :]: value
            for key, value in state_dict.items()
            if key.startswith("features.")
        }
        ours = set(self.features.state_dict())
        if set(features) != ours:
            raise KeyError(
                f"not a torchvision {BACKBONE_FILES[self.net]} state dict: missing "
                f"{['features.' + k for k in sorted(ours - set(features))[:3]]}, unexpected "
                f"{['features.' + k for k in sorted(set(features) - ours)[:3]]}"
            )
        self.features.load_state_dict(features, strict=True)

    def load_lins(self, state_dict: dict[str, torch.Tensor]) -> None:
        """The lpips package's linear layers (``lin0.model.1.weight`` ... ``lin4``), strict."""
        expected = {f"lin{i}.model.1.weight" for i in range(5)}
        if set(state_dict) != expected:
            raise KeyError(
                f"not an LPIPS {self.net} linear-layer state dict: missing "
                f"{sorted(expected - set(state_dict))[:3]}, "
                f"unexpected {sorted(set(state_dict) - expected)[:3]}"
            )
        for index, lin in enumerate(self.lins()):
            lin.model[1].weight.data.copy_(state_dict[f"lin{index}.model.1.weight"])


def random_lpips(net: str = "alex", width: float = 1.0, seed: int = 0) -> LPIPS:
    """`LPIPS` with random weights drawn from ``seed`` (the linear weights non-negative, as the
    trained ones are), in eval mode: the full-size architecture for benchmarks, or with
    ``width`` < 1 a tiny one. Trained weights come from `load_lpips`."""
    from anima.models.inception import he_init
    from anima.models.seeding import seeded

    with seeded(seed):
        model = LPIPS(net, width)
        he_init(model.features)
        for lin in model.lins():
            lin.model[1].weight.data.abs_()
    return model.eval().requires_grad_(False)


def lpips(a: torch.Tensor, b: torch.Tensor, model: LPIPS) -> torch.Tensor:
    """LPIPS distance per image [N] between image batches ``a`` and ``b`` [N, 3, H, W] in
    [0, 1] (Zhang et al. 2018, Eq. 1)."""
    with torch.no_grad():
        return model(a.to(model.shift.device), b.to(model.shift.device))


def lpips_frames(
    generated: torch.Tensor, reference: torch.Tensor, model: LPIPS, batch_size: int = 16
) -> torch.Tensor:
    """LPIPS per frame [F] of two videos (F, 3, H, W) in [0, 1], ``batch_size`` frames at a
    time; a video's LPIPS (X-Dyna §4.1) is their mean."""
    if generated.shape != reference.shape:
        raise ValueError(
            f"videos differ in shape: {tuple(generated.shape)} vs {tuple(reference.shape)}"
        )
    scores = [
        lpips(generated[i : i + batch_size], reference[i : i + batch_size], model).cpu()
        for i in range(0, generated.shape[0], batch_size)
    ]
    return torch.cat(scores)


def load_lpips(weights: Weights, device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS from ``DIR/metrics/lpips/`` (module docstring), or a tiny random AlexNet LPIPS for
    ``--weights tiny``; missing files are an `InputError` naming the file and folder."""
    from anima.metrics.components import LPIPS as LPIPS_COMPONENT

    if weights.builtin == "tiny":
        return random_lpips("alex", width=1 / 8).to(device)
    folder = weights.require(LPIPS_COMPONENT, "LPIPS")
    config_path = folder / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(
            f"LPIPS: cannot read {CONFIG_FILE} ({_first_line(error)})", f"in {folder}"
        ) from None
    net = config.get("net") if isinstance(config, dict) else None
    if net not in NETS:
        raise InputError(
            f'LPIPS: {CONFIG_FILE} must name the backbone, "net": "alex" or "vgg" (got {net!r})',
            f"in {folder}",
        )
    if str(config.get("version", "0.1")) != "0.1":
        raise InputError(f"LPIPS: only version 0.1 is supported ({CONFIG_FILE})", f"in {folder}")
    model = LPIPS(net)
    backbone = _read_state_dict(folder, BACKBONE_FILES[net], weights.allow_pickle)
    lins = _read_state_dict(folder, net, weights.allow_pickle)
    try:
        model.load_backbone(backbone)
        model.load_lins(lins)
    except (KeyError, RuntimeError) as error:
        raise InputError(f"LPIPS: {_first_line(error)}", f"in {folder}") from None
    return model.eval().requires_grad_(False).to(device)


def _read_state_dict(folder: Path, stem: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """``stem.safetensors``, or ``stem.pth`` (with ``allow_pickle``, tensors only), from
    ``folder``."""
    safetensors_path = folder / f"{stem}.safetensors"
    if safetensors_path.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors_path))
    path = folder / f"{stem}.pth"
    if not path.is_file():
        raise InputError(f"LPIPS: {stem}.pth not found", f"in {folder}")
    from anima.models.loading import read_weights_file

    state = read_weights_file(path, allow_pickle)
    if not isinstance(state, dict):
        raise InputError(f"LPIPS: {path.name} is not a state dict", f"in {folder}")
    return dict(state)


def _first_line(error: BaseException) -> str:
    """An exception's message on one line (its first, surrounding quotes of a ``KeyError``
    dropped), for the one-line `anima.errors.InputError` of an unreadable weights file."""
    message = str(error.args[0]) if error.args else str(error)
    return message.strip().splitlines()[0] if message.strip() else type(error).__name__
