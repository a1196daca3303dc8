"""The multi-resolution grid encoder of one Animate124 time grid, in pure torch (Animate124 §3.1).

Part of the animate124 method folder (docs/architecture.md, A method folder): `field.Field4D`
stacks one of these per time grid; no CUDA extension, any device.

Animate124 §3.1 stores each time grid as a "3D multi-scale grid (excluding hash encoding)": 16
levels of 2 features, resolutions 16 to 2048 (per-level scale 128^(1/15)), one table of at most
2^16 entries a level. A dense 2048^3 grid cannot fit 2^16 entries, so the release (the tiled grid
of stable-dreamfusion's CUDA grid encoder) indexes each level row-major and wraps the index
modulo the table size:

    index = (x + y (R + 1) + z (R + 1)^2) mod size_l    (z term only while (R + 1)^2 <= 2^16)

Levels 0-2 (17^3, 24^3, 32^3 vertices) fit and are truly dense; levels 3-15 alias; from level 9
on ((R + 1)^2 > 2^16) the z coordinate is dropped from the index altogether, so those levels
are 2D tables in (x, y) shared along z. **This module reproduces that indexing** rather than a
capped dense pyramid, because (1) the release's checkpoints then load table for table (the
``embeddings`` / ``offsets`` layout below is the release's), (2) capacity and behaviour match the
results the paper reports (a capped pyramid would stop at 40^3 per level: far coarser than the
release's finest levels in x and y), and (3) the aliasing costs nothing to compute in torch.

Geometry, as the release's kernel: points x in [-1, 1]^3 map to u = (x + 1) / 2 in [0, 1]^3;
level l has ``scale_l = 16 * 2^(l log2(128) / 15) - 1`` (computed in float32 like the kernel) and
``R_l = ceil(scale_l) + 1`` cells, vertex coordinates ``pos = u * scale_l + 0.5`` and
``R_l + 1`` vertices an axis; features are trilinear in the 8 vertices around ``pos``. Points
outside the box give zero features (as the kernel). The output concatenates the levels:
(N, levels * features), level-major.

Memory: `grid_encode` is an autograd function that saves only the input points and recomputes
the vertex indices in the backward pass, processing points in blocks of `BLOCK`; the table's
gradient is one dense tensor of the table's size. It is differentiable w.r.t. the table and the
points (the points' gradient is the analytic derivative of the trilinear interpolation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

BLOCK = 1 << 15
"""Points encoded at once inside `grid_encode` (bounds its temporaries to ~50 MB at 16 levels)."""

# (8, 3) corner offsets: corner c has bit d of c on axis d, as the release's kernel orders them.
_CORNERS = torch.tensor([[(c >> d) & 1 for d in range(3)] for c in range(8)], dtype=torch.int64)


@dataclass(frozen=True)
class GridLayout:
    """Per-level resolutions, index strides and table slices of a grid (the release's layout).

    ``strides[l]`` are the row-major multipliers of (x, y, z) at level l, with a 0 where the
    release drops an axis; ``sizes[l]`` the level's table entries (``min(2^log2, (R + 1)^3)``
    rounded up to a multiple of 8) starting at row ``offsets[l]`` of the table."""

    num_levels: int
    base_resolution: int
    desired_resolution: int
    log2_table_size: int
    scales: tuple[float, ...]
    resolutions: tuple[int, ...]
    strides: tuple[tuple[int, int, int], ...]
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]

    @property
    def total_entries(self) -> int:
        return self.offsets[-1] + self.sizes[-1]

    def dense(self, level: int) -> bool:
        """Whether every vertex of ``level`` has an entry of its own (no aliasing)."""
        return (self.resolutions[level] + 1) ** 3 <= self.sizes[level]

    def index(self, level: int, vertices: Tensor) -> Tensor:
        """Table rows (global, offset included) of integer ``vertices`` (..., 3) at ``level``."""
        stride = torch.tensor(self.strides[level], dtype=torch.int64, device=vertices.device)
        linear = (vertices.long() * stride).sum(-1)
        return linear % self.sizes[level] + self.offsets[level]


def grid_layout(
    num_levels: int = 16,
    base_resolution: int = 16,
    desired_resolution: int = 2048,
    log2_table_size: int = 16,
) -> GridLayout:
    """The release's tiled-grid layout (stable-dreamfusion ``GridEncoder(gridtype='tiled')``)."""
    if num_levels < 1 or base_resolution < 2 or desired_resolution < base_resolution:
        raise ValueError(
            f"bad grid: {num_levels} levels, resolutions {base_resolution}..{desired_resolution}"
        )
    per_level = math.log2(desired_resolution / base_resolution) / max(num_levels - 1, 1)
    log2_scale = torch.tensor(per_level, dtype=torch.float32)
    table = 1 << log2_table_size
    scales, resolutions, strides, sizes, offsets = [], [], [], [], []
    offset = 0
    for level in range(num_levels):
        # float32 as the kernel computes it (exp2f(level * S) * H - 1): the resolution, hence the
        # row stride, of the finest level depends on this rounding.
        scale = float(torch.exp2(torch.tensor(float(level)) * log2_scale) * base_resolution - 1)
        resolution = math.ceil(scale) + 1
        side = resolution + 1
        stride = []
        running = 1
        for _ in range(3):
            if running <= table:
                stride.append(running)
            else:
                stride.append(0)
            running *= side
        # the release sizes levels with float64 numpy: ceil(base * scale^level) + 1 per axis.
        side_py = math.ceil(base_resolution * (2.0 ** (per_level * level))) + 1
        size = min(table, side_py**3)
        size = int(math.ceil(size / 8) * 8)
        scales.append(scale)
        resolutions.append(resolution)
        strides.append(tuple(stride))
        sizes.append(size)
        offsets.append(offset)
        offset += size
    return GridLayout(
        num_levels,
        base_resolution,
        desired_resolution,
        log2_table_size,
        tuple(scales),
        tuple(resolutions),
        tuple(strides),
        tuple(sizes),
        tuple(offsets),
    )


class _Tables:
    """The layout as device tensors, cached per (layout, device)."""

    _cache: dict[tuple[GridLayout, torch.device], _Tables] = {}

    def __init__(self, layout: GridLayout, device: torch.device) -> None:
        self.scales = torch.tensor(layout.scales, dtype=torch.float32, device=device)
        self.strides = torch.tensor(layout.strides, dtype=torch.int64, device=device)
        self.sizes = torch.tensor(layout.sizes, dtype=torch.int64, device=device)
        self.offsets = torch.tensor(layout.offsets, dtype=torch.int64, device=device)
        # (L, 8) row offset of each corner from the cell's base vertex
        self.corner_steps = (_CORNERS.to(device)[None] * self.strides[:, None, :]).sum(-1)
        # a level that aliases has a power-of-two table, so "mod size" is "& (size - 1)"; a
        # dense level never reaches its size (mask -1: identity)
        masks = []
        for level in range(layout.num_levels):
            size = layout.sizes[level]
            if layout.dense(level):
                masks.append(-1)
            elif size & (size - 1) == 0:
                masks.append(size - 1)
            else:
                raise ValueError(f"level {level} aliases into a table of {size}: not a power of 2")
        self.masks = torch.tensor(masks, dtype=torch.int64, device=device)
        largest = max(
            sum(s * r for s, r in zip(stride, (res + 1,) * 3, strict=True))
            for stride, res in zip(layout.strides, layout.resolutions, strict=True)
        )
        # int32 rows where they fit: half the memory traffic of int64
        self.index_dtype = torch.int32 if largest + layout.total_entries < 2**31 else torch.int64

    @classmethod
    def get(cls, layout: GridLayout, device: torch.device) -> _Tables:
        key = (layout, device)
        if key not in cls._cache:
            cls._cache[key] = cls(layout, device)
        return cls._cache[key]


def _cells(points: Tensor, tables: _Tables) -> tuple[Tensor, Tensor, Tensor]:
    """Table rows (N, L, 8) of the cell corners, fractional positions (N, L, 3), in-box (N,)."""
    u = (points + 1.0) * 0.5
    inside = ((u >= 0) & (u <= 1)).all(-1)
    u = u.clamp(0.0, 1.0)
    pos = u[:, None, :] * tables.scales[None, :, None] + 0.5
    base = pos.floor()
    frac = pos - base
    linear = (base.long() * tables.strides[None]).sum(-1)  # (N, L)
    rows = (linear[:, :, None] + tables.corner_steps[None]) & tables.masks[None, :, None]
    rows = rows + tables.offsets[None, :, None]
    return rows.to(tables.index_dtype), frac, inside


def _gather(table: Tensor, rows: Tensor) -> Tensor:
    """``table[rows]`` (..., C); a row of 4 or 8 bytes is gathered as one integer (faster)."""
    row_bytes = table.shape[1] * table.element_size()
    as_int = {4: torch.int32, 8: torch.int64}.get(row_bytes)
    flat = rows.reshape(-1)
    if as_int is None or not table.is_contiguous():
        return table.index_select(0, flat).reshape(*rows.shape, table.shape[1])
    packed = table.view(as_int).reshape(-1).index_select(0, flat)
    return packed.view(table.dtype).reshape(*rows.shape, table.shape[1])


def _corner_product(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """(N, L, 2) factors per axis -> (N, L, 8) products, corner c = x_bit + 2 y_bit + 4 z_bit."""
    product = z[:, :, :, None, None] * y[:, :, None, :, None] * x[:, :, None, None, :]
    return product.reshape(*x.shape[:2], 8)


def _weights(frac: Tensor) -> Tensor:
    """Trilinear weights (N, L, 8) of the 8 corners."""
    pairs = torch.stack([1 - frac, frac], dim=-1)  # (N, L, 3, 2)
    return _corner_product(pairs[:, :, 0], pairs[:, :, 1], pairs[:, :, 2])


class _GridEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points: Tensor, table: Tensor, layout: GridLayout) -> Tensor:  # type: ignore[override]
        tables = _Tables.get(layout, points.device)
        count, channels = points.shape[0], table.shape[1]
        out = table.new_empty(count, layout.num_levels * channels)
        for start in range(0, count, BLOCK):
            block = points[start : start + BLOCK]
            rows, frac, inside = _cells(block, tables)
            weights = _weights(frac).to(table.dtype)
            values = _gather(table, rows)
            encoded = torch.einsum("nlkc,nlk->nlc", values, weights).reshape(block.shape[0], -1)
            out[start : start + BLOCK] = encoded * inside[:, None].to(table.dtype)
        ctx.save_for_backward(points, table)
        ctx.layout = layout
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        points, table = ctx.saved_tensors
        layout: GridLayout = ctx.layout
        tables = _Tables.get(layout, points.device)
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        grad_points = torch.zeros_like(points) if ctx.needs_input_grad[0] else None
        channels = table.shape[1]
        for start in range(0, points.shape[0], BLOCK):
            block = points[start : start + BLOCK]
            rows, frac, inside = _cells(block, tables)
            grad = grad_out[start : start + BLOCK].reshape(block.shape[0], layout.num_levels, -1)
            grad = grad * inside[:, None, None].to(grad.dtype)
            if grad_table is not None:
                weights = _weights(frac).to(table.dtype)
                contribution = weights[..., None] * grad[:, :, None, :]
                # int64: index_add_ with int32 rows is many times slower on the CPU
                flat = rows.reshape(-1).long()
                grad_table.index_add_(0, flat, contribution.reshape(-1, channels))
            if grad_points is not None:
                # d feature / d x_axis: the weight's derivative along the axis (-1 / +1 on its
                # two corners) times pos's derivative, scale / 2
                values = _gather(table, rows)  # (N, L, 8, C)
                pairs = torch.stack([1 - frac, frac], dim=-1)
                slope = torch.tensor([-1.0, 1.0], dtype=frac.dtype, device=frac.device)
                slope = slope.expand_as(pairs[:, :, 0])
                columns = []
                for axis in range(3):
                    factors = [pairs[:, :, d] if d != axis else slope for d in range(3)]
                    dweight = _corner_product(*factors).to(values.dtype)
                    dfeat = (values * dweight[..., None]).sum(2)
                    dfeat = dfeat * (tables.scales[None, :, None] * 0.5).to(dfeat.dtype)
                    columns.append((dfeat * grad).sum((1, 2)))
                grad_points[start : start + BLOCK] = torch.stack(columns, -1).to(points.dtype)
        return grad_points, grad_table, None


def grid_encode(points: Tensor, table: Tensor, layout: GridLayout) -> Tensor:
    """Features (N, L * C) of ``points`` (N, 3) in [-1, 1]^3 from ``table`` (entries, C)."""
    if points.ndim != 2 or points.shape[-1] != 3:
        raise ValueError(f"points must be (N, 3), got {tuple(points.shape)}")
    if table.shape[0] != layout.total_entries:
        raise ValueError(f"table has {table.shape[0]} rows, layout {layout.total_entries}")
    return _GridEncode.apply(points.to(table.dtype), table, layout)


class GridEncoder(nn.Module):
    """One multi-resolution grid: ``embeddings`` (entries, features) in the release's layout.

    Initialised uniform in [-init_std, init_std] (the release: 1e-4) from ``generator``; the
    state dict holds ``embeddings`` only (the layout follows from the arguments)."""

    def __init__(
        self,
        num_levels: int = 16,
        features_per_level: int = 2,
        base_resolution: int = 16,
        desired_resolution: int = 2048,
        log2_table_size: int = 16,
        init_std: float = 1e-4,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.layout = grid_layout(num_levels, base_resolution, desired_resolution, log2_table_size)
        self.features_per_level = features_per_level
        embeddings = torch.empty(self.layout.total_entries, features_per_level)
        if init_std > 0:
            if generator is None:
                generator = torch.Generator().manual_seed(0)
            embeddings.uniform_(-init_std, init_std, generator=generator)
        else:
            embeddings.zero_()
        self.embeddings = nn.Parameter(embeddings)

    @property
    def output_dim(self) -> int:
        return self.layout.num_levels * self.features_per_level

    def forward(self, points: Tensor) -> Tensor:
        """(N, 3) points in [-1, 1]^3 -> (N, levels * features)."""
        return grid_encode(points, self.embeddings, self.layout)
