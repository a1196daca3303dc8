"""The Inception networks the Frechet metrics read features from, written out in torch.

(README, "Evaluation"; docs/architecture.md, "Models and weights")

- `FIDInceptionV3`: Inception-v3 (Szegedy et al., "Rethinking the Inception Architecture for
  Computer Vision", CVPR 2016, §6) in the form FID is defined on (Heusel et al., "GANs Trained by
  a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017, §3): the
  TensorFlow graph ``inception-2015-12-05`` whose pool-3 features every FID table reports
  (LeviTor §4, X-Dyna §4.1). It differs from the ImageNet classifier in three places, which are
  kept here: the average pools of the A, C and first E blocks do not count the zero padding,
  the last E block pools with a max instead of an average, and the classifier has 1008 outputs.
  Module names and the state-dict key layout are pytorch-fid's (``Conv2d_1a_3x3.conv.weight``,
  ``Mixed_5b.branch_pool.bn.running_mean``, ``fc.weight``, ...), so its released state dict
  ``pt_inception-2015-12-05-6726825d.pth`` loads with strict keys. Input: RGB in [0, 1],
  resized bilinearly (no corner alignment) to 299 x 299 and mapped to [-1, 1]; output: the
  2048 pool-3 features.
- `InceptionI3D`: the Inflated 3D ConvNet (Carreira and Zisserman, "Quo Vadis, Action
  Recognition? A New Model and the Kinetics Dataset", CVPR 2017, §2.4) FVD reads (Unterthiner et
  al., "Towards Accurate Generative Models of Video", 2018, §3), with the calling convention of
  StyleGAN-V's TorchScript ``i3d_torchscript.pt``: ``forward(videos, rescale, resize,
  return_features)`` on [N, 3, T, H, W]. The FVD weights exist only as that TorchScript file
  (:func:`anima.metrics.features.load_i3d` loads it); this class is the same architecture with
  random weights, for ``--weights tiny`` and for timing the full-size network
  (``benchmarks/``), with symmetric padding and a global average pool where the TensorFlow
  graph pads "same" and pools 2 x 7 x 7 windows.

Both take ``width`` (a multiplier of every channel count: 1 is the real network, tiny models use
1/16 or less) and ``size`` (the side inputs are resized to) so tiny versions keep the architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anima.models.seeding import seeded

#: pytorch-fid's state dict of the FID Inception.
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
#: The side FID Inception resizes its input to.
INCEPTION_SIZE = 299
#: The pool-3 feature dimension of the full-size network.
INCEPTION_FEATURES = 2048
#: The classes of the TensorFlow graph's classifier (1000 ImageNet classes and 8 unused).
INCEPTION_CLASSES = 1008
#: The side I3D resizes its input to, and its Kinetics-400 logits.
I3D_SIZE = 224
I3D_CLASSES = 400


def _channels(count: int, width: float) -> int:
    return max(1, int(round(count * width)))


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 0.001) and ReLU: ``conv``, ``bn``."""

    def __init__(self, in_channels: int, out_channels: int, **conv: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class FIDInceptionA(nn.Module):
    """Mixed_5b-d: 1x1, 5x5, double 3x3 and a pool branch (the pool not counting padding)."""

    def __init__(self, in_channels: int, pool_features: int, width: float) -> None:
        super().__init__()
        c = lambda n: _channels(n, width)  # noqa: E731
        self.branch1x1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, c(48), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, c(pool_features), kernel_size=1)
        self.out_channels = c(64) + c(64) + c(96) + c(pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([b1, b5, b3, self.branch_pool(pool)], 1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17 (strided 3x3, double 3x3, max pool)."""

    def __init__(self, in_channels: int, width: float) -> None:
        super().__init__()
        c = lambda n: _channels(n, width)  # noqa: E731
        self.branch3x3 = BasicConv2d(in_channels, c(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, stride=2)
        self.out_channels = c(384) + c(96) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    """Mixed_6b-e: factorised 7x7 branches and a pool branch (not counting padding)."""

    def __init__(self, in_channels: int, channels_7x7: int, width: float) -> None:
        super().__init__()
        c = lambda n: _channels(n, width)  # noqa: E731
        c7 = c(channels_7x7)
        row, col = (
            {"kernel_size": (1, 7), "padding": (0, 3)},
            {"kernel_size": (7, 1), "padding": (3, 0)},
        )
        self.branch1x1 = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, c(192), **col)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, c(192), **row)
        self.branch_pool = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.out_channels = 4 * c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))
        pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([b1, b7, bd, self.branch_pool(pool)], 1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    def __init__(self, in_channels: int, width: float) -> None:
        super().__init__()
        c = lambda n: _channels(n, width)  # noqa: E731
        self.branch3x3_1 = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.branch3x3_2 = BasicConv2d(c(192), c(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(c(192), c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c(192), c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c(192), c(192), kernel_size=3, stride=2)
        self.out_channels = c(320) + c(192) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(b7))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (``max_pool=False``: an average pool not counting padding) and Mixed_7c
    (``max_pool=True``: the FID graph's max pool)."""

    def __init__(self, in_channels: int, width: float, max_pool: bool) -> None:
        super().__init__()
        c = lambda n: _channels(n, width)  # noqa: E731
        row, col = (
            {"kernel_size": (1, 3), "padding": (0, 1)},
            {"kernel_size": (3, 1), "padding": (1, 0)},
        )
        self.branch1x1 = BasicConv2d(in_channels, c(320), kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, c(384), kernel_size=1)
        self.branch3x3_2a = BasicConv2d(c(384), c(384), **row)
        self.branch3x3_2b = BasicConv2d(c(384), c(384), **col)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(448), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(448), c(384), kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c(384), c(384), **row)
        self.branch3x3dbl_3b = BasicConv2d(c(384), c(384), **col)
        self.branch_pool = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.max_pool = max_pool
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:
            pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([b1, b3, bd, self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 (module docstring): [N, 3, H, W] in [0, 1] -> [N, features]."""

    def __init__(self, width: float = 1.0, size: int = INCEPTION_SIZE) -> None:
        super().__init__()
        c = lambda n: _channels(n, width)  # noqa: E731
        self.size = size
        self.Conv2d_1a_3x3 = BasicConv2d(3, c(32), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(c(32), c(32), kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(c(32), c(64), kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(c(64), c(80), kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(c(80), c(192), kernel_size=3)
        self.Mixed_5b = FIDInceptionA(c(192), 32, width)
        self.Mixed_5c = FIDInceptionA(self.Mixed_5b.out_channels, 64, width)
        self.Mixed_5d = FIDInceptionA(self.Mixed_5c.out_channels, 64, width)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, width)
        self.Mixed_6b = FIDInceptionC(self.Mixed_6a.out_channels, 128, width)
        self.Mixed_6c = FIDInceptionC(self.Mixed_6b.out_channels, 160, width)
        self.Mixed_6d = FIDInceptionC(self.Mixed_6c.out_channels, 160, width)
        self.Mixed_6e = FIDInceptionC(self.Mixed_6d.out_channels, 192, width)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, width)
        self.Mixed_7b = FIDInceptionE(self.Mixed_7a.out_channels, width, max_pool=False)
        self.Mixed_7c = FIDInceptionE(self.Mixed_7b.out_channels, width, max_pool=True)
        self.num_features = self.Mixed_7c.out_channels
        # The graph's classifier: unused by FID, kept so the released state dict loads strictly.
        self.fc = nn.Linear(self.num_features, INCEPTION_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.Conv2d_1a_3x3.conv.weight.dtype)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return x.mean(dim=(2, 3))


def fid_inception(
    state_dict: dict[str, torch.Tensor] | None = None,
    random: bool = False,
    width: float = 1.0,
    size: int = INCEPTION_SIZE,
    seed: int = 0,
) -> FIDInceptionV3:
    """The FID Inception in eval mode: pytorch-fid's ``state_dict`` loaded with strict keys
    (a missing ``num_batches_tracked`` aside: older state dicts have none), or with
    ``random=True`` weights drawn from ``seed`` (full size for benchmarks; ``width`` and
    ``size`` below 1 and 299 for tiny models). A state dict whose keys differ raises
    ``KeyError`` naming the first differences."""
    if state_dict is None and not random:
        raise ValueError("fid_inception needs a state dict or random=True")
    with seeded(seed):
        model = FIDInceptionV3(width=width, size=size)
        he_init(model)
    if state_dict is not None:
        load_strict(model, state_dict)
    return model.eval().requires_grad_(False)


def he_init(model: nn.Module) -> None:
    """He-normal weights for every convolution followed by a ReLU (fan-in, ReLU gain), so that
    a random network's activations keep their scale through its depth (the default init
    shrinks them by about sqrt(3) a layer: a deep random Inception would map every input to
    nearly the same features, and its Frechet distances would be rounding noise)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict`` with strict key matching, tolerating only missing
    ``num_batches_tracked`` buffers; differing keys raise ``KeyError`` naming them."""
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise KeyError(
            f"state dict does not match: missing {missing[:3]}, "
            f"unexpected {list(result.unexpected_keys)[:3]}"
        )


class Unit3D(nn.Module):
    """I3D's unit: 3D convolution (no bias), batch norm (eps 0.001) and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(
            in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False
        )
        self.bn = nn.BatchNorm3d(out_channels, eps=0.001, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv3d(x)))


class InceptionModule3D(nn.Module):
    """An inflated Inception-v1 module: 1x1, 1x1-3x3, 1x1-3x3 and 3x3 max pool-1x1 branches."""

    def __init__(self, in_channels: int, out: tuple[int, ...], width: float) -> None:
        super().__init__()
        o = [_channels(n, width) for n in out]
        self.b0 = Unit3D(in_channels, o[0], 1)
        self.b1a, self.b1b = Unit3D(in_channels, o[1], 1), Unit3D(o[1], o[2], 3)
        self.b2a, self.b2b = Unit3D(in_channels, o[3], 1), Unit3D(o[3], o[4], 3)
        self.b3b = Unit3D(in_channels, o[5], 1)
        self.out_channels = o[0] + o[2] + o[4] + o[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool3d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pool)], 1
        )


#: Mixed_3b ... Mixed_5c: (1x1, 3x3 reduce, 3x3, 3x3 reduce, 3x3, pool projection), with the
#: max pools between them (Carreira and Zisserman 2017, Fig. 3).
_I3D_MODULES: tuple[tuple[int, ...] | str, ...] = (
    (64, 96, 128, 16, 32, 32),
    (128, 128, 192, 32, 96, 64),
    "pool333",
    (192, 96, 208, 16, 48, 64),
    (160, 112, 224, 24, 64, 64),
    (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64),
    (256, 160, 320, 32, 128, 128),
    "pool222",
    (256, 160, 320, 32, 128, 128),
    (384, 192, 384, 48, 128, 128),
)


class InceptionI3D(nn.Module):
    """The Kinetics-400 I3D (module docstring), called as StyleGAN-V's TorchScript is.

    ``forward(videos [N, 3, T, H, W], rescale, resize, return_features)``: ``rescale`` maps
    [0, 255] (uint8 or float) to [-1, 1], ``resize`` resizes every frame trilinearly to
    ``size`` x ``size``, and the output is the 400 logits (``return_features``) or their
    softmax."""

    def __init__(self, width: float = 1.0, size: int = I3D_SIZE) -> None:
        super().__init__()
        c = lambda n: _channels(n, width)  # noqa: E731
        self.size = size
        self.stem = nn.ModuleList(
            [Unit3D(3, c(64), 7, stride=2), Unit3D(c(64), c(64), 1), Unit3D(c(64), c(192), 3)]
        )
        blocks: list[InceptionModule3D] = []
        pools: list[int] = []
        channels = c(192)
        for spec in _I3D_MODULES:
            if isinstance(spec, str):
                pools.append(3 if spec == "pool333" else 2)
                continue
            if len(pools) == len(blocks):
                pools.append(0)
            blocks.append(InceptionModule3D(channels, spec, width))
            channels = blocks[-1].out_channels
        self.mixed = nn.ModuleList(blocks)
        #: The max pool before each block: 0 none, else its (cubic) kernel and stride.
        self.pools = pools
        self.logits = nn.Conv3d(channels, I3D_CLASSES, kernel_size=1)

    def forward(
        self,
        videos: torch.Tensor,
        rescale: bool = False,
        resize: bool = False,
        return_features: bool = False,
    ) -> torch.Tensor:
        x = videos.to(self.logits.weight.dtype)
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = F.interpolate(
                x, size=(x.shape[2], self.size, self.size), mode="trilinear", align_corners=False
            )
        x = self.stem[0](x)
        x = F.max_pool3d(x, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        x = self.stem[2](self.stem[1](x))
        x = F.max_pool3d(x, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        for index, block in enumerate(self.mixed):
            pool = self.pools[index]
            if pool == 3:
                x = F.max_pool3d(x, kernel_size=3, stride=2, padding=1)
            elif pool == 2:
                x = F.max_pool3d(x, kernel_size=2, stride=2, ceil_mode=True)
            x = block(x)
        logits = self.logits(x.mean(dim=(2, 3, 4), keepdim=True)).flatten(1)
        return logits if return_features else logits.softmax(dim=1)


def random_i3d(width: float = 1.0, size: int = I3D_SIZE, seed: int = 0) -> InceptionI3D:
    """`InceptionI3D` with weights drawn from ``seed``, in eval mode (the released FVD weights
    come only as TorchScript: :func:`anima.metrics.features.load_i3d`)."""
    with seeded(seed):
        model = InceptionI3D(width=width, size=size)
        he_init(model)
    return model.eval().requires_grad_(False)
