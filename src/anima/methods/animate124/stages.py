"""Animate124's three optimisation stages as one `Trainer` on the shared training loop.

(Animate124 §3.2 static, Eq. 3-5; §3.3 coarse dynamic, Eq. 6-8; §3.4 semantic refinement,
Eq. 9-10; §4.1 and README, "Animate124" for the settings; docs/architecture.md, "The training
loop".) `Animate124Trainer(stage, field, reference, priors, options)` trains ``field`` (a
`Field4D`: one time grid in the static stage, `Field4D.from_static`'s T grids after) for one
stage; `anima.methods.animate124.train` chains the stages in a run folder.

**Priors are injected.** ``priors`` maps a name to a callable returning named losses; which
names a stage reads (`STAGE_PRIORS`) and how each is called::

    "sd15"     prior(images (N, 3, H, W), views, generator=g)           static, Eq. 3 (2D)
    "zero123"  prior(images (N, 3, H, W), views, generator=g)           Eq. 3 (3D), Eq. 7
    "video"    prior(video (1, F, 3, H, W), views, generator=g)         Eq. 6 (views: F)
    "tile"     prior(frames (K, 3, H, W), views, generator=g,
                     control=frozen renders (K, 3, H, W))              Eq. 9

``views`` (`Views`) says where and when each render was made (cameras, times, background,
shading), so an oracle prior can render its own truth there; ``g`` is the step's noise
generator. A missing name skips that term; an empty mapping trains on the reference view and
the regularisers alone. `anima.methods.animate124.train.build_priors` makes the real ones
from the guidance classes (their weights: ``lambda_3d`` and friends, applied inside them).

**Each step** (micro-batch ``i``; every draw from ``step_generator(seed, i, process, s)``, one
stream ``s`` a purpose, so a resumed stage continues exactly):

- *static*: a reference step when ``i < reference_warmup`` or ``i % reference_every == 0``
  (the release: all of the first 100, then every 4th) renders the reference view (white
  background, albedo) and optimises the reconstruction loss (Eq. 4) alone; any other step
  renders one camera of `sample_camera` (random solid background, the release's random
  lambertian / textureless shading) scored by SD1.5 and Zero-1-to-3 (Eq. 3). As the release,
  the two kinds of step alternate rather than being summed every step (Eq. 5).
- *dynamic*: a clip of ``num_frames`` (16) times from `sample_clip_times` (temporal balanced
  sampling) rendered along a `sample_dynamic_camera` (probability ``dynamic_camera_rate``,
  0.9) or a fixed sampled camera, scored by the video prior (Eq. 6), plus temporal TV
  (Eq. 2, weight 0.1) and, when the clip starts at t = 0, the reconstruction loss at t = 0
  and Zero-1-to-3 on frame 0 (Eq. 7-8).
- *refine*: the dynamic step plus the Tile prior on ``tile_frames`` (2) of the frames,
  conditioned on a frozen copy of the dynamic stage's field rendered at the same cameras,
  times, background and shading (Eq. 9-10).

**Regularisers** (the release: entropy 1e-3, orientation 1e-2, normal smoothness 0.5), on every
scored render (not the reference view): entropy of the opacity (stable-dreamfusion's binary
entropy, log2), and, where the shading computed normals, the orientation loss (the renderer's
per-ray ``orientation``: weight x max(0, n.d)^2, mean over pixels) and 2D normal smoothness
(mean squared difference of neighbouring pixels of the rendered normal image).

Optimiser (set by `train.train_stage`): Adam (AdamW with no weight decay), lr 1e-3, betas
(0.9, 0.99); the grids at ``grid_lr_scale`` x lr (the paper 1; the release 10) through
`Trainer.lr_scale`; constant, or with ``lr_min`` a cosine decay over each stage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from anima.methods.animate124.cameras import (
    FOV,
    RADIUS,
    Cameras,
    make_cameras,
    reference_camera,
    sample_camera,
    sample_clip_times,
    sample_dynamic_camera,
)
from anima.methods.animate124.field import Field4D
from anima.methods.animate124.volume import (
    RELEASE_STEPS,
    RenderOptions,
    RenderOutput,
    Shading,
    random_background,
    render,
    sample_shading,
)
from anima.training import Trainer, step_generator

Stage = Literal["static", "dynamic", "refine"]
STAGES: tuple[Stage, ...] = ("static", "dynamic", "refine")
#: The stage each stage starts from (its field is initialised from the predecessor's).
PREDECESSOR: dict[str, Stage | None] = {"static": None, "dynamic": "static", "refine": "dynamic"}
#: The priors (keys of the ``priors`` mapping) each stage reads.
STAGE_PRIORS: dict[str, tuple[str, ...]] = {
    "static": ("sd15", "zero123"),
    "dynamic": ("video", "zero123"),
    "refine": ("video", "zero123", "tile"),
}
#: Streams of the per-step generators: the step's plan, the priors' noise, the renderer's
#: stratified samples, temporal TV's points.
PLAN_STREAM, NOISE_STREAM, RENDER_STREAM, TV_STREAM = 0, 1, 2, 3


class StageOptions(BaseModel):
    """Every setting of the three stages (Animate124 §4.1; README, "Animate124"). Defaults
    are the paper's where paper and release differ; the release's value is named in the
    description."""

    model_config = ConfigDict(extra="forbid")

    static_steps: int = Field(5000, ge=1, description="Static stage iterations (§4.1: 5000).")
    dynamic_steps: int = Field(10000, ge=1, description="Coarse dynamic iterations (10000).")
    refine_steps: int = Field(5000, ge=1, description="Semantic refinement iterations (5000).")
    render_size: int = Field(
        128, ge=8, le=1024, description="Side of the scored renders (§4.1: 128; 64 is 4x faster)."
    )
    reference_size: int | None = Field(
        None,
        ge=8,
        le=1024,
        description="Side of the reference view (default the render size; the release's 192).",
    )
    march_steps: int = Field(
        RELEASE_STEPS, ge=8, le=4096, description="Ray-marching steps across the box (1024)."
    )
    perturb: bool = Field(True, description="Stratified samples along rays while training.")
    # -- optimiser
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (§4.1: 1e-3).")
    grid_lr_scale: float = Field(
        1.0, gt=0, description="The grids' lr over the MLP's: paper 1, the release's 10."
    )
    lr_min: float | None = Field(
        None,
        gt=0,
        description="Cosine decay of each stage's lr down to this at its last step (None: "
        "constant, the paper's).",
    )
    adam_betas: tuple[float, float] = Field((0.9, 0.99), description="Adam betas (the release's).")
    adam_epsilon: float = Field(1e-15, gt=0, description="Adam epsilon (stable-dreamfusion's).")
    # -- reference view (Eq. 4)
    lambda_rgb: float = Field(5.0, ge=0, description="Masked RGB loss weight (5).")
    lambda_mask: float = Field(0.5, ge=0, description="Mask loss weight (0.5).")
    lambda_depth: float = Field(
        0.001, ge=0, description="Depth (1 - Pearson) / 2 weight: paper 0.001, release 0.01."
    )
    reference_every: int = Field(4, ge=1, description="Static: a reference step every N.")
    reference_warmup: int = Field(100, ge=0, description="Static: the first N steps all are.")
    # -- regularisers
    lambda_entropy: float = Field(1e-3, ge=0, description="Opacity entropy weight (1e-3).")
    lambda_orientation: float = Field(1e-2, ge=0, description="Orientation loss weight (1e-2).")
    lambda_normal_smooth: float = Field(0.5, ge=0, description="2D normal smoothness (0.5).")
    lambda_tv: float = Field(0.1, ge=0, description="Temporal TV weight (Eq. 2; §4.1: 0.1).")
    tv_points: int = Field(4096, ge=1, description="Random points of the temporal TV.")
    # -- priors (weights, CFG, t ranges; sizes None: the release's, see `prior_size`)
    lambda_sd: float = Field(1.0, ge=0, description="SD1.5 SDS weight.")
    sd_guidance_scale: float = Field(100.0, ge=1, description="SD1.5 CFG (100).")
    sd_t_range: tuple[int, int] = Field((200, 600), description="SD1.5 timesteps (200-600).")
    sd_size: int | None = Field(None, ge=8, description="SD1.5 input side (512).")
    lambda_3d: float = Field(40.0, ge=0, description="Zero-1-to-3 weight lambda_3D (40).")
    zero123_angle_weighting: bool = Field(True, description="Zero123 weight x angle / 180.")
    zero123_guidance_scale: float = Field(5.0, ge=1, description="Zero-1-to-3 CFG (5).")
    zero123_t_range: tuple[int, int] = Field((200, 600), description="Zero123 timesteps.")
    zero123_size: int | None = Field(None, ge=8, description="Zero-1-to-3 input side (256).")
    lambda_video: float = Field(1.0, ge=0, description="Video SDS weight.")
    video_guidance_scale: float = Field(100.0, ge=1, description="ModelScope CFG (100).")
    video_t_range: tuple[int, int] = Field((20, 980), description="ModelScope timesteps.")
    video_size: int | None = Field(None, ge=8, description="ModelScope input side (256).")
    dynamic_grad_clip: float | None = Field(
        1.0, gt=0, description="SDS gradient value clip of the dynamic stages (1)."
    )
    lambda_tile: float = Field(1.0, ge=0, description="ControlNet-Tile weight lambda_R (1).")
    tile_guidance_scale: float = Field(7.5, ge=1, description="ControlNet-Tile CFG (7.5).")
    tile_t_range: tuple[int, int] = Field((200, 800), description="ControlNet-Tile timesteps.")
    tile_size: int | None = Field(None, ge=8, description="ControlNet-Tile input side (1024).")
    tile_frames: int = Field(2, ge=1, description="Frames of a clip the Tile prior scores (2).")
    tile_target: Literal["x0", "eps"] = Field(
        "x0", description="Tile gradient: from the predicted x0 (release) or Eq. 9's eps."
    )
    tile_prompt: str = Field(
        "{token}, {prompt}",
        description="The Tile prior's prompt; {token}: the textual-inversion token (if any).",
    )
    # -- cameras, shading, clips
    camera_radius: float = Field(RADIUS, gt=0, description="Camera distance (1.8).")
    camera_fov: float = Field(FOV, gt=1, lt=179, description="Vertical field of view (40).")
    polar_range: tuple[float, float] = Field((45.0, 135.0), description="Polar range (deg).")
    upper_hemisphere_rate: float = Field(0.5, ge=0, le=1, description="Upper-hemisphere draws.")
    shading: Literal["random", "albedo"] = Field(
        "random",
        description="Scored renders: the release's random lambertian/textureless, or albedo "
        "(no normals: about 4x cheaper).",
    )
    textureless_rate: float = Field(0.2, ge=0, le=1, description="Textureless renders (0.2).")
    num_frames: int = Field(16, ge=1, le=64, description="Frames of a scored clip (16).")
    dynamic_camera_rate: float = Field(0.9, ge=0, le=1, description="Moving-camera clips.")
    max_polar_change: float = Field(45.0, ge=0, description="A moving camera's polar change.")
    max_azimuth_change: float = Field(90.0, ge=0, description="Its azimuth change (deg).")
    zero_rate: float = Field(0.2, ge=0, le=1, description="Clips starting at t = 0 (0.2).")
    mirror_rate: float = Field(0.5, ge=0, le=1, description="Clips mirrored in time (0.5).")
    clip_precision: int = Field(256, ge=1, description="Time units of the clip sampler (256).")
    # -- the field
    num_times: int = Field(64, ge=2, le=256, description="Time grids of the dynamic field (64).")
    grid_levels: int = Field(16, ge=1, le=16, description="Grid levels (16).")
    grid_base_resolution: int = Field(16, ge=2, description="Coarsest grid resolution (16).")
    grid_max_resolution: int = Field(2048, ge=2, description="Finest grid resolution (2048).")
    grid_log2_table: int = Field(16, ge=4, le=24, description="log2 entries a level (16).")
    mlp_hidden: int = Field(64, ge=1, description="MLP width (64).")
    # -- the run
    checkpoint_every: int = Field(500, ge=1, description="Steps between checkpoints.")
    log_every: int = Field(10, ge=1, description="Steps between log.jsonl lines.")

    @model_validator(mode="after")
    def _ranges(self) -> StageOptions:
        for name in ("sd_t_range", "zero123_t_range", "video_t_range", "tile_t_range"):
            low, high = getattr(self, name)
            if not 0 <= low <= high <= 999:
                raise ValueError(f"{name}: need 0 <= low <= high <= 999, got {(low, high)}")
        for name in ("sd_size", "zero123_size", "video_size", "tile_size"):
            value = getattr(self, name)
            if value is not None and value % 8:
                raise ValueError(f"{name}: must be a multiple of 8 (the VAEs), got {value}")
        if self.grid_max_resolution < self.grid_base_resolution:
            raise ValueError("grid_max_resolution must be at least grid_base_resolution")
        if self.tile_frames > self.num_frames:
            raise ValueError("tile_frames must not exceed num_frames")
        return self

    def steps(self, stage: Stage) -> int:
        """Iterations of ``stage``."""
        return int(getattr(self, f"{stage}_steps"))

    def field_arguments(self) -> dict[str, Any]:
        """`Field4D`'s grid and MLP arguments."""
        return {
            "num_levels": self.grid_levels,
            "base_resolution": self.grid_base_resolution,
            "desired_resolution": self.grid_max_resolution,
            "log2_table_size": self.grid_log2_table,
            "hidden": self.mlp_hidden,
        }

    def render_options(self, perturb: bool | None = None, normals: bool = False) -> RenderOptions:
        return RenderOptions(
            num_steps=self.march_steps,
            perturb=self.perturb if perturb is None else perturb,
            normals=normals,
        )


# ------------------------------------------------------------------------------------------
# What a step renders and what priors are told
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The reference view as data (`anima.methods.animate124.preprocess`): ``image`` (3, S, S)
    in [0, 1] composited on white, ``mask`` (S, S) in [0, 1], ``depth`` (S, S) the depth
    backend's distances (compared by Pearson correlation inside the mask, so any scale)."""

    image: Tensor
    mask: Tensor
    depth: Tensor

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])


@dataclass(frozen=True)
class Views:
    """Where and when N renders were made: ``cameras`` (N), ``times`` (N,), the solid
    ``background`` (3,) and the ``shading`` they share."""

    cameras: Cameras
    times: Tensor
    background: Tensor
    shading: Shading

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def polar(self) -> Tensor:
        return self.cameras.polar

    @property
    def azimuth(self) -> Tensor:
        return self.cameras.azimuth

    @property
    def radius(self) -> Tensor:
        return self.cameras.radius

    def select(self, index: Tensor | list[int] | slice) -> Views:
        """The views at ``index`` (a slice or indices)."""
        if isinstance(index, slice):
            picked = list(range(len(self)))[index]
        else:
            picked = [int(i) for i in index]
        rows = torch.tensor(picked, dtype=torch.long)
        cams = self.cameras
        cameras = Cameras(
            cams.poses[rows], cams.polar[rows], cams.azimuth[rows], cams.radius[rows], cams.fov
        )
        return Views(cameras, self.times[rows], self.background, self.shading)


class Prior(Protocol):
    """A score-distillation prior as a stage calls it (module docstring): named losses for
    renders seen from ``views``; the Tile prior also reads ``control``."""

    def __call__(
        self,
        images: Tensor,
        views: Views,
        *,
        generator: torch.Generator,
        control: Tensor | None = None,
    ) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class StepPlan:
    """What step ``index`` does, drawn before any rendering (`Animate124Trainer.batch`):
    ``views`` to render and score (None: none), whether the reference view is reconstructed
    (at t = 0), whether the clip starts at 0 (Zero-1-to-3 on its frame 0) and which frames
    the Tile prior scores."""

    index: int
    views: Views | None
    reconstruct: bool
    starts_at_zero: bool = False
    tile_indices: Tensor | None = None


# ------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------


def pearson(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of two 1-D tensors (0 when either is constant)."""
    x = x - x.mean()
    y = y - y.mean()
    return (x * y).sum() / (x.norm() * y.norm()).clamp(min=eps)


def reconstruction_losses(
    out: RenderOutput, reference: Reference, options: StageOptions
) -> dict[str, Tensor]:
    """Animate124 Eq. 4 on a render of the reference view: masked RGB (MSE of mask x image,
    ``lambda_rgb``), mask (MSE of opacity against the mask, ``lambda_mask``) and depth
    ``lambda_depth`` (1 - Pearson(rendered, reference depth inside the mask)) / 2."""
    mask = reference.mask.to(out.rgb)
    image = reference.image.to(out.rgb)
    losses = {
        "rec_rgb": options.lambda_rgb * F.mse_loss(out.rgb * mask, image * mask),
        "rec_mask": options.lambda_mask * F.mse_loss(out.opacity, mask),
    }
    inside = mask > 0.5
    if options.lambda_depth > 0 and int(inside.sum()) > 1:
        r = pearson(out.depth[inside], reference.depth.to(out.depth)[inside])
        losses["rec_depth"] = options.lambda_depth * (1.0 - r) / 2.0
    return losses


def opacity_entropy(opacity: Tensor) -> Tensor:
    """Mean binary entropy (bits) of the opacity, stable-dreamfusion's ``lambda_entropy``."""
    a = opacity.clamp(1e-5, 1.0 - 1e-5)
    return (-a * torch.log2(a) - (1 - a) * torch.log2(1 - a)).mean()


def normal_smoothness(normal: Tensor) -> Tensor:
    """Mean squared difference of vertically and horizontally neighbouring pixels of a
    rendered normal image (3, H, W) (stable-dreamfusion's 2D normal smoothness)."""
    return (normal[:, 1:] - normal[:, :-1]).square().mean() + (
        normal[:, :, 1:] - normal[:, :, :-1]
    ).square().mean()


# ------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------


class Animate124Trainer(Trainer):
    """One stage of Animate124 for `anima.training.train_loop` (module docstring).

    ``field`` is trained (``num_times`` 1 for ``stage`` "static"); ``frozen`` is the dynamic
    stage's field, kept fixed, whose renders condition the Tile prior (``stage`` "refine");
    ``reference`` the reference view as data; ``priors`` the injected priors (`Prior`)."""

    def __init__(
        self,
        stage: Stage,
        field: Field4D,
        reference: Reference,
        priors: Mapping[str, Prior],
        options: StageOptions,
        *,
        seed: int = 0,
        frozen: Field4D | None = None,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")
        if (stage == "static") != (field.num_times == 1):
            count = "one time grid" if stage == "static" else "several time grids"
            raise ValueError(f"the {stage} stage needs a field of {count}")
        if stage == "refine" and "tile" in priors and frozen is None:
            raise ValueError("the refine stage's Tile prior needs the frozen dynamic field")
        self.stage = stage
        self.field = field
        self.reference = reference
        self.priors = dict(priors)
        self.options = options
        self.seed = seed
        self.frozen = frozen
        if frozen is not None:
            frozen.requires_grad_(False)
            frozen.eval()
        self.reference_camera = reference_camera(options.camera_radius, options.camera_fov)

    def modules(self) -> dict[str, nn.Module]:
        return {"field": self.field}

    def lr_scale(self, name: str) -> float:
        """The grids at ``grid_lr_scale`` x the learning rate, the MLP at 1 x."""
        return self.options.grid_lr_scale if name.startswith("field.grids.") else 1.0

    # -- the plan of a step -----------------------------------------------------------------

    def is_reference_step(self, index: int) -> bool:
        """Static stage: whether step ``index`` reconstructs the reference view."""
        options = self.options
        return index < options.reference_warmup or index % options.reference_every == 0

    def _shading(self, generator: torch.Generator, origin: Tensor) -> Shading:
        if self.options.shading == "albedo":
            return Shading("albedo")
        return sample_shading(generator, origin, textureless_rate=self.options.textureless_rate)

    def _camera_kwargs(self) -> dict[str, Any]:
        options = self.options
        return {
            "radius": options.camera_radius,
            "fov": options.camera_fov,
            "polar_range": tuple(options.polar_range),
            "upper_hemisphere_rate": options.upper_hemisphere_rate,
        }

    def batch(self, index: int, process: int) -> StepPlan:
        """Step ``index``'s plan, drawn from its ``PLAN_STREAM`` generator."""
        options = self.options
        generator = step_generator(self.seed, index, process, PLAN_STREAM)
        if self.stage == "static":
            if self.is_reference_step(index):
                return StepPlan(index, None, True)
            cameras = sample_camera(generator, **self._camera_kwargs())
            background = random_background(generator)
            shading = self._shading(generator, cameras.poses[0, :3, 3])
            views = Views(cameras, torch.zeros(1), background, shading)
            return StepPlan(index, views, False)
        frames = options.num_frames
        clip = sample_clip_times(
            generator,
            1,
            frames,
            precision=options.clip_precision,
            zero_rate=options.zero_rate,
            mirror_rate=options.mirror_rate,
        )
        if float(torch.rand((), generator=generator)) < options.dynamic_camera_rate:
            cameras = sample_dynamic_camera(
                generator,
                frames,
                max_polar_change=options.max_polar_change,
                max_azimuth_change=options.max_azimuth_change,
                **self._camera_kwargs(),
            )
        else:
            one = sample_camera(generator, **self._camera_kwargs())
            cameras = make_cameras(
                one.polar.expand(frames),
                one.azimuth.expand(frames),
                one.radius.expand(frames),
                one.fov,
            )
        background = random_background(generator)
        shading = self._shading(generator, cameras.poses[0, :3, 3])
        tile = None
        if self.stage == "refine":
            tile = torch.randperm(frames, generator=generator)[: options.tile_frames].sort().values
        starts = bool(clip.starts_at_zero[0])
        views = Views(cameras, clip.times[0], background, shading)
        return StepPlan(index, views, starts, starts, tile)

    # -- rendering --------------------------------------------------------------------------

    def render_views(
        self, field: Field4D, views: Views, generator: torch.Generator, perturb: bool | None = None
    ) -> list[RenderOutput]:
        """Each view rendered at ``render_size`` with its time, background and shading."""
        side = self.options.render_size
        render_options = self.options.render_options(perturb)
        return [
            render(
                field,
                views.cameras.poses[k],
                views.cameras.fov,
                (side, side),
                views.times[k],
                shading=views.shading,
                background=views.background,
                options=render_options,
                generator=generator,
            )
            for k in range(len(views))
        ]

    def render_reference(
        self, field: Field4D, generator: torch.Generator | None = None, t: float = 0.0
    ) -> RenderOutput:
        """The reference view at the reference's size, time ``t``, albedo on white."""
        return render(
            field,
            self.reference_camera.poses[0],
            self.reference_camera.fov,
            self.reference.size,
            t,
            shading=Shading("albedo"),
            background=1.0,
            options=self.options.render_options(None if generator is not None else False),
            generator=generator,
        )

    # -- the loss ---------------------------------------------------------------------------

    def loss(
        self, modules: Mapping[str, nn.Module], batch: StepPlan, index: int, process: int
    ) -> dict[str, Tensor]:
        field = modules["field"]
        assert isinstance(field, Field4D)
        options = self.options
        noise = step_generator(self.seed, index, process, NOISE_STREAM)
        marching = step_generator(self.seed, index, process, RENDER_STREAM)
        losses: dict[str, Tensor] = {}
        if batch.reconstruct:
            out = self.render_reference(field, marching)
            losses |= reconstruction_losses(out, self.reference, options)
        views = batch.views
        if views is not None:
            renders = self.render_views(field, views, marching)
            images = torch.stack([out.rgb for out in renders])
            losses |= self._regularisers(renders)
            if self.stage == "static":
                for name in ("sd15", "zero123"):
                    if name in self.priors:
                        losses |= self.priors[name](images, views, generator=noise)
            else:
                if "video" in self.priors:
                    losses |= self.priors["video"](images[None], views, generator=noise)
                if batch.starts_at_zero and "zero123" in self.priors:
                    losses |= self.priors["zero123"](images[:1], views.select([0]), generator=noise)
                if options.lambda_tv > 0:
                    tv = step_generator(self.seed, index, process, TV_STREAM)
                    losses["tv"] = options.lambda_tv * field.temporal_tv(
                        generator=tv, num_points=options.tv_points
                    )
                if batch.tile_indices is not None and "tile" in self.priors:
                    losses |= self._tile(images, views, batch.tile_indices, noise, marching)
        if not losses:  # nothing to optimise this step: a zero the loop can differentiate
            losses["loss"] = sum(p.sum() * 0.0 for p in field.mlp.parameters())
        return losses

    def _regularisers(self, renders: list[RenderOutput]) -> dict[str, Tensor]:
        options = self.options
        out: dict[str, Tensor] = {}
        if options.lambda_entropy > 0:
            opacity = torch.stack([r.opacity for r in renders])
            out["entropy"] = options.lambda_entropy * opacity_entropy(opacity)
        with_normals = [r for r in renders if r.normal is not None]
        if with_normals and options.lambda_orientation > 0:
            orientation = torch.stack([r.orientation for r in with_normals])  # type: ignore[misc]
            out["orientation"] = options.lambda_orientation * orientation.mean()
        if with_normals and options.lambda_normal_smooth > 0:
            smooth = torch.stack([normal_smoothness(r.normal) for r in with_normals])  # type: ignore[arg-type]
            out["normal_smooth"] = options.lambda_normal_smooth * smooth.mean()
        return out

    def _tile(
        self,
        images: Tensor,
        views: Views,
        indices: Tensor,
        noise: torch.Generator,
        marching: torch.Generator,
    ) -> dict[str, Tensor]:
        """The Tile prior on ``indices`` of the clip, conditioned on the frozen field's renders
        of the same views (Eq. 9)."""
        assert self.frozen is not None
        picked = views.select(indices)
        with torch.no_grad():
            control = torch.stack(
                [out.rgb for out in self.render_views(self.frozen, picked, marching, False)]
            )
        return self.priors["tile"](images[indices], picked, generator=noise, control=control)


def eta(seconds_per_step: float, remaining: int) -> str:
    """``H:MM:SS`` for ``remaining`` steps at ``seconds_per_step``."""
    total = int(math.ceil(max(0.0, seconds_per_step) * max(0, remaining)))
    return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


__all__ = [
    "NOISE_STREAM",
    "PLAN_STREAM",
    "PREDECESSOR",
    "RENDER_STREAM",
    "STAGES",
    "STAGE_PRIORS",
    "TV_STREAM",
    "Animate124Trainer",
    "Prior",
    "Reference",
    "Stage",
    "StageOptions",
    "StepPlan",
    "Views",
    "eta",
    "normal_smoothness",
    "opacity_entropy",
    "pearson",
    "reconstruction_losses",
]
