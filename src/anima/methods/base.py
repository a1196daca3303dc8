"""What every method is: a name, what it needs, and two steps.

(docs/architecture.md, "A method folder")

``prepare(spec, scene) -> Controls`` turns the spec and scene into what the method's generator is
conditioned on; ``generate(controls) -> frames`` makes the video, and ``stream(controls)`` gives
it frame by frame at the output size. The CLI and the studio look
methods up by name (`anima.methods.registry`) and never special-case one.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from anima.errors import InputError
from anima.render import RenderResult
from anima.scene import Scene
from anima.spec import MotionSpec, format_validation_error
from anima.stream import FrameStream
from anima.weights import Component, Weights

#: The one line a float16 run on the CPU prints (`run_dtype`).
FLOAT16_ON_CPU = "float16 is not supported on the CPU; running in float32"


def run_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype a method runs in on ``device``: ``dtype``, except float16 on the CPU, which
    runs in float32 with one warning (`FLOAT16_ON_CPU`): PyTorch's CPU kernels do not all
    support float16 and diffusers warns that such a pipeline "will fail". bfloat16 runs on the
    CPU as asked. Every `Method` applies this to its ``dtype``."""
    if dtype == torch.float16 and device.type == "cpu":
        warnings.warn(FLOAT16_ON_CPU, stacklevel=2)
        return torch.float32
    return dtype


class NoOptions(BaseModel):
    """A method without options: any key in ``spec.options`` is an error."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Controls:
    """What a generator is conditioned on. ``render`` is the coarse 3D render when the method
    uses one (the ``--dump`` writes it)."""

    spec: MotionSpec
    scene: Scene
    render: RenderResult | None

    def to_json(self) -> dict[str, Any]:
        """The method's control signal as JSON (``controls.json`` in a dump)."""
        return {}

    def images(self) -> dict[str, torch.Tensor]:
        """Images the method was conditioned on, by name, each (3, H, W) in [0, 1]: a dump
        writes them as ``NAME.png`` (e.g. AnyI2V's condition map). Nothing by default."""
        return {}


class Method(ABC):
    """Base class of every method. Subclasses set the class attributes and the two steps."""

    name: ClassVar[str]
    summary: ClassVar[str]
    components: ClassVar[tuple[Component, ...]] = ()
    builtin_weights: ClassVar[tuple[str, ...]] = ()
    options_model: ClassVar[type[BaseModel]] = NoOptions
    #: Whether `stream` makes frames one at a time (memory does not grow with the clip), or
    #: the method makes its whole clip at once (`anima.memory` estimates each).
    streams: ClassVar[bool] = False

    def __init__(
        self,
        options: BaseModel,
        weights: Weights,
        device: torch.device,
        dtype: torch.dtype,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.options = options
        self.weights = weights
        self.device = device
        self.dtype = run_dtype(device, dtype)  # what the models are loaded and run in
        self.report = report or (lambda _text: None)  # progress lines for the CLI and studio

    @classmethod
    def parse_options(cls, options: dict[str, Any], where: str = "spec") -> BaseModel:
        """Validate ``spec.options`` with the method's options model."""
        try:
            return cls.options_model.model_validate(options)
        except ValidationError as exc:
            message = f"options.{format_validation_error(exc)} (method {cls.name})"
            raise InputError(message, where) from None

    @classmethod  # noqa: B027 - optional hook, a no-op by default
    def check_inputs(cls, spec: MotionSpec, options: BaseModel) -> None:
        """Check what the method reads beyond the spec's image, depth and masks (files it
        names, sections it needs), before any work: `anima.preflight` runs it on every spec of
        a batch. Nothing by default."""

    @classmethod
    def used_components(cls, options: BaseModel | None = None) -> tuple[Component, ...]:
        """The components a run with ``options`` reads (``options`` None: the defaults'),
        the optional ones where present: all `components` by default; a method whose options
        choose its models (AnyI2V's ``backbone``) overrides this."""
        return cls.components

    @classmethod
    def required_components(cls, options: BaseModel | None = None) -> tuple[Component, ...]:
        """The components a run with ``options`` cannot do without: the non-optional ones of
        `used_components`."""
        return tuple(c for c in cls.used_components(options) if not c.optional)

    @classmethod
    def missing_components(
        cls, weights: Weights, options: BaseModel | None = None
    ) -> list[Component]:
        """The required components (for ``options``) that ``weights`` lacks; none when the
        weights are a built-in set the method supports. The one readiness rule of
        ``anima weights``, the preflight, the default method and the studio."""
        if weights.builtin in cls.builtin_weights:
            return []
        return [c for c in cls.required_components(options) if not c.present(weights.root)]

    @classmethod
    def weight_variants(cls) -> dict[str, BaseModel]:
        """Option sets that read different models, by name, as ``anima weights`` lists them
        (AnyI2V: one per backbone); empty when the options do not choose models."""
        return {}

    @classmethod
    def describe_weights(cls, weights: Weights) -> str | None:
        """A note ``anima weights check`` adds on the weights (e.g. a convention their config
        records); None by default."""
        return None

    def load(self) -> object | None:  # noqa: B027 - optional hook, a no-op by default
        """Load the method's models; runs before any heavy work so that missing or bad weights
        fail fast. Methods without weights have nothing to load."""
        return None

    @abstractmethod
    def prepare(self, spec: MotionSpec, scene: Scene) -> Controls:
        """Spec and scene -> the method's control signal."""

    @abstractmethod
    def generate(self, controls: Controls) -> torch.Tensor:
        """Control signal -> frames (F, 3, h, w) float in [0, 1], at the size the method
        generates at."""

    def stream(self, controls: Controls) -> FrameStream:
        """The video frame by frame at the output size (the scene's), each frame with its
        render frame when the method rendered (`anima.stream`). By default `generate`'s
        frames, each resized as it is asked for; a method that can make its frames one at a
        time overrides this, so that memory does not grow with the clip."""
        frames = self.generate(controls)
        return FrameStream.from_tensor(frames, controls.render, size=controls.scene.size)
