"""AnyI2V's first-frame feature injection in the sampling pass, through the hook layer.

(README, "AnyI2V"; AnyI2V, appendix A.2 "Reference Frame Control": the first frame is
controlled by injecting features on the early steps.) On the step indices `INJECTION_STEPS`
(0-3 of 25, t = 961..841) of the main classifier-free-guidance pass, in the CONDITIONAL half only
(the unconditional half stays the plain model's), on the layers of
`anima.methods.anyi2v.inversion`:

- frame 0's self-attention query := the inverted query (`anima.attention.inject`, ``kinds=
  ("q",)``, ``frames=[0]``, the inversion's single frame shared by every video);
- frames 1..F-1 attend to frame 0's CURRENT keys and values instead of their own (replacement,
  not concatenation: `anima.attention.reference_kv`, a window of frame 0; frame 0 keeps its own);
- frame 0's residual-branch features := the inverted ones after a patch-wise AdaIN
  (`anima.attention.patch_adain`, 4x4 patches: each patch of each channel keeps its current mean
  and std and takes the inverted feature's pattern).

Without guidance (one branch) the whole batch is the conditional one, as in the release.

Videos longer than the motion modules' window are denoised in sliding windows
(`anima.sampling.windows`): only the first window holds frame 0, so it alone gets frame 0's
query and residual features; it runs first at every step and the hook layer records (`capture`)
frame 0's keys and values there, which the later windows' frames then attend to
(`reference_kv` with ``recorded``): every frame of the video uses frame 0's keys and values of
the same step, whichever window it is denoised in.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from diffusers import UNet3DConditionModel, UNetMotionModel

from anima.attention import (
    CFG_BRANCHES,
    FeatureStore,
    Hooks,
    capture,
    inject,
    patch_adain,
    reference_kv,
)
from anima.methods.anyi2v.inversion import (
    INVERSION_STEPS,
    INVERSION_TIMESTEP,
    QUERY_LAYERS,
    RESIDUAL_LAYERS,
    InvertedFeatures,
)

#: Step indices of the main pass that get the features (the release's ``load_feature_step`` 3).
INJECTION_STEPS: tuple[int, ...] = (0, 1, 2, 3)
#: Side of the AdaIN patches on the residual features (the release's ``debias_patch_size``).
ADAIN_PATCH = 4


@dataclass(frozen=True)
class InjectionOptions:
    """AnyI2V's inversion and first-frame injection; the defaults are the release's.
    ``enabled`` False turns both off (the pipeline is then plain AnimateDiff)."""

    enabled: bool = True
    steps: tuple[int, ...] = INJECTION_STEPS
    inversion_timestep: int = INVERSION_TIMESTEP
    inversion_steps: int = INVERSION_STEPS
    query_layers: tuple[str, ...] = QUERY_LAYERS
    residual_layers: tuple[str, ...] = RESIDUAL_LAYERS
    adain_patch: int = ADAIN_PATCH

    def __post_init__(self) -> None:
        if self.adain_patch < 1:
            raise ValueError(f"adain_patch must be >= 1, got {self.adain_patch}")
        if any(step < 0 for step in self.steps):
            raise ValueError(f"injection steps are step indices >= 0, got {self.steps}")


class FirstFrameInjection:
    """The hooks of ONE denoising step's UNet passes (module docstring). ``cfg``: the passes'
    batch is ``[uncond; cond]`` and only the conditional half is edited. Make one a step: the
    recorded frame-0 keys and values belong to that step."""

    def __init__(
        self,
        unet: UNetMotionModel | UNet3DConditionModel,
        features: InvertedFeatures,
        cfg: bool,
        patch: int = ADAIN_PATCH,
    ) -> None:
        self.unet = unet
        self.features = features
        self.patch = patch
        self.branches = CFG_BRANCHES if cfg else None
        self.targets = "cond" if cfg else None
        self.first_kv: FeatureStore | None = None

    @contextmanager
    def window(self, frames: range, record: bool = False) -> Iterator[None]:
        """The hooks for a pass over ``frames`` (absolute frame indices): the full injection
        when it holds frame 0 (``record`` also keeps frame 0's keys and values for the later
        windows), else attention to the recorded frame-0 keys and values."""
        if frames.start != 0:
            if self.first_kv is None:
                raise RuntimeError("the window holding frame 0 must run first at every step")
            with reference_kv(
                self.unet,
                self.features.query_layers,
                recorded=self.first_kv,
                branches=self.branches,
                targets=self.targets,
            ):
                yield
            return
        recorded = FeatureStore()
        with ExitStack() as stack:
            for manager in self._first_window_hooks(recorded if record else None):
                stack.enter_context(manager)
            yield
        if record:  # the targeted rows of each layer: frame 0 first
            self.first_kv = recorded.map(lambda rows: rows[:1])

    def _first_window_hooks(self, recorded: FeatureStore | None) -> list[Hooks]:
        """Frame 0's query and residual features, frame 0's K/V for the other frames, and
        (into ``recorded``) the record of frame 0's K/V."""
        source = self.features
        where = {"branches": self.branches, "targets": self.targets}
        hooks: list[Hooks] = []
        if source.query_layers:
            hooks.append(
                inject(
                    self.unet,
                    source.store,
                    layers=source.query_layers,
                    kinds=("q",),
                    frames=[0],
                    source_step=source.timestep,
                    **where,
                )
            )
        if source.residual_layers:
            hooks.append(
                inject(
                    self.unet,
                    source.store,
                    residuals=source.residual_layers,
                    frames=[0],
                    source_step=source.timestep,
                    transform=functools.partial(patch_adain, patch=self.patch),
                    **where,
                )
            )
        if source.query_layers:
            hooks.append(reference_kv(self.unet, source.query_layers, **where))
            if recorded is not None:
                hooks.append(
                    capture(
                        self.unet, recorded, layers=source.query_layers, kinds=("k", "v"), **where
                    )
                )
        return hooks
