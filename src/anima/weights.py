"""Where weights live, what each part needs, and what is present.

(docs/architecture.md, "Models and weights")

Weights come from one local directory (``--weights DIR`` or ``$ANIMA_WEIGHTS``) holding one
sub-directory a component, in diffusers/transformers layout::

    DIR/depth-anything/   config.json + model.safetensors  (transformers Depth Anything V1/V2)
    DIR/sam/              config.json + model.safetensors  (transformers SAM)
    DIR/inpaint/          SD1.5 or SDXL inpainting, diffusers pipeline layout (the plate)
    DIR/svd/              Stable Video Diffusion img2vid(-xt), diffusers pipeline layout
    DIR/levitor/          LeviTor ControlNet: config.json + diffusion_pytorch_model.safetensors,
                          or the official release (an accelerate state dir with controlnet/)

Loading is safetensors-only unless ``--allow-pickle`` is given.

Two names need no files: ``tiny`` (tiny random models of each method's real architecture, a smoke
test) and ``toy`` (checkpoints trained on the toy world and shipped in the package: a weights
directory inside the package, ``anima/assets/toy/``, loaded by the same code as a user's).
Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    #: Sub-paths of ``subdir`` tried in order (e.g. an official release nests its files).
    layouts: tuple[str, ...] = ("",)
    #: Files of which at least one must be present too (a model shipped in several formats).
    required_any: tuple[str, ...] = ()

    def folder(self, root: Path | None) -> Path | None:
        """The first layout of ``root / subdir`` holding every required file (and one of
        ``required_any`` when given), else None."""
        if root is None:
            return None
        for layout in self.layouts:
            folder = root / self.subdir / layout if layout else root / self.subdir
            if not all((folder / f).is_file() for f in self.required_files):
                continue
            if self.required_any and not any((folder / f).is_file() for f in self.required_any):
                continue
            return folder
        return None

    def missing(self, root: Path) -> str:
        """What is missing under ``root / subdir`` (for error messages)."""
        looked = root / self.subdir
        for name in self.required_files:
            if not (looked / name).is_file():
                return name
        return " or ".join(self.required_any)

    def present(self, root: Path | None) -> bool:
        return self.folder(root) is not None


DEPTH_ANYTHING = Component(
    "depth-anything", "depth-anything", "monocular depth (else a ground-plane prior)", optional=True
)
SAM = Component("sam", "sam", "masks from clicked points (else GrabCut)", optional=True)
INPAINT = Component(
    "inpaint",
    "inpaint",
    "background plate: SD1.5/SDXL inpainting (else OpenCV)",
    required_files=("model_index.json",),
    optional=True,
)
PERCEPTION_COMPONENTS = (DEPTH_ANYTHING, SAM, INPAINT)
SVD = Component(
    "Stable Video Diffusion",
    "svd",
    "SVD img2vid(-xt) in diffusers layout",
    required_files=("model_index.json",),
)
SD15 = Component(
    "Stable Diffusion 1.5",
    "sd15",
    "SD1.5 in diffusers layout (unet, vae, text_encoder, tokenizer)",
    required_files=("model_index.json",),
)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def checkpoint_format(folder: Path, kind: str, allow_pickle: bool) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for the weights in ``folder`` (a diffusers or
    transformers model directory): safetensors preferred, an ``fp16``/``bf16`` variant found by
    name, pickle only with ``allow_pickle``. Anything missing is an `InputError` naming it."""
    if not folder.is_dir():
        raise InputError(f"{kind} directory not found", str(folder))
    if not (folder / "config.json").is_file():
        raise InputError(f"{kind}: config.json not found", f"in {folder}")
    names = {path.name for path in folder.iterdir()}
    for variant in (None, "fp16", "bf16"):
        infix = f".{variant}" if variant else ""
        for stem in ("diffusion_pytorch_model", "model"):
            if {f"{stem}{infix}.safetensors", f"{stem}{infix}.safetensors.index.json"} & names:
                return {"use_safetensors": True, "variant": variant}
    pickles = sorted(name for name in names if name.endswith(PICKLE_SUFFIXES))
    if pickles and not allow_pickle:
        raise InputError(
            f"{kind}: only pickle weights ({pickles[0]}); pass --allow-pickle to load them, "
            "or convert them once (`anima weights convert --help`)",
            f"in {folder}",
        )
    if pickles:
        variant = next((v for v in ("fp16", "bf16") if f".{v}." in pickles[0]), None)
        return {"use_safetensors": False, "variant": variant}
    raise InputError(
        f"{kind}: no weights (diffusion_pytorch_model.safetensors or model.safetensors)",
        f"in {folder}",
    )


def packaged_toy_dir() -> Path:
    """Where the package keeps the toy-world checkpoints: ``anima/assets/toy/``."""
    from importlib import resources

    return Path(str(resources.files("anima") / "assets" / "toy"))


def toy_weights_root() -> Path:
    """`packaged_toy_dir` (`SVD` plus the LeviTor ControlNets) after checking it; an
    `InputError` naming what is missing when the weights are absent."""
    root = packaged_toy_dir()
    if not SVD.present(root):
        raise InputError(
            f"the toy weights are not shipped with this install ({SVD.subdir}/"
            f"{SVD.required_files[0]} not found); pass --weights tiny or a directory",
            f"in {root}",
        )
    return root


@dataclass(frozen=True)
class Weights:
    """The user's weight source: a local directory, a built-in set, or none."""

    root: Path | None = None
    builtin: str | None = None
    allow_pickle: bool = False

    @classmethod
    def toy(cls, allow_pickle: bool = False) -> Weights:
        """The shipped toy checkpoints (``anima/assets/toy/``, a weights directory)."""
        return cls(root=toy_weights_root(), builtin="toy", allow_pickle=allow_pickle)

    @classmethod
    def resolve(cls, value: str | None, allow_pickle: bool = False) -> Weights:
        """From ``--weights`` (or ``$ANIMA_WEIGHTS`` when not given); checks the directory."""
        where = "--weights"
        if value is None:
            value = os.environ.get(WEIGHTS_ENV) or None
            where = f"${WEIGHTS_ENV}"
        if value is None:
            return cls(allow_pickle=allow_pickle)
        if value == "toy":
            return cls.toy(allow_pickle)
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
        return component.folder(self.root)

    def require(self, component: Component, method: str) -> Path:
        """The component's directory; absent files are an input error naming where we looked."""
        folder = component.folder(self.root)
        if folder is not None:
            return folder
        if self.root is None:
            raise InputError(
                f"{method} needs weights: pass --weights DIR (with {component.subdir}/) "
                f"or set ${WEIGHTS_ENV}",
                "--weights",
            )
        looked = self.root / component.subdir
        raise InputError(
            f"{component.name}: {component.missing(self.root)} not found", f"in {looked}"
        )

    def describe(self) -> str:
        if self.builtin:
            return f"built-in '{self.builtin}'"
        return str(self.root) if self.root else "none"
