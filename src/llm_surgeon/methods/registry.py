"""The method registry: the single list of pruning methods, in the order tables show them.

Adding a method is one class (a :class:`~llm_surgeon.methods.base.PruningMethod` or
:class:`~llm_surgeon.methods.base.LayerwiseMethod`) and one :func:`register_method` call;
the CLI choices, the config validation and the bench grid read this registry.
"""

from __future__ import annotations

from llm_surgeon.errors import ConfigError
from llm_surgeon.methods.base import MethodBase
from llm_surgeon.methods.options import nearest

_METHODS: dict[str, type[MethodBase]] = {}


def register_method(cls: type[MethodBase], replace: bool = False) -> type[MethodBase]:
    """Add ``cls`` under ``cls.name`` (usable as a class decorator)."""
    if cls.name in _METHODS and not replace:
        raise ValueError(f"a method named {cls.name!r} is already registered; pass replace=True")
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Registered method names, in registration order (ours first, then the baselines)."""
    return list(_METHODS)


def method_class(name: str) -> type[MethodBase]:
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(_METHODS)}{nearest(name, _METHODS)}")
    return _METHODS[name]


def get_method(name: str, config=None) -> MethodBase:
    """An instance of the method ``name`` configured from ``config`` (a PruneConfig or ``None``)."""
    return method_class(name)(config)


def methods_help() -> str:
    """``name: summary`` for every method, for ``--help``."""
    return "; ".join(f"{name}: {cls.summary}" for name, cls in _METHODS.items())
