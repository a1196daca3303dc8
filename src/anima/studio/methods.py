"""Which methods can run here: every registered method, ready or with the reason it is not.

Readiness is what ``anima weights`` reports: a method without components is always ready; one
with components needs each non-optional component's files in the weights directory, unless the
weights are a built-in set (``tiny``, ``toy``) the method supports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anima.methods.registry import get_method, method_names
from anima.weights import Weights


@dataclass(frozen=True)
class MethodStatus:
    """One method as the studio lists it."""

    name: str
    summary: str
    ready: bool
    reason: str  # why it cannot run ("" when ready)


def method_status(name: str, weights: Weights) -> MethodStatus:
    """Whether ``name`` can run with ``weights`` (with its default options or, for a method
    whose options choose its models, any of its `Method.weight_variants`), and if not, why."""
    cls = get_method(name)
    variants = [None, *cls.weight_variants().values()]
    missing = [cls.missing_components(weights, options) for options in variants]
    if not all(missing):
        return MethodStatus(name, cls.summary, True, "")
    where = f"in {weights.root}" if weights.root else "(start the studio with --weights DIR)"
    folders = ", ".join(f"{c.subdir}/" for c in missing[0])
    return MethodStatus(name, cls.summary, False, f"needs weights: {folders} {where}")


def method_statuses(weights: Weights) -> list[MethodStatus]:
    """Every registered method, ready ones first (then by name)."""
    statuses = [method_status(name, weights) for name in method_names()]
    return sorted(statuses, key=lambda s: (not s.ready, s.name))


def ready_variant(name: str, weights: Weights) -> tuple[dict[str, Any] | None, str]:
    """The options a run of ``name`` needs to use the models that are here, and their name:
    (None, "") when the default options can run (or none can), else the first ready
    `Method.weight_variants` (e.g. AnyI2V's ``{"backbone": "modelscope"}``)."""
    cls = get_method(name)
    if not cls.missing_components(weights):
        return None, ""
    for variant, options in cls.weight_variants().items():
        if not cls.missing_components(weights, options):
            return options.model_dump(mode="json", exclude_defaults=True), variant
    return None, ""
