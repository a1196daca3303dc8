"""Where weights live, what each part needs, and what is present (DESIGN.md, "Models and weights").

Weights come from one local directory (``--weights DIR`` or ``$ANIMA_WEIGHTS``) holding one
sub-directory a component, in diffusers/transformers layout::

    DIR/depth-anything/   config.json + model.safetensors  (transformers Depth Anything V1/V2)
    DIR/sam/              config.json + model.safetensors  (transformers SAM)

Two names need no files: ``tiny`` (tiny random models of each method's real architecture, a smoke
test) and ``toy`` (checkpoints trained on the toy world and shipped in the package). Nothing is
ever downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from anima.errors import InputError

BUILTIN_WEIGHTS = ("tiny", "toy")
WEIGHTS_ENV = "ANIMA_WEIGHTS"


@dataclass(frozen=True)
class Component:
    """One model a method or perception backend loads from a sub-directory of the weights."""

    name: str
    subdir: str
    purpose: str
    required_files: tuple[str, ...] = ("config.json",)
    optional: bool = False

    def present(self, root: Path | None) -> bool:
        if root is None:
            return False
        folder = root / self.subdir
        return all((folder / f).is_file() for f in self.required_files)


DEPTH_ANYTHING = Component(
    "depth-anything", "depth-anything", "monocular depth (else a ground-plane prior)", optional=True
)
SAM = Component("sam", "sam", "masks from clicked points (else GrabCut)", optional=True)
PERCEPTION_COMPONENTS = (DEPTH_ANYTHING, SAM)


@dataclass(frozen=True)
class Weights:
    """The user's weight source: a local directory, a built-in set, or none."""

    root: Path | None = None
    builtin: str | None = None
    allow_pickle: bool = False

    @classmethod
    def resolve(cls, value: str | None, allow_pickle: bool = False) -> Weights:
        """From ``--weights`` (or ``$ANIMA_WEIGHTS`` when not given); checks the directory."""
        where = "--weights"
        if value is None:
            value = os.environ.get(WEIGHTS_ENV) or None
            where = f"${WEIGHTS_ENV}"
        if value is None:
            return cls(allow_pickle=allow_pickle)
        if value in BUILTIN_WEIGHTS:
            return cls(builtin=value, allow_pickle=allow_pickle)
        root = Path(value).expanduser()
        if not root.is_dir():
            raise InputError(f"weights directory not found: {root}", where)
        return cls(root=root.resolve(), allow_pickle=allow_pickle)

    @property
    def configured(self) -> bool:
        return self.root is not None or self.builtin is not None

    def component_dir(self, component: Component) -> Path | None:
        """The component's directory when its files are present, else None."""
        if component.present(self.root):
            assert self.root is not None
            return self.root / component.subdir
        return None

    def describe(self) -> str:
        if self.builtin:
            return f"built-in '{self.builtin}'"
        return str(self.root) if self.root else "none"
