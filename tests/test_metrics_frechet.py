"""The Frechet distance against scipy and torchmetrics, and the FID / FVD feature extractors
(tiny models, and each weight format loaded from a folder)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from anima.errors import InputError
from anima.metrics import features as feat
from anima.metrics.frechet import feature_statistics, frechet_distance, frechet_from_features
from anima.models.inception import PYTORCH_FID_FILE, fid_inception, random_i3d
from anima.weights import Weights

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # the tests script stand-ins of the released TorchScript files
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]

TINY = Weights(builtin="tiny")


def _features(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing * scale + shift


def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """FID written from Heusel et al.'s formula with scipy, independently of anima."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root))


def test_statistics_are_float64_mean_and_unbiased_covariance():
    a = _features(50, 6, 0).astype(np.float32)
    mu, sigma = feature_statistics(torch.from_numpy(a))
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, a.astype(np.float64).mean(0), rtol=1e-12)
    centred = a.astype(np.float64) - a.astype(np.float64).mean(0)
    np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)
    with pytest.raises(ValueError, match="2 samples"):
        feature_statistics(a[:1])


def test_frechet_equals_scipy_computation():
    a, b = _features(200, 16, 1), _features(150, 16, 2, shift=0.3, scale=1.5)
    expected = _scipy_frechet(a, b)
    assert expected > 1.0
    assert frechet_from_features(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_from_features(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(
        expected, rel=1e-6
    )


def test_frechet_of_shifted_copy_is_squared_shift():
    a = _features(100, 8, 3)
    shift = np.linspace(-1, 1, 8)
    assert frechet_from_features(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    assert abs(frechet_from_features(a, a)) < 1e-8


class _Pooled(nn.Module):
    """Images to a 12-D feature: their 2 x 2 average pool (any size, also torchmetrics' probe)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(images.float(), 2).flatten(1)


def test_frechet_equals_torchmetrics_on_the_same_features():
    fid_metric = pytest.importorskip("torchmetrics.image.fid")
    g = torch.Generator().manual_seed(0)
    real = torch.rand(80, 3, 8, 8, generator=g)
    fake = torch.rand(90, 3, 8, 8, generator=g) ** 1.5
    metric = fid_metric.FrechetInceptionDistance(feature=_Pooled(), normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute())
    ours = frechet_from_features(_Pooled()(fake), _Pooled()(real))
    assert ours == pytest.approx(expected, rel=1e-6)


def test_fid_with_tiny_inception_equals_torchmetrics():
    fid_metric = pytest.importorskip("torchmetrics.image.fid")
    extractor = feat.load_inception(TINY)
    g = torch.Generator().manual_seed(1)
    generated = torch.rand(150, 3, 24, 24, generator=g)
    reference = torch.rand(150, 3, 24, 24, generator=g) ** 2
    ours = feat.fid(generated, reference, extractor)
    metric = fid_metric.FrechetInceptionDistance(feature=extractor, normalize=True)
    metric.update(reference, real=True)
    metric.update(generated, real=False)
    expected = float(metric.compute())
    assert expected > 0
    assert ours == pytest.approx(expected, rel=1e-6)


def test_singular_covariances_use_the_offset_and_stay_finite():
    # fewer samples than dimensions: both covariances singular
    a, b = _features(5, 12, 4), _features(6, 12, 5, shift=0.5)
    value = frechet_from_features(a, b)
    assert np.isfinite(value) and value > 0
    assert abs(frechet_from_features(a, a)) < 1e-4


def test_large_imaginary_part_is_an_error():
    mu = np.zeros(2)
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(mu, np.diag([1.0, 1.0]), mu, np.diag([-1.0, 1.0]))


def test_tiny_extractors_shapes_and_separation():
    g = torch.Generator().manual_seed(2)
    frames = torch.rand(4, 3, 20, 28, generator=g)
    assert feat.frame_features(feat.load_inception(TINY), frames, batch_size=3).shape == (4, 128)
    video = torch.rand(10, 3, 20, 28, generator=g)
    a = feat.video_clips(torch.rand(24, 3, 20, 20, generator=g), 8, stride=4)
    b = feat.video_clips(torch.rand(24, 3, 20, 20, generator=g) ** 3, 8, stride=4)
    for loader in (feat.load_i3d, feat.load_dtfvd, feat.load_videomae):
        extractor = loader(TINY, "cpu")
        out = feat.clip_features(extractor, video, clip_length=8, stride=2)
        assert out.shape[0] == 2 and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert feat.fvd(a, b, extractor) > 0


def test_video_clips_windows():
    video = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 3, 2, 2)
    clips = feat.video_clips(video, 4, stride=3)
    assert clips.shape == (3, 4, 3, 2, 2)
    assert clips[:, 0, 0, 0, 0].tolist() == [0.0, 3.0, 6.0]
    assert feat.video_clips(video, 5).shape[0] == 2
    with pytest.raises(ValueError, match="does not fit"):
        feat.video_clips(video, 11)


@pytest.mark.parametrize(
    ("loader", "needs"),
    [
        (feat.load_inception, "inception-2015-12-05.pt or pt_inception"),
        (feat.load_i3d, "i3d_torchscript.pt"),
        (feat.load_dtfvd, "model.pt"),
        (feat.load_videomae, "config.json"),
    ],
)
def test_missing_weights_name_file_and_folder(tmp_path, loader, needs):
    with pytest.raises(InputError) as error:
        loader(Weights(root=tmp_path), "cpu")
    assert needs in str(error.value) and str(tmp_path / "metrics") in str(error.value)


class _StyleGANLikeInception(nn.Module):
    """A scripted stand-in called as StyleGAN's ``inception-2015-12-05.pt`` is."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert img.dtype == torch.uint8
        features = self.net(img.float() / 255)
        return features if return_features else features.softmax(1)


def test_inception_torchscript_is_called_with_uint8_and_return_features(tmp_path):
    net = fid_inception(random=True, width=1 / 16, size=75)
    folder = tmp_path / "metrics" / "inception"
    folder.mkdir(parents=True)
    torch.jit.script(_StyleGANLikeInception(net)).save(
        str(folder / feat.INCEPTION_TORCHSCRIPT_FILE)
    )
    extractor = feat.load_inception(Weights(root=tmp_path))
    assert extractor.scripted
    frames = torch.rand(3, 3, 30, 30, generator=torch.Generator().manual_seed(3))
    expected = net((frames * 255).round() / 255)
    torch.testing.assert_close(extractor(frames), expected, rtol=1e-5, atol=1e-6)


def test_pytorch_fid_state_dict_loads_strictly(tmp_path):
    net = fid_inception(random=True, seed=5)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in state and state["fc.weight"].shape == (
        1008,
        2048,
    )
    folder = tmp_path / "metrics" / "inception"
    folder.mkdir(parents=True)
    torch.save(state, folder / PYTORCH_FID_FILE)
    with pytest.raises(InputError, match="--allow-pickle"):  # a .pth is a pickle
        feat.load_inception(Weights(root=tmp_path))
    extractor = feat.load_inception(Weights(root=tmp_path, allow_pickle=True))
    assert not extractor.scripted
    loaded = extractor.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, folder / PYTORCH_FID_FILE)
    with pytest.raises(InputError, match="extra.weight"):
        feat.load_inception(Weights(root=tmp_path, allow_pickle=True))


def test_i3d_torchscript_calling_convention(tmp_path):
    net = random_i3d(width=1 / 16, size=32, seed=2)
    folder = tmp_path / "metrics" / "i3d"
    folder.mkdir(parents=True)
    torch.jit.script(net).save(str(folder / feat.I3D_TORCHSCRIPT_FILE))
    extractor = feat.load_i3d(Weights(root=tmp_path))
    clips = torch.rand(2, 8, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    videos = (clips * 255).round().to(torch.uint8).permute(0, 2, 1, 3, 4)
    expected = net(videos, rescale=True, resize=True, return_features=True)
    torch.testing.assert_close(extractor(clips), expected, rtol=1e-5, atol=1e-5)
    assert extractor(clips).shape == (2, 400)


class _InputProbe(nn.Module):
    """A DTFVD backbone reporting what it was given: shape and range per clip."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        flat = x.reshape(n, -1)
        shape = torch.tensor([float(s) for s in x.shape[1:]]).expand(n, 4)
        return torch.cat([shape, flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]], 1)


def test_dtfvd_backbone_receives_224_clips_in_minus_one_one(tmp_path):
    folder = tmp_path / "metrics" / "dtfvd"
    folder.mkdir(parents=True)
    torch.jit.script(_InputProbe()).save(str(folder / feat.DTFVD_FILE))
    extractor = feat.load_dtfvd(Weights(root=tmp_path))
    clips = torch.zeros(2, 5, 3, 16, 16)
    clips[:, :, :, :8] = 1.0
    out = extractor(clips)
    assert out[:, :4].tolist() == [[3.0, 5.0, 224.0, 224.0]] * 2
    assert out[:, 4].tolist() == [-1.0, -1.0] and out[:, 5].tolist() == [1.0, 1.0]


def test_videomae_folder_matches_the_saved_model_and_resamples_length(tmp_path):
    tiny = feat.random_videomae(seed=3)
    folder = tmp_path / "metrics" / "videomae"
    tiny.model.save_pretrained(str(folder))
    assert (
        "VideoMAEForVideoClassification"
        in json.loads((folder / "config.json").read_text())["architectures"]
    )
    loaded = feat.load_videomae(Weights(root=tmp_path))
    clips = torch.rand(2, 16, 3, 20, 20, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(loaded(clips), tiny(clips), rtol=1e-5, atol=1e-5)
    assert loaded(clips).shape == (2, 32)
    # a shorter clip is resampled to the model's 16 frames by nearest frame
    torch.testing.assert_close(loaded(clips[:, ::2]), loaded(clips[:, ::2].repeat_interleave(2, 1)))
