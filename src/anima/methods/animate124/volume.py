"""Volume rendering of an Animate124 field in the box [-1, 1]^3 (Animate124 §3.1, as the release).

Rays come from a pinhole camera (`camera_rays`: vertical fov in degrees, camera-to-world pose in
the convention of `anima.methods.animate124.cameras`, pixel centres at +0.5, directions scaled
so that their camera-space depth is 1, as the release). The ray parameter t is therefore planar
depth, and the ``depth`` output is planar depth (docs/architecture.md, Conventions), 0 where
nothing is hit.

Marching (`render_rays`): near / far from the ray-box intersection (near >= ``min_near``); samples
at a fixed step dt = 2 sqrt(3) / ``num_steps`` in t (the release: 1024 steps, so at most 1024
samples a ray; ``FAST_STEPS`` = 128 is the coarse CPU setting), at the middle of each step or
stratified (uniform within each step) when ``perturb``. Alpha is 1 - exp(-density * dt |d|) (the
metric length of the step). Early termination: rays are marched ``segment`` steps at a time and
a ray whose transmittance has fallen below ``transmittance_threshold`` (the release: 1e-4) is
not marched further. Only samples inside the box (and, with an `OccupancyGrid`, in occupied
cells) are evaluated; their densities are scattered back into the segment, so everything
evaluated stays differentiable and what is skipped would have had weight below the threshold
(or density below the grid's). Rays are processed ``chunk`` at a time: memory is bounded by
``chunk`` x ``segment`` samples plus what autograd keeps of the evaluated ones.

Shading (`Shading`, the release's): ``albedo``; ``lambertian`` albedo (a + (1 - a) max(0, n.l));
``textureless`` the same with a white albedo; ``normal`` (n + 1) / 2; with the light direction
l = normalise(ray origin + N(0, I)) and ambient a ~ U(0.1, 1) from `sample_shading`. Normals are
the field's (`Field4D.normals`: finite differences of density) and are computed only when the
shading (or ``RenderOptions.normals``) needs them; the ``normal`` output is sum(w n) in world
space and ``orientation`` is sum(stop_grad(w) max(0, n.d)^2) (the release's orientation loss per
ray). The background is a solid colour: white for the reference view, a random one
(`random_background`) for score distillation.

The field is anything with ``field(points (N, 3), t) -> (density (N,), albedo (N, 3))`` and, for
shaded renders, ``field.normals(points, t) -> (N, 3)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from anima.methods.animate124.field import safe_normalize

RELEASE_STEPS = 1024
FAST_STEPS = 128

ShadingMode = Literal["albedo", "lambertian", "textureless", "normal"]


@dataclass(frozen=True)
class RenderOptions:
    """How rays are marched (see the module docstring)."""

    num_steps: int = RELEASE_STEPS
    perturb: bool = False
    transmittance_threshold: float = 1e-4
    chunk: int = 4096
    segment: int = 32
    min_near: float = 0.01
    bound: float = 1.0
    normals: bool = False

    @property
    def step(self) -> float:
        return 2.0 * math.sqrt(3.0) * self.bound / self.num_steps


@dataclass(frozen=True)
class Shading:
    """Shading mode, ambient ratio a and the world direction towards the light (unit)."""

    mode: ShadingMode = "albedo"
    ambient: float = 1.0
    light: tuple[float, float, float] | None = None

    @property
    def needs_normals(self) -> bool:
        return self.mode != "albedo"


def sample_shading(
    generator: torch.Generator,
    camera_origin: Tensor,
    *,
    textureless_rate: float = 0.0,
    min_ambient: float = 0.1,
) -> Shading:
    """The release's random shading: lambertian (textureless with ``textureless_rate``),
    ambient ~ U(min_ambient, 1), light = normalise(camera origin + N(0, I))."""
    draws = torch.rand(2, generator=generator)
    light = safe_normalize(
        camera_origin.detach().cpu().float() + torch.randn(3, generator=generator)
    )
    mode: ShadingMode = "textureless" if float(draws[0]) < textureless_rate else "lambertian"
    ambient = min_ambient + (1.0 - min_ambient) * float(draws[1])
    return Shading(mode, ambient, tuple(float(v) for v in light))


def random_background(generator: torch.Generator) -> Tensor:
    """A random solid background colour (3,) in [0, 1] (for score distillation)."""
    return torch.rand(3, generator=generator)


@dataclass
class RenderOutput:
    """An image: rgb (3, H, W) over the background, planar depth (H, W) (0 where nothing is
    hit), opacity (H, W), normal (3, H, W) and orientation (H, W) where normals were computed,
    and the number of field samples evaluated."""

    rgb: Tensor
    depth: Tensor
    opacity: Tensor
    normal: Tensor | None
    orientation: Tensor | None
    samples: int


def camera_rays(pose: Tensor, fov: float, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Origins and directions (H * W, 3) of a pinhole camera, rows top to bottom.

    ``fov`` is vertical (degrees; focal = H / (2 tan(fov / 2)) for both axes), the principal
    point the image centre, pixel (i, j) is sampled at its centre (i + 0.5, j + 0.5). Directions
    are R (x, y, -1) with x right, y up: their component along the viewing axis is 1."""
    height, width = size
    pose = pose.to(torch.float32) if not pose.is_floating_point() else pose
    focal = height / (2.0 * math.tan(math.radians(fov) / 2.0))
    rows = torch.arange(height, dtype=pose.dtype, device=pose.device) + 0.5
    cols = torch.arange(width, dtype=pose.dtype, device=pose.device) + 0.5
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    camera = torch.stack(
        [(x - width / 2.0) / focal, -(y - height / 2.0) / focal, -torch.ones_like(x)], -1
    ).reshape(-1, 3)
    directions = camera @ pose[:3, :3].T
    origins = pose[:3, 3].expand_as(directions)
    return origins, directions


def ray_box(
    origins: Tensor, directions: Tensor, bound: float = 1.0, min_near: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Entry and exit t (N,) of rays in the box [-bound, bound]^3 (slab method); far <= near
    for a ray that misses it."""
    safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    low = (-bound - origins) / safe
    high = (bound - origins) / safe
    near = torch.minimum(low, high).amax(-1).clamp(min=min_near)
    far = torch.maximum(low, high).amin(-1)
    return near, far


class OccupancyGrid:
    """Which cells of the box hold density, per time slice (the release: 128^3 x 16 slices).

    ``update`` evaluates the field at a jittered point of each cell (or of a random
    ``fraction`` of them) at a random time of each slice and keeps max(old x decay, new); a cell
    is occupied when its density exceeds min(mean density, ``density_threshold``) (the
    release's rule). It pays once the field has become a compact object (after the
    blob-dominated start, when most of the box is empty) and the grid's refresh, slices x
    resolution^3 field evaluations, is amortised over many renders: on a GPU at the release's
    size; on a CPU only at a coarse resolution (32-64) with partial updates."""

    def __init__(
        self,
        resolution: int = 128,
        num_slices: int = 16,
        *,
        bound: float = 1.0,
        decay: float = 0.95,
        density_threshold: float = 10.0,
        device: torch.device | str | None = None,
    ) -> None:
        self.resolution = resolution
        self.num_slices = num_slices
        self.bound = bound
        self.decay = decay
        self.density_threshold = density_threshold
        cells = resolution**3
        self.density = torch.zeros(num_slices, cells, device=device)
        self.occupancy = torch.ones(num_slices, cells, dtype=torch.bool, device=device)

    def _cell_centres(self, cells: Tensor) -> Tensor:
        r = self.resolution
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], -1)
        return ((ijk.to(torch.float32) + 0.5) / r * 2.0 - 1.0) * self.bound

    def _cells(self, points: Tensor) -> Tensor:
        r = self.resolution
        ijk = ((points / self.bound + 1.0) * 0.5 * r).floor().long().clamp(0, r - 1)
        return (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2]

    def slice_of(self, t: float | Tensor) -> int:
        return min(int(float(t) * self.num_slices), self.num_slices - 1)

    @torch.no_grad()
    def update(
        self,
        field: Any,
        generator: torch.Generator,
        *,
        fraction: float = 1.0,
        chunk: int = 1 << 16,
    ) -> None:
        """Refresh every slice from ``field`` (all cells, or a random ``fraction``)."""
        device = self.density.device
        total = self.resolution**3
        half_cell = self.bound / self.resolution
        for index in range(self.num_slices):
            if fraction >= 1.0:
                cells = torch.arange(total)
            else:
                cells = torch.randperm(total, generator=generator)[: max(1, int(total * fraction))]
            for start in range(0, cells.numel(), chunk):
                block = cells[start : start + chunk]
                jitter = (torch.rand(block.numel(), 3, generator=generator) * 2 - 1) * half_cell
                points = (self._cell_centres(block) + jitter).clamp(-self.bound, self.bound)
                times = (index + torch.rand(block.numel(), generator=generator)) / self.num_slices
                density, _ = field(points.to(device), times.to(device))
                block = block.to(device)
                old = self.density[index, block]
                self.density[index, block] = torch.maximum(old * self.decay, density.float())
        threshold = min(float(self.density.clamp(min=0).mean()), self.density_threshold)
        self.occupancy = self.density > threshold

    def occupied(self, points: Tensor, t: float | Tensor) -> Tensor:
        """(N,) bool: whether each point's cell is occupied in the slice of time ``t``."""
        slice_ = self.occupancy[self.slice_of(t)]
        return slice_[self._cells(points).to(slice_.device)].to(points.device)


def _shade(
    field: Any,
    points: Tensor,
    t: float | Tensor,
    albedo: Tensor,
    shading: Shading,
    want_normals: bool,
) -> tuple[Tensor, Tensor | None]:
    if not (shading.needs_normals or want_normals):
        return albedo, None
    normals = field.normals(points, t)
    if shading.mode == "albedo":
        return albedo, normals
    if shading.mode == "normal":
        return (normals + 1.0) * 0.5, normals
    if shading.light is None:
        raise ValueError(f"{shading.mode} shading needs a light direction")
    light = torch.tensor(shading.light, dtype=normals.dtype, device=normals.device)
    a = shading.ambient
    lambert = a + (1.0 - a) * (normals @ light).clamp(min=0.0)
    if shading.mode == "textureless":
        return lambert[:, None].expand(-1, 3), normals
    return albedo * lambert[:, None], normals


def render_rays(
    field: Any,
    origins: Tensor,
    directions: Tensor,
    t: float | Tensor = 0.0,
    *,
    shading: Shading = Shading(),
    background: Tensor | float | tuple[float, float, float] = 1.0,
    options: RenderOptions = RenderOptions(),
    generator: torch.Generator | None = None,
    occupancy: OccupancyGrid | None = None,
) -> dict[str, Any]:
    """Volume-render rays (N, 3) at time ``t``: per-ray ``rgb`` (N, 3), ``depth``, ``opacity``
    (N,), ``normal`` (N, 3) and ``orientation`` (N,) (None without normals), ``samples``."""
    if options.perturb and generator is None:
        raise ValueError("perturbed sampling needs a generator")
    want_normals = options.normals or shading.needs_normals
    background = torch.as_tensor(background, dtype=origins.dtype, device=origins.device)
    outputs: dict[str, list[Tensor]] = {"rgb": [], "depth": [], "opacity": []}
    if want_normals:
        outputs |= {"normal": [], "orientation": []}
    samples = 0
    for start in range(0, origins.shape[0], options.chunk):
        chunk, count = _march(
            field,
            origins[start : start + options.chunk],
            directions[start : start + options.chunk],
            t,
            shading,
            want_normals,
            options,
            generator,
            occupancy,
        )
        samples += count
        for key in outputs:
            outputs[key].append(chunk[key])
    result: dict[str, Any] = {key: torch.cat(value) for key, value in outputs.items()}
    result["rgb"] = result["rgb"] + (1.0 - result["opacity"])[:, None] * background
    result.setdefault("normal", None)
    result.setdefault("orientation", None)
    result["samples"] = samples
    return result


def _march(
    field: Any,
    origins: Tensor,
    directions: Tensor,
    t: float | Tensor,
    shading: Shading,
    want_normals: bool,
    options: RenderOptions,
    generator: torch.Generator | None,
    occupancy: OccupancyGrid | None,
) -> tuple[dict[str, Tensor], int]:
    count = origins.shape[0]
    dtype, device = origins.dtype, origins.device
    step = options.step
    near, far = ray_box(origins, directions, options.bound, options.min_near)
    steps = torch.ceil((far - near) / step).clamp(0, options.num_steps).long()
    lengths = directions.norm(dim=-1)
    unit = directions / lengths[:, None]

    rgb = origins.new_zeros(count, 3)
    depth = origins.new_zeros(count)
    opacity = origins.new_zeros(count)
    optical = origins.new_zeros(count)  # optical depth marched so far: transmittance exp(-it)
    normal = origins.new_zeros(count, 3) if want_normals else None
    orientation = origins.new_zeros(count) if want_normals else None
    threshold = options.transmittance_threshold
    log_threshold = -math.log(threshold) if threshold > 0 else math.inf

    active = (steps > 0).nonzero().squeeze(1)
    most = int(steps.max()) if count else 0
    evaluated = 0
    for first in range(0, most, options.segment):
        if active.numel() == 0:
            break
        width = min(options.segment, most - first)
        index = first + torch.arange(width, device=device)
        if options.perturb:
            offset = torch.rand(active.numel(), width, generator=generator).to(device, dtype)
        else:
            offset = torch.full((active.numel(), width), 0.5, dtype=dtype, device=device)
        ts = near[active, None] + (index[None] + offset) * step
        valid = (index[None] < steps[active, None]) & (ts < far[active, None])
        points = origins[active, None] + directions[active, None] * ts[..., None]
        if occupancy is not None:
            inside = points[valid]
            valid = valid.clone()
            valid[valid.clone()] = occupancy.occupied(inside, t)
        flat = points[valid].clamp(-options.bound, options.bound)
        evaluated += flat.shape[0]
        density = ts.new_zeros(ts.shape)
        colour = ts.new_zeros(*ts.shape, 3)
        if flat.shape[0]:
            sigma, albedo = field(flat, t)
            shaded, normals = _shade(field, flat, t, albedo, shading, want_normals)
            density = density.masked_scatter(valid, sigma.to(dtype))
            colour = colour.masked_scatter(valid[..., None], shaded.to(dtype))
        tau = density * (step * lengths[active, None])
        cumulative = torch.cumsum(tau, 1)
        transmittance = torch.exp(-(optical[active, None] + cumulative - tau))
        weights = transmittance * (1.0 - torch.exp(-tau))
        rgb = rgb.index_add(0, active, (weights[..., None] * colour).sum(1))
        depth = depth.index_add(0, active, (weights * ts).sum(1))
        opacity = opacity.index_add(0, active, weights.sum(1))
        if want_normals and flat.shape[0]:
            normal_samples = ts.new_zeros(*ts.shape, 3).masked_scatter(valid[..., None], normals)
            normal = normal.index_add(0, active, (weights[..., None] * normal_samples).sum(1))
            facing = (normal_samples * unit[active, None]).sum(-1).clamp(min=0.0) ** 2
            orientation = orientation.index_add(0, active, (weights.detach() * facing).sum(1))
        optical = optical.index_add(0, active, cumulative[:, -1])
        alive = (optical[active].detach() < log_threshold) & (first + width < steps[active])
        active = active[alive]
    out = {"rgb": rgb, "depth": depth, "opacity": opacity}
    if want_normals:
        out |= {"normal": normal, "orientation": orientation}
    return out, evaluated


def render(
    field: Any,
    pose: Tensor,
    fov: float,
    size: tuple[int, int],
    t: float | Tensor = 0.0,
    *,
    shading: Shading = Shading(),
    background: Tensor | float | tuple[float, float, float] = 1.0,
    options: RenderOptions = RenderOptions(),
    generator: torch.Generator | None = None,
    occupancy: OccupancyGrid | None = None,
) -> RenderOutput:
    """Render one image (H, W) = ``size`` of ``field`` at time ``t`` from camera-to-world
    ``pose`` (4, 4) with vertical field of view ``fov`` (degrees)."""
    height, width = size
    device = next(iter(_parameters(field)), pose).device
    origins, directions = camera_rays(pose.to(device), fov, size)
    out = render_rays(
        field,
        origins,
        directions,
        t,
        shading=shading,
        background=background,
        options=options,
        generator=generator,
        occupancy=occupancy,
    )

    def image(value: Tensor | None) -> Tensor | None:
        if value is None:
            return None
        if value.ndim == 1:
            return value.reshape(height, width)
        return value.reshape(height, width, -1).permute(2, 0, 1)

    return RenderOutput(
        rgb=image(out["rgb"]),
        depth=image(out["depth"]),
        opacity=image(out["opacity"]),
        normal=image(out["normal"]),
        orientation=image(out["orientation"]),
        samples=out["samples"],
    )


def _parameters(field: Any) -> list[Tensor]:
    parameters = getattr(field, "parameters", None)
    return list(parameters()) if callable(parameters) else []
