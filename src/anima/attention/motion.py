"""Switching a video UNet's temporal layers off for a block: the video UNet run as an image UNet.

AnyI2V (appendix A.1, "Details of DDIM Inversion") inverts its conditional image as one frame
with the temporal layers disabled, "maintaining consistency with the backbone model design":
AnimateDiff's motion modules were trained on top of a frozen image UNet, so without them a
`UNetMotionModel` is the SD UNet it was made from (``UNetMotionModel.from_unet2d``). Inside
``with skip_motion_modules(unet):`` every motion module (the modules ``...motion_modules.<i>``
of the down, mid and up blocks) is swapped in its ``ModuleList`` for a module that returns its
input, so it is not computed at all; leaving the block puts the very same module objects back
(their processors and any hooks on them untouched). Which motion modules are skipped can be
narrowed with the `anima.attention.layers` patterns, by module path.

The same holds for ModelScope / Zeroscope's `UNet3DConditionModel` (AnyI2V, appendix: the
temporal modules of VideoCrafter2 / LaVie are turned off for the one-frame inversion; see
docs/architecture.md): its temporal layers are ``transformer_in`` (a `TransformerTemporalModel`
after ``conv_in``), every ``temp_attentions.<i>`` (a `TransformerTemporalModel` after each
spatial transformer) and every ``temp_convs.<i>`` (a `TemporalConvLayer` after each res block).
All three are residual (they add their output to their input), so a pass-through is the layer
switched off; the stand-in of a `TransformerTemporalModel` returns ``(hidden_states,)``, as the
UNet reads ``[0]`` of its result, that of the others the tensor itself.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor, nn

from anima.attention.layers import Patterns, select
from anima.attention.processor import Hooks

#: A temporal layer, by module path: an AnimateDiff motion module
#: (``down_blocks.0.motion_modules.1``, ...) or a `UNet3DConditionModel`'s ``transformer_in``,
#: ``...temp_attentions.<i>`` and ``...temp_convs.<i>``.
MOTION_MODULES = re.compile(
    r"(.+\.)?(motion_modules|temp_attentions|temp_convs)\.\d+|transformer_in"
)


class _PassThrough(nn.Module):
    """Stands in for a motion module: returns the hidden states it is given."""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states


class _TuplePassThrough(nn.Module):
    """Stands in for a `TransformerTemporalModel`: returns ``(hidden_states,)``, what the UNet
    reads with ``return_dict=False``."""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor]:
        return (hidden_states,)


def _stand_in(module: nn.Module) -> nn.Module:
    """The pass-through that replaces ``module``, returning what its caller expects."""
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    return _TuplePassThrough() if isinstance(module, TransformerTemporalModel) else _PassThrough()


def motion_modules(
    model: nn.Module, include: Patterns = "*", exclude: Patterns | None = None
) -> dict[str, nn.Module]:
    """The temporal layers of ``model`` (`MOTION_MODULES`) by module path, selected by name."""
    found = {name: m for name, m in model.named_modules() if MOTION_MODULES.fullmatch(name)}
    return {name: found[name] for name in select(found, include, exclude)}


class SkipMotionModules(Hooks):
    """Within the block, the temporal layers of ``model`` (motion modules, or UNet3D's
    temporal attentions and convolutions) selected by ``include`` / ``exclude`` return their
    input unchanged and are not computed (see the module docstring). Raises ValueError when the
    model has none (it is no `UNetMotionModel` or `UNet3DConditionModel`). Use as a context
    manager."""

    def __init__(
        self, model: nn.Module, include: Patterns = "*", exclude: Patterns | None = None
    ) -> None:
        super().__init__(model)
        self.include = include
        self.exclude = exclude

    def _install(self) -> None:
        modules = motion_modules(self.model, self.include, self.exclude)
        if not modules:
            raise ValueError(
                f"no motion modules to skip (include={self.include!r}, exclude={self.exclude!r});"
                " expected a UNetMotionModel or a UNet3DConditionModel"
            )
        for name, module in modules.items():
            parent_name, _, key = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            setattr(parent, key, _stand_in(module))  # a ModuleList takes its index as a name
            self._undo.append(self._restorer(parent, key, module))

    @staticmethod
    def _restorer(parent: nn.Module, key: str, module: nn.Module) -> Any:
        def restore() -> None:
            setattr(parent, key, module)

        return restore


#: The context-manager spelling of `SkipMotionModules` (``with skip_motion_modules(unet):``).
skip_motion_modules = SkipMotionModules
#: The same, named for any video UNet (``with skip_temporal_layers(unet3d):``).
skip_temporal_layers = SkipMotionModules
