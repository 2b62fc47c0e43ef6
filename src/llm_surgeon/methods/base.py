"""The interfaces every pruning method implements, and what each one declares about itself.

Two kinds: :class:`PruningMethod` plugs into the shared multi-shot loop (costs, one global
selection, an optional update); :class:`LayerwiseMethod` prunes block by block on the
inputs of the already-pruned blocks (SparseGPT, Wanda) in a single pass. Each class says
what it needs and supports as class attributes, so the loop, the CLI and the bench ask the
method instead of testing its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from llm_surgeon.curvature.kinds import INPUTS, NO_CURVATURE, CurvatureKind
from llm_surgeon.math.costs import nm_group_costs, nm_group_element_mask
from llm_surgeon.math.obs import UpdateStats
from llm_surgeon.math.selection import force_removed

UNSTRUCTURED, NM, STRUCTURED = "unstructured", "nm", "structured"
"""Granularity kinds a method can support (``nm`` stands for every N:M pattern)."""
STRUCTURE_COSTS = ("outputs", "all")
"""How structured LLM Surgeon prices a structure (``--structure-costs``); the first is the default."""
UPDATE_STARTS = ("independent", "zeroed")
"""Where LLM Surgeon's correlated update starts its PCG (``--update-start``); the first is the default."""
NM_COSTS = ("joint", "independent")
"""How LLM Surgeon prices an N:M group (``--nm-costs``): the N weights' joint OBS cost, correlations of the group's
inputs included (the first, the default: BENCHMARKS.md, 59.68 against 62.35 at 2:4 in 5 shots), or the sum of its
N cheapest single-weight costs (the paper's)."""
UPDATE_SOLVERS = ("kept", "removed")
"""How LLM Surgeon's correlated update is solved (``--update-solver``): PCG on the kept weights (the default) or CG
on the removed weights' multipliers (:func:`~llm_surgeon.math.obs.removed_set_obs_update`)."""


class MethodBase(ABC):
    """What every method declares (class attributes) and how it is configured."""

    name: ClassVar[str]
    options: ClassVar[type | None] = None
    """The dataclass of this method's own settings (:mod:`llm_surgeon.methods.options`), or ``None``; a method may
    share one with another (SparseGPT's and ZipLM's dampening of ``X Xᵀ``)."""
    summary: ClassVar[str] = ""
    """One line for ``--help`` and the README."""
    curvature: ClassVar[CurvatureKind] = NO_CURVATURE
    """What the costs need (:mod:`llm_surgeon.curvature.kinds`): nothing, ``INPUTS`` (A from forward passes),
    ``KFAC`` (A and G) or ``KFAC_INVERSE`` (damped A, G and their inverses)."""
    diagonal_only: ClassVar[bool] = False
    """The costs read only diag(A) and diag(G), so only those are collected (O(d) per token, not O(d²))."""
    input_means: ClassVar[bool] = False
    """The costs or the update also read each layer's mean input (``factors.mean``)."""
    multi_shot: ClassVar[bool] = True
    """Whether ``shots`` applies; a one-shot method runs a single shot whatever it says."""
    granularities: ClassVar[frozenset[str]] = frozenset({UNSTRUCTURED, NM})

    def __init__(self, config=None):  # noqa: B027 - an optional hook, not an abstract one
        """Methods with settings read them from the run's :class:`~llm_surgeon.config.PruneConfig`."""

    @classmethod
    def supports(cls, granularity_kind: str) -> bool:
        return granularity_kind in cls.granularities

    @classmethod
    def needs_calibration(cls) -> bool:
        """Whether the method itself reads calibration text (a correction may still need it)."""
        return cls.curvature.collects

    @classmethod
    def holds_full_factors(cls) -> bool:
        """Whether a shot keeps full A and G matrices (what the memory check sizes)."""
        return cls.curvature.collects and not cls.diagonal_only

    def selection_scope(self) -> str:
        """``"global"`` (one threshold across layers) or ``"layer"`` (the same fraction in every layer)."""
        return "global"

    def prepare_model(self, model, adapter) -> None:  # noqa: B027 - an optional hook
        """Before any pass: raise a clear error when the method cannot apply to this model, or make it ready
        without changing what it computes (FLAP: the zero biases its compensation will fill)."""


class PruningMethod(MethodBase):
    """Per-layer costs and compensation; selection and scheduling are not its business.

    Element costs serve unstructured and N:M selection. A method that also supports
    ``structured`` implements the row/column costs and removals below; ``factors`` are then
    the layer's damped factors in float64 (or ``None`` for a method without curvature).
    """

    structure_ranking: ClassVar[str] = "per_parameter"
    """How structures of different blocks compare: ``"per_parameter"`` (cost over the parameters a structure
    removes) or ``"standardized"`` (each block's scores standardised per kind, ranked as they are: FLAP)."""

    @abstractmethod
    def element_costs(self, W: torch.Tensor, factors) -> torch.Tensor:
        """Cost of removing each element of ``W`` (lower is removed first); ``factors`` as the layer's
        factors or what :meth:`cost_inputs` made of them."""

    def cost_inputs(self, factors):
        """The part of a layer's factors that :meth:`element_costs` reads, kept for every layer through the
        selection of a shot; override to keep less than the whole factors (e.g. their diagonals)."""
        return factors

    def nm_choice(self, W: torch.Tensor, inputs, removed: torch.Tensor, n: int, m: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each group's cost of being brought into N:M form, ``(rows, cols // m)``, ``-inf`` for a group with
        weights removed already, and the weights each group would lose, ``(rows, cols)``, the removed ones
        included. By default the ``n`` cheapest single-weight costs of a group, summed."""
        forced = force_removed(self.element_costs(W, inputs), removed)
        return nm_group_costs(forced, n, m), nm_group_element_mask(forced, n, m) | removed

    def update(self, W: torch.Tensor, remove: torch.Tensor, factors) -> tuple[torch.Tensor, UpdateStats | None]:
        """New weights with exact zeros on ``remove``; by default no compensation."""
        return W.masked_fill(remove, 0.0), None

    def reads_row_factors(self) -> bool:
        """Whether structured costs and removals read the factors of the layers whose rows a structure owns
        (q/k/v, gate/up). A method that prices a structure by its output columns alone says no, and the shot
        collects curvature for the output projections only (same result, less work and memory)."""
        return True

    def row_costs(self, W: torch.Tensor, bias: torch.Tensor | None, factors) -> torch.Tensor:
        """Cost of removing each single row (with its bias entry)."""
        raise NotImplementedError(f"{self.name} has no structured costs")

    def column_costs(self, W: torch.Tensor, factors) -> torch.Tensor:
        """Cost of removing each single column."""
        raise NotImplementedError(f"{self.name} has no structured costs")

    def row_set_cost(self, W: torch.Tensor, rows: torch.Tensor, factors) -> torch.Tensor:
        """Joint cost of removing the rows ``rows`` together."""
        raise NotImplementedError(f"{self.name} has no structured costs")

    def column_set_cost(self, W: torch.Tensor, cols: torch.Tensor, factors) -> torch.Tensor:
        """Joint cost of removing the columns ``cols`` together."""
        raise NotImplementedError(f"{self.name} has no structured costs")

    def remove_rows(self, W: torch.Tensor, rows: torch.Tensor, factors) -> torch.Tensor:
        """``W`` with ``rows`` zeroed (and, for methods with an update, the others compensated)."""
        new = W.clone()
        new[rows] = 0
        return new

    def remove_columns(self, W: torch.Tensor, cols: torch.Tensor, factors) -> torch.Tensor:
        """``W`` with ``cols`` zeroed (and, for methods with an update, the others compensated)."""
        new = W.clone()
        new[:, cols] = 0
        return new

    def column_bias_shift(self, W: torch.Tensor, cols: torch.Tensor, factors) -> torch.Tensor | None:
        """What the layer's bias gains when ``cols`` go (``None``: no bias compensation)."""
        return None


class LayerwiseMethod(MethodBase):
    """A one-shot method that prunes each Linear from its own input Hessian ``H = Σ x xᵀ``."""

    multi_shot = False
    curvature = INPUTS

    @classmethod
    def holds_full_factors(cls) -> bool:
        return False  # one block's H at a time

    def selection_scope(self) -> str:
        return "layer"  # every layer pruned to the same fraction, block by block

    @abstractmethod
    def prune_layer(self, W: torch.Tensor, H: torch.Tensor, sparsity: float, nm: tuple[int, int] | None
                    ) -> torch.Tensor:
        """Pruned ``W`` with exact zeros."""

    @abstractmethod
    def layer_flops(self, rows: int, cols: int) -> float:
        """Floating-point work of :meth:`prune_layer` on a ``rows x cols`` layer (``plan`` prices the method's
        time with it; the Hessian is collected apart)."""
