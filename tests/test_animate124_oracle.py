"""The oracle of Animate124's reconstruction check: a toy 4D scene rendered exactly from any
camera at any time, and a pixel-space prior whose epsilon is exact for it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anima.methods.animate124.cameras import make_cameras, reference_camera
from anima.methods.animate124.guidance import StableDiffusionSDS, StableDiffusionSDSOptions
from anima.methods.animate124.guidance.sds import DEFAULT_SCHEDULE, alphas_cumprod_from_config
from anima.methods.animate124.oracle import (
    MovingObject,
    OracleEpsilon,
    PixelEncoder,
    ToyScene4D,
    toy_scene_4d,
)
from anima.metrics import psnr
from anima.world.objects import Sphere
from anima.world.textures import SolidTexture

pytestmark = pytest.mark.usefixtures("one_thread")


def still_sphere(radius: float = 0.5) -> ToyScene4D:
    texture = SolidTexture(np.random.default_rng(0), radius)
    sphere = Sphere(1, np.zeros((1, 3)), texture, radius=radius)
    zero = np.zeros(3)
    return ToyScene4D([MovingObject(sphere, zero, zero, zero)])


def test_a_sphere_at_the_centre_is_a_disc_of_the_right_size() -> None:
    camera = reference_camera()
    size = (64, 64)
    view = still_sphere().render(camera.poses[0], camera.fov, size, 0.0)
    focal = size[0] / (2 * math.tan(math.radians(camera.fov) / 2))
    distance = float(camera.radius[0])
    expected = focal * 0.5 / math.sqrt(distance**2 - 0.5**2)  # silhouette radius in pixels
    ys, xs = torch.nonzero(view.opacity > 0, as_tuple=True)
    measured = math.sqrt(len(xs) / math.pi)
    assert abs(measured - expected) < 1.0, (measured, expected)
    assert abs(float(xs.float().mean()) - 31.5) < 0.5 and abs(float(ys.float().mean()) - 31.5) < 0.5
    assert abs(float(view.depth[32, 32]) - (distance - 0.5)) < 0.01
    assert torch.equal(view.rgb[:, 0, 0], torch.ones(3))  # white background


def test_the_scene_moves_with_time_and_every_view_sees_it() -> None:
    scene = toy_scene_4d(seed=3)
    camera = make_cameras(60.0, 40.0)
    early = scene.render(camera.poses[0], camera.fov, (48, 48), 0.0)
    later = scene.render(camera.poses[0], camera.fov, (48, 48), 0.3)
    again = scene.render(camera.poses[0], camera.fov, (48, 48), 1.0)
    assert (early.rgb - later.rgb).abs().amax() > 0.2
    torch.testing.assert_close(early.rgb, again.rgb, atol=1e-6, rtol=0)  # periodic paths
    for polar, azimuth in ((90, 0), (90, 180), (30, 90), (135, -90)):
        cam = make_cameras(float(polar), float(azimuth))
        view = scene.render(cam.poses[0], cam.fov, (48, 48), 0.5)
        assert 0.02 < float(view.opacity.mean()) < 0.6  # in the frame, not filling it


def test_the_oracle_epsilon_is_exact() -> None:
    alphas = alphas_cumprod_from_config(DEFAULT_SCHEDULE)
    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 3, 8, 8, generator=generator) * 2 - 1
    eps = torch.randn(2, 3, 8, 8, generator=generator)
    t = torch.tensor([100, 700])
    a = alphas[t].reshape(-1, 1, 1, 1)
    noisy = (a.sqrt() * truth + (1 - a).sqrt() * eps).float()
    torch.testing.assert_close(OracleEpsilon(alphas)(noisy, t, truth), eps, atol=1e-4, rtol=1e-4)


def test_score_distillation_through_the_oracle_recovers_the_view() -> None:
    """An image optimised by SDS alone, the oracle as the prior, becomes the true view."""
    scene = toy_scene_4d(seed=1)
    camera = make_cameras(70.0, 30.0)
    truth = scene.render(camera.poses[0], camera.fov, (32, 32), 0.25).rgb[None]
    alphas = alphas_cumprod_from_config(DEFAULT_SCHEDULE)
    options = StableDiffusionSDSOptions(size=32, guidance_scale=1.0)
    guidance = StableDiffusionSDS(OracleEpsilon(alphas), PixelEncoder(), alphas, options)
    logits = torch.zeros(1, 3, 32, 32, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.05)
    generator = torch.Generator().manual_seed(0)
    start = float(psnr(torch.sigmoid(logits).detach(), truth))
    for _ in range(300):
        optimiser.zero_grad()
        image = torch.sigmoid(logits)
        loss = guidance(image, PixelEncoder()(truth), None, generator=generator)["sds_sd15"]
        loss.backward()
        optimiser.step()
    end = float(psnr(torch.sigmoid(logits).detach(), truth))
    assert end > 30.0 and end > start + 20.0, (start, end)
