"""LeviTor control maps in the release's convention (LeviTor §3.2), from measured facts.

The facts (measured against the release's code on identical inputs): a point's disc is a 20x20
bilinear resize of a 200 px uint8 Gaussian template pasted into rows/cols [c - 10, c + 10) (peak
251, 320 covered pixels, integers), clamped to [1, W - 1) with the template squeezed in; points
are drawn in order, each overwriting its whole box; ids are the objects' own; depth is frame 0's
disparity min-max normalised to integers; K-means starts from evenly spaced raster-order pixels
with k from the largest area, and centres are truncated.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from diffusers import StableVideoDiffusionPipeline

from anima.cli import main
from anima.control_points import (
    ControlPoints,
    compute_control_points,
    compute_release_control_points,
    release_num_control_points,
    release_points_count,
)
from anima.errors import InputError
from anima.methods.levitor import LeviTorMethod, load_pipeline
from anima.methods.levitor.controls import control_maps, control_signal
from anima.methods.levitor.dataset import LevitorDataset
from anima.methods.levitor.release_maps import (
    release_control_maps,
    release_depth_values,
    truncated_pixels,
)
from anima.methods.levitor.train import initial_controlnet
from anima.models.convert import convert_controlnet
from anima.models.loading import load_svd_controlnet
from anima.models.tiny import tiny_controlnet, tiny_svd_components, tiny_svd_unet
from anima.scene import build_scene
from anima.spec import load_spec
from anima.weights import Weights

RANGE = (2.0, 10.0)  # (near, far) of frame 0


def points(
    xy: list[tuple[float, float]],
    ids: list[int],
    distance: list[float] | None = None,
) -> ControlPoints:
    """One frame of visible points at ``xy`` with object ids ``ids``."""
    n = len(ids)
    dist = torch.tensor([distance or [5.0] * n], dtype=torch.float32)
    return ControlPoints(
        xy=torch.tensor([xy], dtype=torch.float32).reshape(1, n, 2),
        distance=dist,
        instance=torch.tensor(ids, dtype=torch.int64),
        visible=torch.ones(1, n, dtype=torch.bool),
    )


def draw(xy, ids, size=(300, 400), distance=None) -> torch.Tensor:
    """``(3, H, W)`` release maps of one frame."""
    return release_control_maps(points(xy, ids, distance), size, RANGE)[0]


# ---------------------------------------------------------------------------- the disc


def test_single_point_is_the_releases_disc() -> None:
    maps = draw([(200.0, 100.0)], [1])
    heat = maps[0]
    assert torch.equal(heat, heat.round())  # integers
    assert float(heat.max()) == 251.0
    peak = torch.nonzero(heat == 251.0).tolist()
    assert peak and all(99 <= r <= 100 and 199 <= c <= 200 for r, c in peak)
    assert float(heat[99:101, 199:201].min()) >= 250.0  # the 2x2 top, centre at c - 0.5
    assert int((heat != 0).sum()) == 320
    rows, cols = torch.nonzero(heat, as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (
        90,
        109,
        190,
        209,
    )
    ys, xs = torch.meshgrid(torch.arange(300.0), torch.arange(400.0), indexing="ij")
    centre = (float((heat * xs).sum() / heat.sum()), float((heat * ys).sum() / heat.sum()))
    assert centre == pytest.approx((199.5, 99.5), abs=0.1)
    # id and depth exactly where the template is non-zero
    assert torch.equal(maps[1] != 0, heat != 0) and torch.equal(maps[2] != 0, heat != 0)


def test_disc_keeps_its_20_pixels_at_any_size() -> None:
    small, large = draw([(40.0, 40.0)], [1], (80, 80)), draw([(400.0, 300.0)], [1], (600, 800))
    assert int((small[0] != 0).sum()) == int((large[0] != 0).sum()) == 320


def test_later_point_overwrites_its_whole_box_in_every_channel() -> None:
    first, second = (100.0, 100.0), (112.0, 100.0)
    alone_first = draw([first], [1], distance=[3.0])
    alone_second = draw([second], [2], distance=[8.0])
    both = draw([first, second], [1, 2], distance=[3.0, 8.0])
    box = (slice(None), slice(90, 110), slice(102, 122))  # the second point's box
    assert torch.equal(both[box], alone_second[box])
    outside = torch.ones(300, 400, dtype=torch.bool)
    outside[90:110, 102:122] = False
    assert torch.equal(both[:, outside], alone_first[:, outside])
    # the second box's zero corners erase the first disc there, in all three channels
    erased = (alone_first[0] != 0) & (both[0] == 0)
    assert int(erased.sum()) > 0
    assert not both[:, erased].any()
    # order matters: drawn the other way round, the first point wins the overlap
    swapped = draw([second, first], [2, 1], distance=[8.0, 3.0])
    assert not torch.equal(swapped, both)


def test_point_near_the_corner_is_clamped_and_squeezed() -> None:
    heat = draw([(5.0, 3.0)], [1])[0]
    assert not heat[0].any() and not heat[:, 0].any()  # row 0 and column 0 are never drawn
    rows, cols = torch.nonzero(heat, as_tuple=True)
    assert int(rows.max()) < 13 and int(cols.max()) < 15  # the box [1, 13) x [1, 15)
    peak_row, peak_col = np.unravel_index(int(heat.argmax()), heat.shape)
    assert peak_row > 3 and peak_col > 5  # the squeezed template's peak moved inwards
    assert float(heat.max()) < 251.0


def test_last_row_and_column_are_never_drawn_and_outside_points_are_skipped() -> None:
    size = (60, 80)
    heat = draw([(79.0, 59.0)], [1], size)[0]
    assert heat.any() and not heat[-1].any() and not heat[:, -1].any()
    assert not draw([(80.0, 30.0), (30.0, -1.0)], [1, 2], size).any()


def test_centres_are_truncated() -> None:
    cols, rows = truncated_pixels(torch.tensor([[10.9, 3.99]]))
    assert (int(cols[0]), int(rows[0])) == (10, 3)
    assert torch.equal(draw([(110.9, 120.9)], [1]), draw([(110.0, 120.0)], [1]))
    assert not torch.equal(draw([(110.9, 120.9)], [1]), draw([(111.0, 121.0)], [1]))


def test_ids_are_the_objects_own() -> None:
    maps = draw([(50.0, 50.0), (150.0, 50.0), (250.0, 50.0)], [1, 3, 7])
    assert maps[1].unique().tolist() == [0.0, 1.0, 3.0, 7.0]
    assert float(maps[1, 50, 150]) == 3.0
    with pytest.raises(ValueError, match="0..255"):
        draw([(50.0, 50.0)], [256])


# ---------------------------------------------------------------------------- depth


def distance_for(value: float) -> float:
    """The distance whose normalised disparity over RANGE is ``value`` (0..255)."""
    near, far = RANGE
    return 1.0 / (1.0 / far + value / 255.0 * (1.0 / near - 1.0 / far))


def test_depth_is_frame_0_disparity_normalised_to_integers() -> None:
    near, far = RANGE
    distance = torch.tensor(
        [near, far, 1.0, 50.0, distance_for(100.7), distance_for(2.6), distance_for(1.5)]
    )
    values = release_depth_values(distance, RANGE).tolist()
    # nearest -> 255, farthest -> 0, outside frame 0's range clamped, truncated, and 1 -> 0
    assert values == [255, 0, 255, 0, 100, 2, 0]
    maps = draw([(100.0, 100.0)], [1], distance=[distance_for(100.7)])
    assert maps[2].unique().tolist() == [0.0, 100.0]


def test_depth_range_comes_from_frame_0() -> None:
    instance = torch.zeros(2, 64, 64, dtype=torch.int64)
    instance[:, 20:40, 20:40] = 1
    distance = torch.full((2, 64, 64), 10.0)
    distance[0, 20:40, 20:40] = 4.0
    distance[1, 20:40, 20:40] = 2.0  # nearer than anything in frame 0: clamped to 255
    _, maps = control_signal(instance, distance, [], convention="release")
    first, second = maps[0, 2][maps[0, 0] > 0], maps[1, 2][maps[1, 0] > 0]
    expected = int(255 * (1 / 4 - 1 / 10) / (1 / 4 - 1 / 10))
    assert first.unique().tolist() == [float(expected)] == [255.0]
    assert second.unique().tolist() == [255.0]
    distance[0, 0, 0] = 1.0  # now frame 0 reaches nearer: the object's value drops
    _, maps = control_signal(instance, distance, [], convention="release")
    value = int(255 * (1 / 4 - 1 / 10) / (1 / 1 - 1 / 10))
    assert maps[0, 2][maps[0, 0] > 0].unique().tolist() == [float(value)]


# ---------------------------------------------------------------------------- K-means


def test_wide_rectangle_gives_the_releases_four_bands() -> None:
    instance = torch.zeros(1, 100, 200, dtype=torch.int64)
    instance[0, 40:60, 60:140] = 1  # 1600 px: k = round(1600 * 50 / 20000) = 4
    distance = torch.full((1, 100, 200), 10.0)
    release = compute_release_control_points(instance, distance, [])
    # evenly spaced raster-order starts give four 5-row strips stacked in y, centred on the
    # mean sampled column (every 10th pixel: columns 60, 70, ..., 130 -> 95)
    assert release.xy[0].tolist() == [[95.0, 42.0], [95.0, 47.0], [95.0, 52.0], [95.0, 57.0]]
    ours = compute_control_points(instance, distance, [])
    assert ours.num_points == 4 and not torch.equal(ours.xy, release.xy)


def test_k_follows_the_largest_area_over_the_clip() -> None:
    assert release_num_control_points([800, 2400], 20000, moved=False) == 6
    instance = torch.zeros(2, 100, 200, dtype=torch.int64)
    instance[0, 40:60, 60:100] = 1  # 800 px
    instance[1, 30:70, 50:110] = 1  # 2400 px, three times larger
    distance = torch.full((2, 100, 200), 10.0)
    assert compute_release_control_points(instance, distance, []).num_points == 6
    assert compute_control_points(instance, distance, []).num_points == 2  # ours: frame 0


def test_k_rounds_halves_to_even_and_the_scale_truncates() -> None:
    assert release_num_control_points([500], 10000, moved=False) == 2  # 2.5 -> 2
    assert release_num_control_points([700], 10000, moved=False) == 4  # 3.5 -> 4
    assert release_num_control_points([100], 10000, moved=True) == 3  # Eq. 5
    assert release_num_control_points([100, 0], 10000, moved=False) == 3  # vanishes
    assert release_points_count(3, 1.5) == 4  # int(4.5)
    assert release_points_count(3, 0.2) == 1
    assert release_points_count(5, 1.0, max_points=1) == 1


def test_distance_is_sampled_at_the_truncated_centre() -> None:
    instance = torch.zeros(1, 64, 64, dtype=torch.int64)
    instance[0, 10:20, 10:20] = 1  # every 10th pixel: column 10 of each row, mean row 14.5
    rows = torch.arange(64.0)[:, None].expand(64, 64)
    distance = (1.0 + rows)[None].clone()
    found = compute_release_control_points(instance, distance, [])
    assert found.xy[0].tolist() == [[10.0, 14.5]]
    assert found.distance[0].tolist() == [15.0]  # row 14, where rounding would read row 15


def test_release_maps_are_deterministic_and_ignore_the_seed() -> None:
    instance, distance = moving_scene()
    a = control_signal(instance, distance, [3], seed=1, convention="release")
    b = control_signal(instance, distance, [3], seed=2, convention="release")
    assert torch.equal(a[1], b[1]) and torch.equal(a[0].xy, b[0].xy)
    assert torch.equal(a[1], a[1].round())


def test_unknown_convention() -> None:
    instance, distance = moving_scene()
    with pytest.raises(ValueError, match="convention"):
        control_signal(instance, distance, [], convention="paper")


# ---------------------------------------------------------------------------- ours, unchanged


def moving_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """Five frames at 48x80: a disc (id 3) moving right and receding, a static box (id 7)."""
    frames, h, w = 5, 48, 80
    instance = torch.zeros(frames, h, w, dtype=torch.int64)
    distance = torch.full((frames, h, w), 12.0)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for f in range(frames):
        instance[f, 5:20, 50:75] = 7
        disc = (xx - (15 + 4 * f)) ** 2 + (yy - 25) ** 2 <= 9**2
        instance[f][disc] = 3
        distance[f][instance[f] == 7] = 6.0
        distance[f][disc] = 3.0 + 0.5 * f
    return instance, distance


def test_anima_convention_is_unchanged() -> None:
    instance, distance = moving_scene()
    found, maps = control_signal(instance, distance, [3], seed=5)
    # the maps of this scene before the release convention existed
    digest = hashlib.sha256(np.round(maps.numpy().astype(np.float64), 3).tobytes()).hexdigest()
    assert digest == "7c385562453d0651860312e20c1b2c43b30363aea2ffff866a2240f0131e796c"
    assert found.xy[0, 3].tolist() == [58.125, 8.625]
    same = control_signal(instance, distance, [3], seed=5, convention="anima")
    assert torch.equal(same[1], maps)
    direct = compute_control_points(instance, distance, [3], seed=5)
    assert torch.equal(control_maps(direct, (48, 80), (3.0, 12.0)), maps)
    # the conventions differ on the same scene: numbering 1..N against the own ids 3 and 7
    _, release = control_signal(instance, distance, [3], seed=5, convention="release")
    assert maps[:, 1].unique().tolist() == [0.0, 1.0, 2.0]
    assert release[:, 1].unique().tolist() == [0.0, 3.0, 7.0]


# ---------------------------------------------------------------------------- the model's record


def release_folder(root: Path, unet) -> Path:
    """A ControlNet saved as LeviTor's release saves it: class ``ControlNetSVDModel``, no
    ``control_convention`` in its config."""
    folder = root / "controlnet"
    tiny_controlnet(unet, seed=1, random_output=True).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["_class_name"] = "ControlNetSVDModel"
    del config["control_convention"]
    (folder / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory) -> Path:
    """DIR/svd (tiny), DIR/release (as downloaded), DIR/converted and DIR/ours (anima's)."""
    root = tmp_path_factory.mktemp("release-weights")
    components = tiny_svd_components(seed=0)
    StableVideoDiffusionPipeline(**components).save_pretrained(root / "svd")
    release_folder(root / "release", components["unet"])
    convert_controlnet(root / "release", root / "converted")
    tiny_controlnet(components["unet"], seed=1).save_pretrained(root / "ours")
    return root


def weights_with(root: Path, tmp_path: Path, controlnet: str) -> Weights:
    folder = tmp_path / controlnet
    folder.mkdir()
    (folder / "svd").symlink_to(root / "svd")
    (folder / "levitor").symlink_to(root / controlnet)
    return Weights(root=folder)


@pytest.fixture
def fresh_pipeline_cache():
    load_pipeline.cache_clear()
    yield
    load_pipeline.cache_clear()


def test_converter_records_the_release_convention(weights_root: Path, tmp_path: Path) -> None:
    config = json.loads((weights_root / "converted" / "config.json").read_text())
    assert config["_class_name"] == "SVDControlNetModel"
    assert config["control_convention"] == "release"
    loaded = load_svd_controlnet(weights_root / "converted", False)
    assert loaded.config.control_convention == "release"
    # our own layout keeps what it records; old configs without the field are ours
    convert_controlnet(weights_root / "ours", tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["control_convention"] == (
        "anima"
    )
    old = tmp_path / "old"
    tiny_controlnet(tiny_svd_unet(), seed=0).save_pretrained(old)
    config = json.loads((old / "config.json").read_text())
    del config["control_convention"]
    (old / "config.json").write_text(json.dumps(config))
    assert load_svd_controlnet(old, False).config.control_convention == "anima"


@pytest.mark.usefixtures("fresh_pipeline_cache", "one_thread")
@pytest.mark.parametrize("controlnet", ["converted", "release"])
def test_a_release_model_makes_the_method_draw_the_releases_maps(
    weights_root: Path, tmp_path: Path, controlnet: str
) -> None:
    weights = weights_with(weights_root, tmp_path, controlnet)
    options = {"size": [64, 96]}
    method = LeviTorMethod(
        LeviTorMethod.parse_options(options), weights, torch.device("cpu"), torch.float32
    )
    assert method.control_convention() == "release"
    spec_data = json.loads((EXAMPLES / "astronaut_behind.json").read_text())
    spec_data["image"] = str((EXAMPLES / spec_data["image"]).resolve())
    spec_data["num_frames"] = 3
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec_data))
    spec = load_spec(spec_path)
    controls = method.prepare(spec, build_scene(spec, weights))
    assert controls.to_json()["control_convention"] == "release"
    expected = control_signal(
        controls.render.instance,
        controls.render.distance,
        spec.moved_ids,
        size=(64, 96),
        convention="release",
    )[1]
    assert torch.equal(controls.maps, expected)
    # an explicit option wins over the ControlNet's record
    explicit = LeviTorMethod(
        LeviTorMethod.parse_options({**options, "control_convention": "anima"}),
        weights,
        torch.device("cpu"),
        torch.float32,
    )
    assert explicit.control_convention() == "anima"


@pytest.mark.usefixtures("fresh_pipeline_cache")
def test_ours_and_tiny_weights_use_the_anima_convention(weights_root: Path, tmp_path) -> None:
    tiny = LeviTorMethod(
        LeviTorMethod.parse_options({}),
        Weights(builtin="tiny"),
        torch.device("cpu"),
        torch.float32,
    )
    assert tiny.control_convention() == "anima"
    load_pipeline.cache_clear()
    ours = weights_with(weights_root, tmp_path, "ours")
    method = LeviTorMethod(
        LeviTorMethod.parse_options({}), ours, torch.device("cpu"), torch.float32
    )
    assert method.control_convention() == "anima"


def test_weights_check_shows_the_convention(weights_root: Path, tmp_path: Path, capsys) -> None:
    for controlnet, convention in (("converted", "release"), ("ours", "anima")):
        weights = weights_with(weights_root, tmp_path, controlnet)
        assert main(["weights", "check", "levitor", "--weights", str(weights.root)]) == 0
        assert f"control maps: {convention} convention" in capsys.readouterr().out
    assert main(["weights", "check", "levitor", "--weights", "tiny"]) == 0
    assert "built-in 'tiny'; control maps: anima convention" in capsys.readouterr().out


# ---------------------------------------------------------------------------- training


@pytest.mark.usefixtures("one_thread")
def test_training_records_its_convention(weights_root: Path, tmp_path: Path) -> None:
    unet = tiny_svd_unet()
    fresh = initial_controlnet(unet, None, False, seed=0, convention="release")
    assert fresh.config.control_convention == "release"
    fresh.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["control_convention"] == "release"
    assert initial_controlnet(unet, None, False, seed=0).config.control_convention == "anima"
    # starting from the release's model: its maps, or a one-line error naming the option
    converted = weights_root / "converted"
    started = initial_controlnet(unet, converted, False, seed=0, convention="release")
    assert started.config.control_convention == "release"
    with pytest.raises(InputError, match="--control-convention release"):
        initial_controlnet(unet, converted, False, seed=0)


def test_dataset_draws_the_models_convention(tmp_path: Path) -> None:
    from anima.io import write_depth_png, write_png

    clip = tmp_path / "data" / "clip"
    instance, distance = moving_scene()
    for f in range(instance.shape[0]):
        write_png(clip / "frames" / f"{f:04d}.png", torch.rand(3, 48, 80))
        write_png(clip / "instance" / f"{f:04d}.png", instance[f].to(torch.uint8).numpy())
        write_depth_png(clip / "depth" / f"{f:04d}.png", distance[f])
    dataset = LevitorDataset(tmp_path / "data", 4, (48, 80), convention="release")
    sample = dataset.load(0, 1, points_seed=3)
    expected = control_signal(
        sample.instance, sample.distance, sample.moved_ids, size=(48, 80), convention="release"
    )[1]
    assert torch.equal(sample.control, expected)
    assert sample.control[:, 1].unique().tolist() == [0.0, 3.0, 7.0]
