"""Switching AnimateDiff's motion modules off for a block: a video UNet run as the image UNet.

AnyI2V (appendix A.1, "Details of DDIM Inversion") inverts its conditional image as one frame
with the temporal layers disabled, "maintaining consistency with the backbone model design":
AnimateDiff's motion modules were trained on top of a frozen image UNet, so without them a
`UNetMotionModel` is the SD UNet it was made from (``UNetMotionModel.from_unet2d``). Inside
``with skip_motion_modules(unet):`` every motion module (the modules ``...motion_modules.<i>``
of the down, mid and up blocks) is swapped in its ``ModuleList`` for a module that returns its
input, so it is not computed at all; leaving the block puts the very same module objects back
(their processors and any hooks on them untouched). Which motion modules are skipped can be
narrowed with the `anima.attention.layers` patterns, by module path.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor, nn

from anima.attention.layers import Patterns, select
from anima.attention.processor import Hooks

#: An AnimateDiff motion module, by module path (``down_blocks.0.motion_modules.1``, ...).
MOTION_MODULES = re.compile(r"(.+\.)?motion_modules\.\d+")


class _PassThrough(nn.Module):
    """Stands in for a motion module: returns the hidden states it is given."""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states


def motion_modules(
    model: nn.Module, include: Patterns = "*", exclude: Patterns | None = None
) -> dict[str, nn.Module]:
    """The motion modules of ``model`` by module path, selected by name."""
    found = {name: m for name, m in model.named_modules() if MOTION_MODULES.fullmatch(name)}
    return {name: found[name] for name in select(found, include, exclude)}


class SkipMotionModules(Hooks):
    """Within the block, the motion modules of ``model`` selected by ``include`` / ``exclude``
    return their input unchanged and are not computed (see the module docstring). Raises
    ValueError when the model has none (it is no `UNetMotionModel`). Use as a context
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
                " expected a UNetMotionModel"
            )
        for name, module in modules.items():
            parent_name, _, index = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            assert isinstance(parent, nn.ModuleList)
            parent[int(index)] = _PassThrough()
            self._undo.append(self._restorer(parent, int(index), module))

    @staticmethod
    def _restorer(parent: nn.ModuleList, index: int, module: nn.Module) -> Any:
        def restore() -> None:
            parent[index] = module

        return restore


#: The context-manager spelling of `SkipMotionModules` (``with skip_motion_modules(unet):``).
skip_motion_modules = SkipMotionModules
