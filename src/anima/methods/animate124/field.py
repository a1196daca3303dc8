"""Animate124's 4D grid dynamic NeRF: T time grids, Eq. 1 time blending, Eq. 2 temporal TV.

Animate124 §3.1: the time axis [0, 1] is divided evenly into T grids (64; 1 in the static stage,
§3.2), each a multi-resolution grid (`anima.methods.animate124.grid`). Features at time t are the
linear blend of the two nearest time grids (Eq. 1), t_- = floor(t (T - 1)) / (T - 1):

    F(x, t) = (t_+ - t) / dt V_{t-}(x) + (t - t_-) / dt V_{t+}(x),

computed as ``lerp(V_{t-}, V_{t+}, w)`` so that t on a grid (t = 0 in particular) reads that grid
exactly and equal neighbours blend to themselves exactly. One MLP 32 -> 64 -> 4 (ReLU) shared by
all times maps features to density and albedo as the release: density = trunc_exp(raw_0 + blob),
blob = 10 exp(-|x|^2 / (2 0.2^2)) (no gradient through the blob, as the release), albedo =
sigmoid(raw_1:4). Normals are finite differences of density (eps 1e-2), -grad density normalised.

`Field4D.from_static` builds the dynamic field of §3.3: every time grid a copy of the static
grid and the MLP copied, so that every time renders the static scene exactly. `temporal_tv` is
Eq. 2 on features at points; `temporal_tv_table` is the release's form on the tables themselves.

State dict: ``grids.{t}.embeddings`` (the release's ``encoder.{t}.embeddings``) and
``mlp.0`` / ``mlp.2`` (the release's ``sigma_net.net.0`` / ``sigma_net.net.1``).
Full size: 64 x 903,480 entries x 2 features = 115.6M grid parameters (462 MB in float32).
Times are spec times t in [0, 1] (docs/architecture.md, Conventions: frame f at f / (F - 1)).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from anima.methods.animate124.grid import GridEncoder, grid_layout
from anima.models.seeding import seeded


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15))


def trunc_exp(x: Tensor) -> Tensor:
    """exp(x) whose gradient is exp(min(x, 15)) (the release's density activation)."""
    return _TruncExp.apply(x)


def safe_normalize(v: Tensor, eps: float = 1e-20) -> Tensor:
    """v / |v| along the last axis, 0 for v = 0."""
    return v / torch.sqrt(torch.clamp((v * v).sum(-1, keepdim=True), min=eps))


def finite_difference_normals(
    density: Any, points: Tensor, t: float | Tensor, eps: float = 1e-2
) -> Tensor:
    """Unit normals (N, 3) = -normalise(central differences of ``density(points, t)``).

    Offsets are clamped to the box [-1, 1]^3 as the release; the six evaluations run as one
    batch. Differentiable through ``density``."""
    count = points.shape[0]
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps
    shifted = torch.cat([points[None] + offsets[:, None], points[None] - offsets[:, None]])
    shifted = shifted.reshape(-1, 3).clamp(-1.0, 1.0)
    if isinstance(t, Tensor) and t.ndim > 0:
        t = t.repeat(6)
    values = density(shifted, t).reshape(2, 3, count)
    gradient = (values[0] - values[1]).T * (0.5 / eps)
    return torch.nan_to_num(safe_normalize(-gradient))


def time_weights(t: Tensor, num_times: int) -> tuple[Tensor, Tensor]:
    """Lower time grid (long) and blend weight towards the next for ``t`` in [0, 1] (Eq. 1)."""
    if num_times == 1:
        return torch.zeros_like(t, dtype=torch.long), torch.zeros_like(t)
    s = t.clamp(0.0, 1.0) * (num_times - 1)
    lower = s.floor().clamp(max=num_times - 1)
    return lower.long(), s - lower


class Field4D(nn.Module):
    """The 4D grid dynamic NeRF (Animate124 §3.1, Eq. 1): (points, t) -> (density, albedo).

    ``num_times`` 1 is the static field of §3.2. Grid arguments as `GridEncoder`; tests and tiny
    runs pass small ``num_levels`` / ``log2_table_size`` / ``desired_resolution``. The tables are
    initialised uniform in [-1e-4, 1e-4] from ``generator`` (a fixed seed when None)."""

    def __init__(
        self,
        num_times: int = 64,
        *,
        num_levels: int = 16,
        features_per_level: int = 2,
        base_resolution: int = 16,
        desired_resolution: int = 2048,
        log2_table_size: int = 16,
        hidden: int = 64,
        blob_density: float = 10.0,
        blob_radius: float = 0.2,
        init_std: float = 1e-4,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_times < 1:
            raise ValueError(f"num_times must be >= 1, got {num_times}")
        self.config: dict[str, Any] = {
            "num_times": num_times,
            "num_levels": num_levels,
            "features_per_level": features_per_level,
            "base_resolution": base_resolution,
            "desired_resolution": desired_resolution,
            "log2_table_size": log2_table_size,
            "hidden": hidden,
            "blob_density": blob_density,
            "blob_radius": blob_radius,
        }
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        self.grids = nn.ModuleList(
            GridEncoder(
                num_levels,
                features_per_level,
                base_resolution,
                desired_resolution,
                log2_table_size,
                init_std=init_std,
                generator=generator,
            )
            for _ in range(num_times)
        )
        feature_dim = self.grids[0].output_dim
        mlp_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        with seeded(mlp_seed):  # nn.Linear draws from the global generator: keep it ours
            self.mlp = nn.Sequential(
                nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, 4)
            )
        self.blob_density = blob_density
        self.blob_radius = blob_radius

    @property
    def num_times(self) -> int:
        return len(self.grids)

    @property
    def feature_dim(self) -> int:
        return self.grids[0].output_dim

    @classmethod
    def from_static(cls, static: Field4D, num_times: int = 64) -> Field4D:
        """The dynamic field of Animate124 §3.3: every time grid (and the MLP) copied from the
        one-grid static field, so that every time gives the static field's output exactly."""
        if static.num_times != 1:
            raise ValueError(f"from_static needs a static field (1 time), got {static.num_times}")
        config = {**static.config, "num_times": num_times}
        source = static.grids[0].embeddings
        dynamic = cls(**config, init_std=0.0).to(device=source.device, dtype=source.dtype)
        with torch.no_grad():
            for grid in dynamic.grids:
                grid.embeddings.copy_(source)
        dynamic.mlp.load_state_dict(static.mlp.state_dict())
        return dynamic

    def features(self, points: Tensor, t: float | Tensor = 0.0) -> Tensor:
        """Eq. 1: spatio-temporal features (N, levels * features) at ``points`` (N, 3).

        ``t`` is one time (a float or a 0-d tensor) or one per point (N,)."""
        t = torch.as_tensor(t, dtype=points.dtype, device=points.device)
        lower, weight = time_weights(t, self.num_times)
        if t.ndim == 0:
            return self._blend(points, int(lower), weight)
        if t.shape != points.shape[:1]:
            raise ValueError(f"t must be a scalar or ({points.shape[0]},), got {tuple(t.shape)}")
        out = points.new_zeros(points.shape[0], self.feature_dim)
        for grid_index in torch.unique(lower).tolist():
            select = (lower == grid_index).nonzero().squeeze(1)
            blended = self._blend(points[select], grid_index, weight[select, None])
            out = out.index_copy(0, select, blended)
        return out

    def _blend(self, points: Tensor, lower: int, weight: Tensor) -> Tensor:
        base = self.grids[lower](points)
        if lower + 1 >= self.num_times or not bool((weight != 0).any()):
            return base
        return torch.lerp(base, self.grids[lower + 1](points), weight)

    def blob(self, points: Tensor) -> Tensor:
        """The release's density blob, 10 exp(-|x|^2 / (2 0.2^2)), without gradient."""
        squared = (points.detach() ** 2).sum(-1)
        return self.blob_density * torch.exp(-squared / (2 * self.blob_radius**2))

    def forward(self, points: Tensor, t: float | Tensor = 0.0) -> tuple[Tensor, Tensor]:
        """Density (N,) and albedo (N, 3) at ``points`` (N, 3) in [-1, 1]^3 and time ``t``."""
        raw = self.mlp(self.features(points, t))
        density = trunc_exp(raw[:, 0] + self.blob(points))
        return density, torch.sigmoid(raw[:, 1:])

    def density(self, points: Tensor, t: float | Tensor = 0.0) -> Tensor:
        return self(points, t)[0]

    def normals(self, points: Tensor, t: float | Tensor = 0.0, eps: float = 1e-2) -> Tensor:
        """Unit normals (N, 3) by finite differences of density (the release: eps 1e-2)."""
        return finite_difference_normals(self.density, points, t, eps)

    def temporal_tv(
        self,
        points: Tensor | None = None,
        generator: torch.Generator | None = None,
        num_points: int = 4096,
    ) -> Tensor:
        """Eq. 2 at points: the mean over points of squared differences of consecutive time
        grids' features, summed over features, divided by (T - 1) x levels (the release's
        normalisation). Points uniform in the box from ``generator`` when not given."""
        if self.num_times < 2:
            return self.grids[0].embeddings.new_zeros(())
        if points is None:
            if generator is None:
                raise ValueError("temporal_tv needs points or a generator to draw them")
            points = torch.rand(num_points, 3, generator=generator) * 2 - 1
            points = points.to(self.grids[0].embeddings)
        features = [grid(points) for grid in self.grids]
        total = sum(
            ((after - before) ** 2).sum(-1).mean()
            for before, after in zip(features[:-1], features[1:], strict=True)
        )
        levels = self.grids[0].layout.num_levels
        return total / ((self.num_times - 1) * levels)

    def temporal_tv_table(self) -> Tensor:
        """Eq. 2 on the tables as the release computes it: per consecutive pair, the mean over
        table rows of the squared difference summed over features, over (T - 1) x levels."""
        if self.num_times < 2:
            return self.grids[0].embeddings.new_zeros(())
        total = sum(
            ((self.grids[i + 1].embeddings - self.grids[i].embeddings) ** 2).sum(-1).mean()
            for i in range(self.num_times - 1)
        )
        return total / ((self.num_times - 1) * self.grids[0].layout.num_levels)

    def parameter_groups(self, lr: float, grid_lr: float | None = None) -> list[dict[str, Any]]:
        """Optimiser groups: the grids (at ``grid_lr``, default ``lr``) and the MLP."""
        return [
            {"params": list(self.grids.parameters()), "lr": lr if grid_lr is None else grid_lr},
            {"params": list(self.mlp.parameters()), "lr": lr},
        ]


def parameter_count(num_times: int = 64, **grid: Any) -> int:
    """Parameters of a `Field4D` of these arguments, without allocating it."""
    keys = ("num_levels", "base_resolution", "desired_resolution", "log2_table_size")
    layout = grid_layout(**{k: grid[k] for k in keys if k in grid})
    features = grid.get("features_per_level", 2)
    hidden = grid.get("hidden", 64)
    dim = layout.num_levels * features
    mlp = dim * hidden + hidden + hidden * 4 + 4
    return num_times * layout.total_entries * features + mlp


__all__ = [
    "Field4D",
    "finite_difference_normals",
    "parameter_count",
    "safe_normalize",
    "time_weights",
    "trunc_exp",
]
