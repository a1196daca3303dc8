"""LPIPS (Zhang et al. 2018, Eq. 1): properties, a computation from the definition, and the
weight folder (torchvision- and lpips-layout state dicts with strict keys)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from anima.errors import InputError
from anima.metrics.lpips import LPIPS, load_lpips, lpips, lpips_frames, random_lpips
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")

#: AlexNet's convolutions as torchvision numbers them: index, stride, padding; a 3x3 / 2 max
#: pool follows convolutions 0 and 3. The taps are the ReLUs after every convolution.
ALEX_CONVS = ((0, 4, 2), (3, 1, 2), (6, 1, 1), (8, 1, 1), (10, 1, 1))


def _images(n: int, seed: int, size: tuple[int, int] = (40, 48)) -> torch.Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def _definition(a: torch.Tensor, b: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """LPIPS v0.1 with AlexNet, from the paper's Eq. 1 and the release's constants, reading
    only the state dict (no module of anima.metrics.lpips)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    xs = [((2 * image - 1) - shift) / scale for image in (a, b)]
    total = torch.zeros(a.shape[0])
    for layer, (index, stride, padding) in enumerate(ALEX_CONVS):
        for i, x in enumerate(xs):
            if index in (3, 6):
                x = F.max_pool2d(x, 3, 2)
            weight, bias = state[f"features.{index}.weight"], state[f"features.{index}.bias"]
            xs[i] = F.relu(F.conv2d(x, weight, bias, stride=stride, padding=padding))
        units = [x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for x in xs]
        w = state[f"lin{layer}.model.1.weight"].view(1, -1, 1, 1)
        total += ((units[0] - units[1]).pow(2) * w).sum(1).mean((1, 2))
    return total


def test_identical_images_are_at_zero_and_distance_is_symmetric():
    model = random_lpips("alex", width=1 / 4, seed=1)
    a, b = _images(3, 0), _images(3, 1)
    assert torch.equal(lpips(a, a, model), torch.zeros(3))
    ab, ba = lpips(a, b, model), lpips(b, a, model)
    torch.testing.assert_close(ab, ba, rtol=1e-6, atol=0)
    assert (ab > 0).all() and ab.shape == (3,)
    # a milder change is nearer than noise
    assert (lpips(a, (a + 0.02).clamp(0, 1), model) < ab).all()


def test_alexnet_lpips_equals_the_definition():
    model = random_lpips("alex", seed=2)
    a, b = _images(2, 2, (64, 64)), _images(2, 3, (64, 64))
    expected = _definition(a, b, model.state_dict())
    torch.testing.assert_close(lpips(a, b, model), expected, rtol=1e-5, atol=1e-7)


def test_vgg_taps_are_relu_outputs_of_each_stage():
    model = random_lpips("vgg", width=1 / 16, seed=3)
    taps = model.tapped(_images(1, 4, (32, 32)))
    assert [t.shape[-1] for t in taps] == [32, 16, 8, 4, 2]
    assert [t.shape[1] for t in taps] == [4, 8, 16, 32, 32]
    assert all((t >= 0).all() for t in taps)
    assert [type(model.features[i]).__name__ for i in model.taps] == ["ReLU"] * 5


def test_frames_runner_matches_one_batch():
    model = random_lpips("alex", width=1 / 8, seed=4)
    a, b = _images(5, 5), _images(5, 6)
    torch.testing.assert_close(lpips_frames(a, b, model, batch_size=2), lpips(a, b, model))


def _alexnet_torchvision_state(seed: int) -> dict[str, torch.Tensor]:
    """An AlexNet state dict with torchvision's keys and shapes (features and classifier)."""
    reference = random_lpips("alex", seed=seed)
    state = {f"features.{k}": v.clone() for k, v in reference.features.state_dict().items()}
    state["features.0.weight"].normal_(generator=torch.Generator().manual_seed(seed))
    state["classifier.1.weight"] = torch.zeros(8, 9216)
    state["classifier.1.bias"] = torch.zeros(8)
    return state


def _write_folder(root, backbone, lins, net="alex"):
    folder = root / "metrics" / "lpips"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lpips.json").write_text(json.dumps({"net": net}))
    torch.save(backbone, folder / ("alexnet.pth" if net == "alex" else "vgg16.pth"))
    torch.save(lins, folder / f"{net}.pth")
    return folder


def test_weight_folder_loads_torchvision_and_lpips_layouts_strictly(tmp_path):
    backbone = _alexnet_torchvision_state(7)
    lins = {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1)
        for i, c in enumerate((64, 192, 384, 256, 256))
    }
    _write_folder(tmp_path, backbone, lins)
    with pytest.raises(InputError, match="--allow-pickle"):  # .pth files are pickles
        load_lpips(Weights(root=tmp_path))
    model = load_lpips(Weights(root=tmp_path, allow_pickle=True))
    assert isinstance(model, LPIPS) and model.net == "alex"
    assert torch.equal(model.features[0].weight, backbone["features.0.weight"])
    assert torch.equal(model.lin2.model[1].weight, lins["lin2.model.1.weight"])
    a, b = _images(2, 8, (64, 64)), _images(2, 9, (64, 64))
    state = {**backbone, **lins}
    torch.testing.assert_close(lpips(a, b, model), _definition(a, b, state), rtol=1e-5, atol=1e-7)

    del backbone["features.10.bias"]
    _write_folder(tmp_path, backbone, lins)
    with pytest.raises(InputError, match="features.10.bias"):
        load_lpips(Weights(root=tmp_path, allow_pickle=True))
    backbone = _alexnet_torchvision_state(7)
    lins["lin5.model.1.weight"] = torch.rand(1, 4, 1, 1)
    _write_folder(tmp_path, backbone, lins)
    with pytest.raises(InputError, match="lin5"):
        load_lpips(Weights(root=tmp_path, allow_pickle=True))


def test_weight_folder_errors_name_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="lpips.json not found") as error:
        load_lpips(Weights(root=tmp_path, allow_pickle=True))
    assert str(tmp_path / "metrics" / "lpips") in str(error.value)
    folder = tmp_path / "metrics" / "lpips"
    folder.mkdir(parents=True)
    (folder / "lpips.json").write_text(json.dumps({"net": "squeeze"}))
    with pytest.raises(InputError, match='"net"'):
        load_lpips(Weights(root=tmp_path, allow_pickle=True))
    (folder / "lpips.json").write_text(json.dumps({"net": "vgg"}))
    with pytest.raises(InputError, match="vgg16.pth not found"):
        load_lpips(Weights(root=tmp_path, allow_pickle=True))


def test_tiny_weights():
    model = load_lpips(Weights(builtin="tiny"))
    a = _images(2, 10, (32, 32))
    assert lpips(a, a.flip(-1), model).shape == (2,)


@pytest.mark.skipif(importlib.util.find_spec("lpips") is None, reason="lpips not installed")
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_equals_the_lpips_package_with_the_same_weights(monkeypatch, net):
    """The lpips package (installed without torchvision, which it imports only for the
    backbone: a stand-in hands it ours) gives the same distance with the same weights."""
    ours = random_lpips(net, seed=11)
    models = types.ModuleType("torchvision.models")

    class _Backbone:
        def __init__(self, **_: object) -> None:
            self.features = ours.features

    models.alexnet = models.vgg16 = models.squeezenet1_1 = _Backbone
    torchvision = types.ModuleType("torchvision")
    torchvision.models = models
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    import lpips as lpips_package

    reference = lpips_package.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    reference.load_state_dict(
        {k: v for k, v in ours.state_dict().items() if k.startswith("lin")}, strict=False
    )
    reference.eval()
    a, b = _images(3, 12, (64, 64)), _images(3, 13, (64, 64))
    with torch.no_grad():
        expected = reference(a, b, normalize=True).flatten()
    torch.testing.assert_close(lpips(a, b, ours), expected, rtol=1e-5, atol=1e-7)
