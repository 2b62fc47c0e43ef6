"""The interfaces every pruning method implements.

Two kinds: :class:`PruningMethod` plugs into the shared multi-shot loop (costs, one global
selection, an optional update); :class:`LayerwiseMethod` prunes block by block on the
inputs of the already-pruned blocks (SparseGPT, Wanda) in a single pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from llm_surgeon.math.obs import UpdateStats


class PruningMethod(ABC):
    """Per-layer costs and compensation; selection and scheduling are not its business."""

    name: str
    curvature: str = "none"
    """What the costs need: ``"none"``, ``"inputs"`` (A from forward passes), ``"kfac"`` (A and G),
    or ``"kfac_inverse"`` (damped A, G and their inverses)."""
    diagonal_only: bool = False
    """The costs read only diag(A) and diag(G), so only those are collected (O(d) per token, not O(d²))."""

    def __init__(self, config=None):  # noqa: B027 - an optional hook, not an abstract one
        """Methods with settings read them from the run's :class:`~llm_surgeon.config.PruneConfig`."""

    @abstractmethod
    def element_costs(self, W: torch.Tensor, factors) -> torch.Tensor:
        """Cost of removing each element of ``W`` (lower is removed first)."""

    def update(self, W: torch.Tensor, remove: torch.Tensor, factors) -> tuple[torch.Tensor, UpdateStats | None]:
        """New weights with exact zeros on ``remove``; by default no compensation."""
        return W.masked_fill(remove, 0.0), None


class LayerwiseMethod(ABC):
    """A one-shot method that prunes each Linear from its own input Hessian ``H = Σ x xᵀ``."""

    name: str

    def __init__(self, config=None):  # noqa: B027 - an optional hook, not an abstract one
        """Methods with settings read them from the run's :class:`~llm_surgeon.config.PruneConfig`."""

    @abstractmethod
    def prune_layer(self, W: torch.Tensor, H: torch.Tensor, sparsity: float, nm: tuple[int, int] | None
                    ) -> torch.Tensor:
        """Pruned ``W`` with exact zeros."""


def get_method(name: str, config) -> PruningMethod | LayerwiseMethod:
    from llm_surgeon.methods import METHODS

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}")
    return METHODS[name](config)
