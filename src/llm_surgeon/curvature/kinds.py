"""Curvature kinds: what a method's costs need from the calibration passes, as objects the loop asks.

A method declares one kind (``curvature = KFAC_INVERSE``); the shot loop, the memory model and the
distributed reduce ask the kind whether a pass runs at all, whether it needs a backward pass (the
gradient factor ``G``) and whether the factors are damped and inverted before the costs, instead of
comparing names. A new kind (say eigenvalue-corrected KFAC) is one :class:`CurvatureKind` here and one
:func:`register_curvature_kind` call; docs/architecture.md says what else it would touch.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_surgeon.errors import ConfigError


@dataclass(frozen=True)
class CurvatureKind:
    """One kind of curvature: its name (as reports and ``--help`` show it) and what collecting it takes."""

    name: str
    collects: bool
    """Whether a calibration pass runs at all (magnitude pruning needs none)."""
    gradients: bool
    """Whether the pass runs backward to collect ``G = E[g gᵀ]`` beside ``A = E[a aᵀ]`` (else forward only)."""
    inverses: bool
    """Whether each layer's factors are damped and inverted before its costs and update are computed."""

    def __str__(self) -> str:
        return self.name


NO_CURVATURE = CurvatureKind("none", collects=False, gradients=False, inverses=False)
INPUTS = CurvatureKind("inputs", collects=True, gradients=False, inverses=False)
"""``A`` from forward passes alone (L-OBD, SparseGPT, Wanda, ZipLM, FLAP)."""
KFAC = CurvatureKind("kfac", collects=True, gradients=True, inverses=False)
"""``A`` and ``G``, raw (K-OBD reads their diagonals)."""
KFAC_INVERSE = CurvatureKind("kfac_inverse", collects=True, gradients=True, inverses=True)
"""``A`` and ``G`` damped, with their inverses (LLM Surgeon)."""

_KINDS: dict[str, CurvatureKind] = {}


def register_curvature_kind(kind: CurvatureKind) -> CurvatureKind:
    """Make ``kind`` known by its name (reports and checkpoints record names)."""
    if kind.name in _KINDS and _KINDS[kind.name] != kind:
        raise ValueError(f"a different curvature kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def curvature_kind(name: str) -> CurvatureKind:
    """The registered kind called ``name``."""
    if name not in _KINDS:
        raise ConfigError(f"unknown curvature kind {name!r}; known: {', '.join(_KINDS)}")
    return _KINDS[name]


for _kind in (NO_CURVATURE, INPUTS, KFAC, KFAC_INVERSE):
    register_curvature_kind(_kind)
