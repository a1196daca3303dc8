"""Methods by name. Built-in methods are imported on first use so that looking one up never
imports another's dependencies."""

from __future__ import annotations

import importlib

from anima.errors import InputError
from anima.methods.base import Method
from anima.weights import Weights

# name -> module that defines (and registers) it; `default_method` prefers them in this order
_BUILTIN = {
    "coarse": "anima.methods.coarse",
    "levitor": "anima.methods.levitor",
    "xdyna": "anima.methods.xdyna",
    "anyi2v": "anima.methods.anyi2v",
    "i2v3d": "anima.methods.i2v3d",
    "animate124": "anima.methods.animate124",
}
_REGISTRY: dict[str, type[Method]] = {}

DEFAULT_METHOD = "coarse"


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get_method(name: str, where: str = "--method") -> type[Method]:
    """The method class called ``name``; an unknown name is an input error at ``where``."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        available = ", ".join(method_names())
        raise InputError(f"unknown method '{name}' (available: {available})", where)
    return _REGISTRY[name]


def default_method(weights: Weights) -> str:
    """The weight-free ``coarse`` method unless weights are configured for a learned one (the
    first such in the table of built-ins, then other registered methods by name)."""
    others = sorted(set(_REGISTRY) - set(_BUILTIN))
    for name in [*_BUILTIN, *others]:
        cls = get_method(name)
        if cls.components and weights.configured and not cls.missing_components(weights):
            return name
    return DEFAULT_METHOD
