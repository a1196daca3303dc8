"""Animate124's 4D grid field, renderer, cameras and temporal balanced sampling (§3.1-3.3).

Every field here is small (few levels, small tables, few times): nothing allocates the
release's 64 full-size grids."""

from __future__ import annotations

import math

import pytest
import torch

from anima.methods.animate124.cameras import (
    make_cameras,
    orbit_cameras,
    pose_deltas,
    reference_camera,
    sample_camera,
    sample_clip_times,
    sample_dynamic_camera,
)
from anima.methods.animate124.field import Field4D, parameter_count
from anima.methods.animate124.grid import GridEncoder, grid_encode, grid_layout
from anima.methods.animate124.volume import (
    FAST_STEPS,
    OccupancyGrid,
    RenderOptions,
    Shading,
    camera_rays,
    render,
    sample_shading,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"num_levels": 4, "base_resolution": 4, "desired_resolution": 32, "log2_table_size": 10}


def small_field(num_times: int, seed: int = 0, spread: float = 1.0) -> Field4D:
    """A small field whose time grids differ (tables uniform in [-spread, spread])."""
    field = Field4D(
        num_times, **SMALL, init_std=spread, generator=torch.Generator().manual_seed(seed)
    )
    return field


def points(count: int = 500, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 3, generator=torch.Generator().manual_seed(seed)) * 1.9 - 0.95


# --- time blending (Eq. 1), temporal TV (Eq. 2), from_static ----------------------------------


def test_t0_reads_grid_zero_exactly_and_grid_times_read_their_grid():
    field = small_field(5)
    x = points()
    assert torch.equal(field.features(x, 0.0), field.grids[0](x))
    assert torch.equal(field.features(x, 0.5), field.grids[2](x))
    assert torch.equal(field.features(x, 1.0), field.grids[4](x))
    # and the grids do differ, so the equalities above say something
    assert not torch.allclose(field.grids[0](x), field.grids[1](x))


def test_midpoint_of_two_grids_is_their_mean_and_blending_is_linear():
    field = small_field(3)
    x = points()
    g0, g1 = field.grids[0](x), field.grids[1](x)
    torch.testing.assert_close(field.features(x, 0.25), (g0 + g1) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(field.features(x, 0.1), 0.8 * g0 + 0.2 * g1, rtol=0, atol=1e-6)
    # per-point times give what each scalar time gives
    times = torch.tensor([0.0, 0.1, 0.25, 0.6, 1.0]).repeat(100)
    per_point = field.features(x, times)
    for value in (0.0, 0.1, 0.25, 0.6, 1.0):
        select = times == value
        torch.testing.assert_close(per_point[select], field.features(x[select], value))


def test_temporal_tv_is_zero_for_equal_grids_and_positive_otherwise():
    field = small_field(4)
    generator = torch.Generator().manual_seed(3)
    assert field.temporal_tv(generator=generator) > 0
    assert field.temporal_tv_table() > 0
    with torch.no_grad():
        for grid in field.grids[1:]:
            grid.embeddings.copy_(field.grids[0].embeddings)
    assert field.temporal_tv(generator=generator) == 0
    assert field.temporal_tv(points()) == 0
    assert field.temporal_tv_table() == 0


def test_temporal_tv_gradient_pulls_neighbouring_grids_together():
    field = small_field(3)
    loss = field.temporal_tv(points())
    loss.backward()
    g0, g1 = field.grids[0].embeddings, field.grids[1].embeddings
    moved = g0.grad.abs().sum(-1) > 0
    assert moved.any()
    # a gradient step moves grid 0 towards grid 1 where it moves it at all
    before = (g0 - g1)[moved].abs().sum()
    after = (g0 - 1e-3 * g0.grad - g1)[moved].abs().sum()
    assert after < before


def test_from_static_gives_every_time_the_static_output_exactly():
    static = small_field(1, seed=4, spread=0.5)
    dynamic = Field4D.from_static(static, num_times=6)
    assert dynamic.num_times == 6
    x = points()
    density, albedo = static(x)
    for t in (0.0, 0.13, 0.5, 0.77, 1.0):
        d, a = dynamic(x, t)
        assert torch.equal(d, density) and torch.equal(a, albedo)
    # copies, not shared storage: training one time grid leaves the static field alone
    with torch.no_grad():
        dynamic.grids[3].embeddings.add_(1.0)
    assert torch.equal(static(x)[0], density)
    with pytest.raises(ValueError):
        Field4D.from_static(dynamic, 4)


def test_density_has_the_release_blob_and_albedo_is_in_range():
    field = small_field(1, spread=0.0)
    with torch.no_grad():
        for p in field.mlp.parameters():
            p.zero_()
    x = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.9, 0.9, 0.9]])
    density, albedo = field(x)
    expected = torch.exp(10 * torch.exp(-(x**2).sum(-1) / (2 * 0.2**2)))
    torch.testing.assert_close(density, expected)
    assert torch.equal(albedo, torch.full_like(albedo, 0.5))


def test_normals_are_minus_the_density_gradient_direction():
    field = small_field(1, spread=0.0)  # density = exp(blob): normals point away from the origin
    with torch.no_grad():
        for p in field.mlp.parameters():
            p.zero_()
    x = torch.tensor([[0.3, 0.0, 0.0], [0.0, -0.25, 0.1], [0.1, 0.2, 0.2]])
    expected = x / x.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(field.normals(x), expected, atol=1e-2, rtol=0)


# --- the grid ---------------------------------------------------------------------------------


def test_release_layout_levels_and_size():
    layout = grid_layout()
    assert layout.resolutions[0] == 16 and layout.resolutions[-1] == 2048
    assert [layout.dense(level) for level in range(16)] == [True] * 3 + [False] * 13
    assert all(size == 2**16 for size in layout.sizes[3:])
    assert layout.strides[8][2] > 0 and all(s[2] == 0 for s in layout.strides[9:])
    assert parameter_count(64) == 64 * layout.total_entries * 2 + (32 * 64 + 64 + 64 * 4 + 4)


def test_release_indexing_dense_levels_injective_higher_levels_in_table():
    layout = grid_layout()
    for level in range(3):
        side = layout.resolutions[level] + 1
        axis = torch.arange(side)
        vertices = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        rows = layout.index(level, vertices)
        assert rows.unique().numel() == side**3
        assert rows.min() >= layout.offsets[level]
        assert rows.max() < layout.offsets[level] + layout.sizes[level]
    generator = torch.Generator().manual_seed(0)
    for level in range(3, 16):
        side = layout.resolutions[level] + 1
        vertices = torch.randint(0, side, (20000, 3), generator=generator)
        rows = layout.index(level, vertices)
        assert rows.min() >= layout.offsets[level]
        assert rows.max() < layout.offsets[level] + layout.sizes[level]
        # row-major: neighbours along x are consecutive rows (mod the table)
        step = layout.index(level, vertices + torch.tensor([1, 0, 0])) - rows
        assert ((step == 1) | (step == 1 - layout.sizes[level])).all()


def test_encoder_reads_the_rows_the_layout_names():
    layout = grid_layout(**SMALL)
    table = torch.randn(layout.total_entries, 2, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    for level in range(layout.num_levels):
        scale = layout.scales[level]
        vertices = torch.randint(1, layout.resolutions[level], (50, 3), generator=generator)
        # the point whose position is exactly the vertex: u * scale + 0.5 = v
        x = ((vertices.double() - 0.5) / scale) * 2 - 1
        features = grid_encode(x.float(), table, layout)[:, 2 * level : 2 * level + 2]
        torch.testing.assert_close(
            features, table[layout.index(level, vertices)], atol=1e-4, rtol=0
        )


def test_grid_gradients_reach_table_and_points():
    layout = grid_layout(3, 4, 16, 8)
    table = torch.randn(layout.total_entries, 2, dtype=torch.float64, requires_grad=True)
    x = (points(12).double()).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: grid_encode(a, b, layout), (x, table))
    encoder = GridEncoder(**SMALL)
    encoder(points()).square().sum().backward()
    assert encoder.embeddings.grad.abs().sum() > 0


def test_interpolation_is_continuous_across_cells():
    encoder = GridEncoder(**SMALL, init_std=1.0)
    x = points(2000)
    direction = torch.nn.functional.normalize(torch.randn(2000, 3), dim=-1)
    near = encoder(x + 1e-5 * direction)
    # the finest level has 32 cells an axis, features in [-1, 1]: |df| <= 2 * 32/2 * |dx| * 3
    assert (near - encoder(x)).abs().max() < 1e-3
    # and straddling cell boundaries of every level, where a wrong corner index would jump
    layout = encoder.layout
    for level in range(layout.num_levels):
        boundary = (
            (torch.arange(1, layout.resolutions[level]) - 0.5) / layout.scales[level]
        ) * 2 - 1
        boundary = boundary[(boundary > -0.99) & (boundary < 0.99)]
        base = torch.zeros(boundary.numel(), 3) + 0.123
        for axis in range(3):
            before, after = base.clone(), base.clone()
            before[:, axis], after[:, axis] = boundary - 1e-5, boundary + 1e-5
            assert (encoder(before) - encoder(after)).abs().max() < 1e-3


def test_points_outside_the_box_have_zero_features():
    encoder = GridEncoder(**SMALL, init_std=1.0)
    outside = torch.tensor([[1.01, 0.0, 0.0], [0.0, -1.2, 0.5]])
    assert torch.equal(encoder(outside), torch.zeros(2, encoder.output_dim))


# --- the renderer -----------------------------------------------------------------------------

ALBEDO = torch.tensor([0.2, 0.4, 0.6])


class SphereField(torch.nn.Module):
    """Density 1000 inside the sphere of radius 0.5 about the origin, 0 outside."""

    def forward(
        self, x: torch.Tensor, t: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        density = torch.where(x.norm(dim=-1) < 0.5, 1000.0, 0.0)
        return density, ALBEDO.expand(x.shape[0], 3)

    def normals(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=-1)


def sphere_truth(size: tuple[int, int], fov: float = 40.0):
    """Pixel distances from the image centre, the disc radius in pixels and the planar depth of
    the sphere along each pixel's ray (nan where it misses), for the reference camera."""
    height, width = size
    camera = reference_camera()
    origins, directions = camera_rays(camera.poses[0], fov, size)
    focal = height / (2 * math.tan(math.radians(fov) / 2))
    radius_px = focal * 0.5 / math.sqrt(1.8**2 - 0.5**2)
    rows = torch.arange(height) + 0.5 - height / 2
    cols = torch.arange(width) + 0.5 - width / 2
    rho = (rows[:, None] ** 2 + cols[None] ** 2).sqrt()
    # |o + t d|^2 = r^2, smallest root; t is planar depth (directions have depth component 1)
    a = (directions**2).sum(-1)
    b = 2 * (origins * directions).sum(-1)
    c = (origins**2).sum(-1) - 0.25
    hit = (-b - (b**2 - 4 * a * c).sqrt()) / (2 * a)
    return rho, radius_px, hit.reshape(size)


@pytest.mark.parametrize("size", [(32, 32), (17, 23)])
def test_sphere_renders_a_disc_of_the_right_radius_and_depth(size):
    camera = reference_camera()
    options = RenderOptions(num_steps=FAST_STEPS)
    out = render(SphereField(), camera.poses[0], camera.fov, size, options=options)
    assert out.rgb.shape == (3, *size) and out.depth.shape == size and out.opacity.shape == size
    rho, radius_px, hit = sphere_truth(size)
    inside, outside = rho < radius_px - 1, rho > radius_px + 1
    assert inside.sum() > 20 and outside.sum() > 20
    assert (out.opacity[inside] > 0.99).all()
    assert (out.opacity[outside] < 0.01).all()
    assert (out.depth[inside] - hit[inside]).abs().max() <= options.step + 1e-4
    assert (out.depth[inside] >= hit[inside] - 1e-4).all()  # the first sample is past the surface
    torch.testing.assert_close(out.rgb[:, inside], ALBEDO[:, None].expand(3, int(inside.sum())))
    torch.testing.assert_close(out.rgb[:, outside], torch.ones(3, int(outside.sum())))


def test_sphere_shading_and_normals():
    camera = reference_camera()
    options = RenderOptions(num_steps=FAST_STEPS)
    # light from the camera: the disc centre faces it (n.l = 1), so lambertian = albedo there
    shading = Shading("lambertian", ambient=0.1, light=(0.0, 0.0, 1.0))
    out = render(
        SphereField(), camera.poses[0], camera.fov, (16, 16), shading=shading, options=options
    )
    centre = out.rgb[:, 7:9, 7:9].mean((1, 2))
    torch.testing.assert_close(centre, ALBEDO, atol=0.02, rtol=0)
    assert out.normal is not None and out.normal[2, 7:9, 7:9].min() > 0.95
    assert out.orientation.max() < 1e-6  # every visible normal faces the camera
    plain = Shading("textureless", ambient=0.3, light=(0.0, 0.0, -1.0))  # lit from behind
    dark = render(
        SphereField(), camera.poses[0], camera.fov, (16, 16), shading=plain, options=options
    )
    torch.testing.assert_close(dark.rgb[:, 7:9, 7:9], torch.full((3, 2, 2), 0.3), atol=0.02, rtol=0)
    # a random background shows outside the disc
    red = render(
        SphereField(),
        camera.poses[0],
        camera.fov,
        (16, 16),
        background=(1.0, 0.0, 0.0),
        options=options,
    )
    assert torch.equal(red.rgb[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_sample_shading_draws_from_its_generator():
    origin = torch.tensor([0.0, 0.0, 1.8])
    one = sample_shading(torch.Generator().manual_seed(5), origin, textureless_rate=0.5)
    two = sample_shading(torch.Generator().manual_seed(5), origin, textureless_rate=0.5)
    assert one == two and 0.1 <= one.ambient <= 1.0
    assert math.isclose(sum(v * v for v in one.light), 1.0, rel_tol=1e-5)
    modes = {
        sample_shading(torch.Generator().manual_seed(s), origin, textureless_rate=0.5).mode
        for s in range(20)
    }
    assert modes == {"lambertian", "textureless"}


def test_gradients_reach_the_grids_and_the_mlp_through_rgb():
    field = small_field(3, spread=0.1)
    camera = make_cameras(70.0, 30.0)
    shading = Shading("lambertian", ambient=0.3, light=(0.0, 0.6, 0.8))
    out = render(
        field,
        camera.poses[0],
        camera.fov,
        (8, 8),
        t=0.3,
        shading=shading,
        options=RenderOptions(num_steps=64),
    )
    out.rgb.sum().backward()
    for index in (0, 1):  # t = 0.3 blends grids 0 and 1
        assert field.grids[index].embeddings.grad.abs().sum() > 0
    assert field.grids[2].embeddings.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in field.mlp.parameters())


def test_chunked_equals_unchunked():
    field = small_field(2, spread=0.1)
    camera = make_cameras(80.0, -40.0)

    def image(**options) -> list[torch.Tensor]:
        out = render(
            field,
            camera.poses[0],
            camera.fov,
            (9, 11),
            t=0.6,
            options=RenderOptions(num_steps=64, **options),
        )
        return [out.rgb, out.depth, out.opacity]

    for a, b in zip(image(chunk=100000), image(chunk=7), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # segments of any length march the same samples (termination off: it is checked per segment)
    long, short = (
        image(segment=1000, transmittance_threshold=0.0),
        image(segment=5, transmittance_threshold=0.0),
    )
    for a, b in zip(long, short, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_early_termination_prunes_samples_without_changing_the_image():
    camera = reference_camera()
    kept = RenderOptions(num_steps=FAST_STEPS, transmittance_threshold=1e-4)
    never = RenderOptions(num_steps=FAST_STEPS, transmittance_threshold=0.0)
    a = render(SphereField(), camera.poses[0], camera.fov, (24, 24), options=kept)
    b = render(SphereField(), camera.poses[0], camera.fov, (24, 24), options=never)
    assert a.samples < 0.8 * b.samples
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-3, rtol=0)
    torch.testing.assert_close(a.depth, b.depth, atol=1e-3, rtol=0)


def test_perturbed_sampling_needs_and_follows_a_generator():
    camera = reference_camera()
    options = RenderOptions(num_steps=FAST_STEPS, perturb=True)
    with pytest.raises(ValueError):
        render(SphereField(), camera.poses[0], camera.fov, (8, 8), options=options)
    a = render(
        SphereField(),
        camera.poses[0],
        camera.fov,
        (8, 8),
        options=options,
        generator=torch.Generator().manual_seed(0),
    )
    b = render(
        SphereField(),
        camera.poses[0],
        camera.fov,
        (8, 8),
        options=options,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(a.depth, b.depth)


def test_occupancy_grid_skips_empty_space_and_keeps_the_image():
    grid = OccupancyGrid(resolution=16, num_slices=2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):  # one jittered sample a cell an update: cells the surface cuts need a few
        grid.update(SphereField(), generator)
    fraction = grid.occupancy.float().mean()
    assert 0.02 < fraction < 0.2  # the sphere fills 6.5 % of the box
    assert (
        grid.occupied(torch.zeros(1, 3), 0.0).all()
        and not grid.occupied(torch.full((1, 3), 0.9), 1.0).any()
    )
    camera = reference_camera()
    options = RenderOptions(num_steps=FAST_STEPS)
    a = render(
        SphereField(), camera.poses[0], camera.fov, (24, 24), options=options, occupancy=grid
    )
    b = render(SphereField(), camera.poses[0], camera.fov, (24, 24), options=options)
    assert a.samples < 0.5 * b.samples
    torch.testing.assert_close(a.opacity, b.opacity, atol=1e-3, rtol=0)


# --- cameras ----------------------------------------------------------------------------------


def test_reference_camera_looks_at_the_origin_from_plus_z():
    camera = reference_camera()
    pose = camera.poses[0]
    torch.testing.assert_close(pose[:3, 3], torch.tensor([0.0, 0.0, 1.8]))
    origins, directions = camera_rays(pose, camera.fov, (1, 1))  # the one ray through the centre
    torch.testing.assert_close(directions[0], torch.tensor([0.0, 0.0, -1.0]))
    # the release's frame: image right is world -x, image up world +y
    torch.testing.assert_close(pose[:3, 0], torch.tensor([-1.0, 0.0, 0.0]))
    torch.testing.assert_close(pose[:3, 1], torch.tensor([0.0, 1.0, 0.0]))


def test_cameras_sit_on_the_sphere_and_look_at_the_origin():
    cameras = make_cameras(torch.tensor([30.0, 90.0, 120.0]), torch.tensor([-150.0, 45.0, 170.0]))
    for pose, polar, azimuth in zip(cameras.poses, cameras.polar, cameras.azimuth, strict=True):
        theta, phi = math.radians(polar), math.radians(azimuth)
        centre = 1.8 * torch.tensor(
            [math.sin(theta) * math.sin(phi), math.cos(theta), math.sin(theta) * math.cos(phi)]
        )
        torch.testing.assert_close(pose[:3, 3], centre)
        _, directions = camera_rays(pose, 40.0, (1, 1))
        torch.testing.assert_close(
            torch.nn.functional.normalize(directions[0], dim=0), -centre / 1.8
        )
        rotation = pose[:3, :3]
        torch.testing.assert_close(rotation.T @ rotation, torch.eye(3), atol=1e-6, rtol=0)
        assert rotation[1, 0].abs() < 1e-6  # right stays horizontal


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_sampled_cameras_respect_the_ranges(rate):
    generator = torch.Generator().manual_seed(0)
    state = torch.get_rng_state()
    draws = [sample_camera(generator, upper_hemisphere_rate=rate) for _ in range(400)]
    assert torch.equal(torch.get_rng_state(), state)  # never the global RNG
    polar = torch.cat([c.polar for c in draws])
    azimuth = torch.cat([c.azimuth for c in draws])
    assert (azimuth >= -180).all() and (azimuth < 180).all()
    side = (polar >= 45) & (polar <= 135)
    upper = polar <= 90
    assert (side | upper).all()
    hemisphere_share = (polar < 45).float().mean()
    if rate == 0.0:
        assert side.all()
    elif rate == 1.0:
        assert upper.all() and azimuth.min() < -150 and azimuth.max() > 150
    else:
        assert 0.1 < hemisphere_share < 0.5  # the hemisphere branch also lands above 45 degrees
    assert all(torch.allclose(c.radius, torch.tensor([1.8])) and c.fov == 40.0 for c in draws)


def test_orbit_and_pose_deltas():
    orbit = orbit_cameras()
    assert len(orbit) == 10 and torch.equal(orbit.polar, torch.full((10,), 90.0))
    steps = torch.diff(torch.remainder(orbit.azimuth, 360.0))
    torch.testing.assert_close(steps, torch.full((9,), 36.0))
    d_polar, d_azimuth, d_radius = pose_deltas(make_cameras(60.0, 200.0))
    assert float(d_polar) == -30.0 and float(d_azimuth) == -160.0 and float(d_radius) == 0.0


def test_dynamic_cameras_move_linearly_within_the_limits():
    for seed in range(50):
        cameras = sample_dynamic_camera(torch.Generator().manual_seed(seed), num_frames=16)
        assert len(cameras) == 16
        d_polar = cameras.polar - cameras.polar[0]
        d_azimuth = torch.remainder(cameras.azimuth - cameras.azimuth[0] + 180, 360) - 180
        assert d_polar.abs().max() <= 45 and d_azimuth.abs().max() <= 90
        # frame k at k / 16 of the change
        torch.testing.assert_close(d_polar, d_polar[1] * torch.arange(16.0), atol=1e-3, rtol=0)
    a = sample_dynamic_camera(torch.Generator().manual_seed(1))
    b = sample_dynamic_camera(torch.Generator().manual_seed(1))
    assert torch.equal(a.poses, b.poses)


# --- temporal balanced sampling ---------------------------------------------------------------


def expected_endpoint_rates(
    zero_rate: float, mirror_rate: float, frames: int = 16, precision: int = 256
):
    """P(first time 0) and P(last time 1) of the release's sampler, by enumeration."""
    units = torch.arange(frames, precision + 1)
    span = (units // frames) * frames
    natural = (1.0 / (precision - span + 1).double()).mean().item()
    q = zero_rate + (1 - zero_rate) * natural
    return (1 - mirror_rate) * q, mirror_rate * q


@pytest.mark.parametrize(("zero_rate", "mirror_rate"), [(0.2, 0.5), (0.6, 0.3)])
def test_balanced_sampling_endpoint_frequencies(zero_rate, mirror_rate):
    clips = sample_clip_times(
        torch.Generator().manual_seed(0), 100000, zero_rate=zero_rate, mirror_rate=mirror_rate
    )
    start, end = expected_endpoint_rates(zero_rate, mirror_rate)
    assert abs(clips.starts_at_zero.float().mean().item() - start) < 0.02
    assert abs(clips.ends_at_one.float().mean().item() - end) < 0.02
    times = clips.times
    assert times.shape == (100000, 16) and times.min() >= 0 and times.max() <= 1
    steps = torch.diff(times, dim=1)
    assert (steps > 0).all() and torch.allclose(steps, steps[:, :1].expand_as(steps))
    spans = steps[:, 0] * 256 * 16
    assert spans.min() >= 16 - 1e-3 and spans.max() <= 256 + 1e-3
