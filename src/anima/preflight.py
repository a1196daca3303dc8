"""Everything a spec needs, checked before any work (docs/architecture.md, "Data flow").

`check_spec` is what `anima spec validate` reports and what `anima animate` runs on every spec
of a batch before the first render: the spec's schema, the command-line overrides, the method
and its options, the weights the method needs, every file the spec names (read in full, so an
unreadable image fails here), the selections' geometry at the working size and the run's
estimated peak memory (`anima.memory`). A spec that
passes does not fail later for any of these reasons; the message of one that fails is the
message `animate` gives.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from anima.errors import InputError
from anima.io import read_depth, read_image, read_mask
from anima.memory import check_memory
from anima.mesh import load_mesh
from anima.methods.base import Method
from anima.methods.registry import get_method
from anima.pipeline import resolve_spec
from anima.render_import import check_render_folder
from anima.scene import check_selections, source_size
from anima.spec import MotionSpec, load_spec
from anima.weights import Weights


def check_weights(method: type[Method], weights: Weights, options: BaseModel | None = None) -> None:
    """The method's required weights (for ``options``, `Method.required_components`) are
    present (or built in); else the error its loading would give, naming the first missing
    file and where it was looked for."""
    for component in method.missing_components(weights, options):
        weights.require(component, method.name)


def _check_files(spec: MotionSpec) -> None:
    """Read every file the spec names, at the working size, and check the selections there."""
    size = tuple(spec.size) if spec.size else None
    image = read_image(spec.resolve(spec.image), size=size, where="image")
    size = (int(image.shape[-2]), int(image.shape[-1]))
    photo = source_size(spec.resolve(spec.image))  # masks and depth are drawn on the photo
    if spec.depth is not None:
        read_depth(spec.resolve(spec.depth), size=size, where="depth", image_size=photo)
    for i, obj in enumerate(spec.objects):
        if obj.mask is not None:
            read_mask(
                spec.resolve(obj.mask), size=size, where=f"objects[{i}].mask", image_size=photo
            )
        if obj.mesh is not None:
            load_mesh(spec.resolve(obj.mesh), f"objects[{i}].mesh")
    if spec.render is not None:
        ids = [obj.id for obj in spec.objects]
        check_render_folder(spec.resolve(spec.render), spec.num_frames, size, ids, "render")
    check_selections(spec, size)


def check_spec(
    path: Path,
    weights: Weights,
    *,
    method: str | None = None,
    seed: int | None = None,
    frames: int | None = None,
    files: bool = True,
) -> MotionSpec:
    """Load the spec at `path` with the command line's overrides applied and check everything
    it needs (with ``files=False``: all but its files, geometry and memory); returns the resolved
    spec. The memory guard (`anima.memory`) refuses a run that cannot fit before any file is
    read in full.
    Errors in the spec's files name the field and the spec file."""
    spec = resolve_spec(
        load_spec(path), method=method, seed=seed, num_frames=frames, weights=weights
    )
    check_resolved_spec(spec, weights, files=files)
    return spec


def check_resolved_spec(spec: MotionSpec, weights: Weights, files: bool = True) -> None:
    """`check_spec` for a spec already resolved (`anima.pipeline.resolve_spec`), e.g. one a
    suite changed in memory: the method's options and weights, then (``files``) the memory
    guard, every file the spec names and the method's inputs."""
    method_cls = get_method(spec.method or "", f"method {spec.where}")
    options = method_cls.parse_options(spec.options, spec.where)
    check_weights(method_cls, weights, options)
    if not files:
        return
    try:
        check_memory(spec, method_cls, weights, options)  # before reading the image in full
        _check_files(spec)
        method_cls.check_inputs(spec, options)
    except InputError as exc:
        raise exc.in_spec(spec.where) from None
