"""Animate124: one image and a prompt to a 4D scene by three-stage score distillation, seen
along the spec's camera at the spec's times (Animate124 §3; README, "Animate124").

(docs/architecture.md, "A method folder", "Adding a method".) One job a module: `grid` and
`field` are the 4D grid dynamic NeRF (§3.1), `volume` its renderer, `cameras` the release's
cameras and temporal balanced sampling, `guidance` the four score-distillation priors,
`loading` their components (or tiny ones), `textual_inversion` the token of §3.4, `stages`
the static / dynamic / refine optimisation as one `Trainer`, `train` the stages in a run
folder, `preprocess` the reference view from the spec, `export` the orbit videos and meshes.

The registered method ``animate124`` (`Animate124Method`):

- ``check_inputs``: the spec selects an object (`preprocess.chosen_object`); with
  ``only_stage`` the run folder (``options.run``) holds the stage's predecessor, finished.
- ``prepare``: the reference view (`preprocess.preprocess`, at the reference render size),
  then the stages up to ``options.stage`` in the run folder (``options.run``, relative to the
  spec file; default anima's cache, `anima.cache`, under a key of the reference, prompts,
  seed and settings, so running the same spec again reuses its finished stages and resumes a
  partial one; a finished stage is never trained again). The spec's seed seeds every draw,
  its prompt and negative prompt condition the text priors.
- ``generate``: the trained field rendered (albedo on white) for every frame f at time
  t = f / (F - 1), from the spec's camera mapped onto the reference camera (`spec_cameras`),
  at the scene's aspect with the longer side ``options.output_side`` (256) at most; `stream`
  brings the frames to the output size.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field

from anima.errors import InputError
from anima.methods.animate124.cameras import reference_camera
from anima.methods.animate124.loading import COMPONENTS, CONTROLNET_TILE, ZERO123_XL
from anima.methods.animate124.preprocess import OBJECT_FRACTION, Framing, chosen_object
from anima.methods.animate124.stages import STAGES, Stage, StageOptions
from anima.methods.base import Controls, Method
from anima.methods.registry import register
from anima.models.modelscope import MODELSCOPE_T2V
from anima.scene import Scene
from anima.spec import MotionSpec
from anima.weights import SD15, Component, Weights

#: What each stage reads (cumulative: a stage runs after its predecessors).
STAGE_COMPONENTS: dict[str, tuple[Component, ...]] = {
    "static": (SD15, ZERO123_XL),
    "dynamic": (SD15, ZERO123_XL, MODELSCOPE_T2V),
    "refine": (SD15, ZERO123_XL, MODELSCOPE_T2V, CONTROLNET_TILE),
}
#: The longest side of the rendered video by default.
OUTPUT_SIDE = 256
#: Textual inversion's steps (the release's 3000, README "Animate124: textual inversion").
TOKEN_STEPS = 3000


class Animate124Options(StageOptions):
    """Options of the animate124 method (``spec.options``): the stages' settings
    (`StageOptions`: paper defaults, the release's values named) and the run's."""

    stage: Stage = Field(
        "refine", description="The last stage trained and rendered: static, dynamic or refine."
    )
    only_stage: bool = Field(
        False,
        description="Train only options.stage, from its predecessor finished in options.run.",
    )
    run: Path | None = Field(
        None,
        description="The run folder (relative to the spec file); default anima's cache, keyed "
        "by the image, prompts, seed and settings.",
    )
    object_id: int | None = Field(None, description="The spec's object to lift (default first).")
    token_steps: int = Field(
        TOKEN_STEPS,
        ge=0,
        description="Textual-inversion steps of the token the refine stage prompts "
        "ControlNet-Tile with (§3.4), trained in RUN/token before refine; 0: no token.",
    )
    token_batch_size: int = Field(16, ge=1, description="Images a textual-inversion step.")
    token_resolution: int = Field(
        512, ge=8, multiple_of=8, description="Textual inversion's training side."
    )
    object_fraction: float = Field(
        OBJECT_FRACTION, gt=0.1, le=1.0, description="The object's share of the square (0.8)."
    )
    output_side: int = Field(
        OUTPUT_SIDE, ge=8, le=2048, description="Longest side of the rendered frames."
    )

    def stage_options(self) -> StageOptions:
        """The `StageOptions` part."""
        return StageOptions(**{k: getattr(self, k) for k in StageOptions.model_fields})


def run_folder(spec: MotionSpec, options: Animate124Options, key: str | None = None) -> Path:
    """``options.run`` resolved against the spec file's directory, else anima's cache folder
    ``animate124/<key>`` (``key``: `run_key`)."""
    if options.run is not None:
        return spec.resolve(str(options.run))
    from anima.cache import cache_dir

    if key is None:
        raise ValueError("a cached run folder needs its key")
    return cache_dir("animate124", key)


def run_key(reference_digest: str, spec: MotionSpec, options: Animate124Options) -> str:
    """The cache key of a run: the reference, prompts, seed and the stages' settings."""
    from anima.methods.animate124.train import stage_record

    record = stage_record(
        "static",
        options.stage_options(),
        spec.seed,
        {"prompt": spec.prompt, "negative_prompt": spec.negative_prompt},
    )
    text = json.dumps({"reference": reference_digest, **record}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def spec_cameras(
    spec: MotionSpec, scene: Scene, framing: Framing, radius: float, fov: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-to-world poses (F, 4, 4) and vertical fields of view (F,) of the spec's camera
    in the reference camera's world (`cameras`' convention).

    The spec's camera path (`anima.animation.camera_path`: frame f's camera relative to frame
    0's, x right, y down, z forward) is applied to the reference camera (polar 90, azimuth 0,
    ``radius``, ``fov``) as if the photo had been taken from it: translations scaled by
    ``radius`` / the object's median distance (the object's distance becomes the camera
    radius, so a dolly halfway to the object halves the distance to the box centre and an orbit
    about a pivot at the object's distance turns about the box centre), rotations kept, zoom
    narrowing the field of view (tan(fov_f / 2) = tan(fov / 2) / zoom_f). No camera: the
    reference view for every frame."""
    from anima.animation import camera_path

    world_to_camera, intrinsics = camera_path(spec, scene)
    camera_to_world = torch.linalg.inv(world_to_camera.double())
    camera_to_world[:, :3, 3] *= radius / max(framing.distance, 1e-6)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
    base = reference_camera(radius, fov).poses[0].double()
    poses = base @ flip @ camera_to_world @ flip
    zoom = intrinsics[:, 1, 1].double() / intrinsics[0, 1, 1].double()
    half = math.tan(math.radians(fov) / 2.0)
    fovs = torch.rad2deg(2.0 * torch.atan(half / zoom))
    return poses.float(), fovs.float()


def output_size(scene: Scene, side: int) -> tuple[int, int]:
    """The scene's aspect with the longer side ``side`` at most (and never above the scene's)."""
    height, width = scene.size
    scale = min(1.0, side / max(height, width))
    return max(8, round(height * scale)), max(8, round(width * scale))


@dataclass
class Animate124Controls(Controls):
    """The trained field (``field``) of ``stage`` in ``run``, the reference view it was fitted
    to, and the frames' cameras (``poses`` (F, 4, 4), ``fovs`` (F,)) and ``times`` (F,)."""

    run: Path | None = None
    stage: str = ""
    field: Any = None
    reference: Any = None
    framing: Framing | None = None
    poses: torch.Tensor | None = None
    fovs: torch.Tensor | None = None
    times: torch.Tensor | None = None
    size: tuple[int, int] = (0, 0)

    def to_json(self) -> dict[str, Any]:
        framing = self.framing
        return {
            "run": str(self.run),
            "stage": self.stage,
            "render_size": list(self.size),
            "object_id": framing.object_id if framing else None,
            "crop": [framing.top, framing.left, framing.side] if framing else None,
            "object_distance": framing.distance if framing else None,
        }

    def images(self) -> dict[str, torch.Tensor]:
        if self.reference is None:
            return {}
        mask = self.reference.mask[None].expand(3, -1, -1)
        return {"reference": self.reference.image, "reference_mask": mask}


@register
class Animate124Method(Method):
    name = "animate124"
    summary = "Animate124: image + prompt to a 4D scene (3-stage score distillation), any camera"
    components = COMPONENTS
    builtin_weights = ("tiny",)
    options_model = Animate124Options

    @classmethod
    def used_components(cls, options: BaseModel | None = None) -> tuple[Component, ...]:
        """SD1.5 and Zero-1-to-3 XL for the static stage, + ModelScope for the dynamic one,
        + ControlNet-Tile for the refinement: what the stages up to ``options.stage`` read."""
        options = options if isinstance(options, Animate124Options) else Animate124Options()
        return STAGE_COMPONENTS[options.stage]

    @classmethod
    def weight_variants(cls) -> dict[str, BaseModel]:
        """One option set a last stage."""
        return {stage: Animate124Options(stage=stage) for stage in STAGES}

    @classmethod
    def describe_weights(cls, weights: Weights) -> str | None:
        """Each component (per last stage) with whether it is present, and the conventions."""
        listed = []
        for component in COMPONENTS:
            state = ""
            if weights.root is not None:
                state = " present" if component.present(weights.root) else " absent"
            first = next(s for s in STAGES if component in STAGE_COMPONENTS[s])
            listed.append(f"{component.subdir}/ (from the {first} stage){state}")
        notes = (
            "Zero-1-to-3 pose [d_polar rad, sin(-d_az), cos(d_az), d_r], reference at polar 90, "
            "azimuth 0, radius 1.8; latents the VAE posterior mean x scaling factor"
        )
        return ", ".join(listed) + "; " + notes

    @classmethod
    def check_inputs(cls, spec: MotionSpec, options: BaseModel) -> None:
        """The spec selects an object; ``only_stage`` needs ``run`` holding the stage's
        predecessor, finished."""
        assert isinstance(options, Animate124Options)
        chosen_object(spec, options.object_id)
        if options.only_stage:
            from anima.methods.animate124.train import check_stage_order

            if options.run is None:
                raise InputError(
                    "only_stage trains one stage of an existing run: give options.run",
                    "options.only_stage",
                )
            check_stage_order(run_folder(spec, options), options.stage)

    def prepare(self, spec: MotionSpec, scene: Scene) -> Animate124Controls:
        from anima.methods.animate124.preprocess import preprocess
        from anima.methods.animate124.train import reference_digest, train_stage, train_stages

        options = self.options
        assert isinstance(options, Animate124Options)
        stage_options = options.stage_options()
        side = options.reference_size or options.render_size
        reference, framing = preprocess(
            spec, scene, side, options.object_id, options.object_fraction
        )
        key = run_key(reference_digest(reference), spec, options)
        run = run_folder(spec, options, key)
        self.report(f"animate124: run folder {run}")
        common = {
            "weights": self.weights,
            "prompt": spec.prompt,
            "negative_prompt": spec.negative_prompt,
            "seed": spec.seed,
            "report": self.report,
        }
        if options.stage == "refine" and options.token_steps > 0:
            self.train_token(spec, scene, run)
        if options.only_stage:
            result = train_stage(run, options.stage, reference, stage_options, **common)
        else:
            result = train_stages(run, options.stage, reference, stage_options, **common)[-1]
        poses, fovs = spec_cameras(spec, scene, framing, options.camera_radius, options.camera_fov)
        from anima.methods.animate124.export import frame_times

        return Animate124Controls(
            spec,
            scene,
            None,
            run,
            options.stage,
            result.field.to(self.device),
            reference,
            framing,
            poses,
            fovs,
            frame_times(spec.num_frames),
            output_size(scene, options.output_side),
        )

    def train_token(self, spec: MotionSpec, scene: Scene, run: Path) -> None:
        """The token of the object (Animate124 §3.4) in ``RUN/token`` (`train.TOKEN_DIR`),
        learned from the scene's image and the object's selection, initialised from the
        object's label ("object" without one); a finished token with the same record is
        reused (`textual_inversion.train_token`)."""
        from anima.methods.animate124 import textual_inversion as ti
        from anima.methods.animate124.train import TOKEN_DIR

        options = self.options
        assert isinstance(options, Animate124Options)
        obj = chosen_object(spec, options.object_id)
        image_path = spec.resolve(spec.image)
        inputs = ti.TokenInputs(
            image_path=image_path,
            image_sha256=ti.sha256_file(image_path),
            image=scene.image.float(),
            mask=(scene.instance == obj.id).float(),
            mask_source=f"spec object {obj.id}",
            init_words=obj.label or "object",
        )
        config = ti.TokenTrainConfig(
            image=image_path,
            out=run / TOKEN_DIR,
            object_id=obj.id,
            steps=options.token_steps,
            batch_size=options.token_batch_size,
            resolution=options.token_resolution,
            seed=spec.seed,
            quiet=True,
        )
        self.report(
            f"animate124: textual inversion of '{inputs.init_words}' ({config.steps} steps)"
        )
        ti.train_token(config, self.weights, inputs=inputs)

    @torch.no_grad()
    def generate(self, controls: Controls) -> torch.Tensor:
        from anima.methods.animate124.volume import render

        assert isinstance(controls, Animate124Controls)
        assert controls.poses is not None and controls.fovs is not None
        assert controls.times is not None
        options = self.options
        assert isinstance(options, Animate124Options)
        render_options = options.render_options(perturb=False)
        frames = []
        count = len(controls.times)
        for f in range(count):
            out = render(
                controls.field,
                controls.poses[f],
                float(controls.fovs[f]),
                controls.size,
                controls.times[f],
                options=render_options,
            )
            frames.append(out.rgb.clamp(0, 1).float().cpu())
            self.report(f"animate124: frame {f + 1}/{count} rendered")
        return torch.stack(frames)


__all__ = [
    "STAGE_COMPONENTS",
    "Animate124Controls",
    "Animate124Method",
    "Animate124Options",
    "output_size",
    "run_folder",
    "run_key",
    "spec_cameras",
]
