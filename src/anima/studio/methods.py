"""Which methods can run here: every registered method, ready or with the reason it is not.

Readiness is what ``anima weights`` reports: a method without components is always ready; one
with components needs each non-optional component's files in the weights directory, unless the
weights are a built-in set (``tiny``, ``toy``) the method supports.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """Whether ``name`` can run with ``weights``, and if not, why."""
    cls = get_method(name)
    if not cls.components or weights.builtin in cls.builtin_weights:
        return MethodStatus(name, cls.summary, True, "")
    missing = [c.subdir for c in cls.components if not c.optional and not c.present(weights.root)]
    if not missing:
        return MethodStatus(name, cls.summary, True, "")
    where = f"in {weights.root}" if weights.root else "(start the studio with --weights DIR)"
    folders = ", ".join(f"{m}/" for m in missing)
    return MethodStatus(name, cls.summary, False, f"needs weights: {folders} {where}")


def method_statuses(weights: Weights) -> list[MethodStatus]:
    """Every registered method, ready ones first (then by name)."""
    statuses = [method_status(name, weights) for name in method_names()]
    return sorted(statuses, key=lambda s: (not s.ready, s.name))
