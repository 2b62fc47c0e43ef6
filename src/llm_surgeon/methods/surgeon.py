"""LLM Surgeon: Kronecker-factored OBS costs and the correlated Kronecker OBS update."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_surgeon.math import structured as rows_cols
from llm_surgeon.math.costs import diagonal_blocks, element_costs, nm_joint_choice
from llm_surgeon.math.kfac import DampedFactors
from llm_surgeon.math.obs import UpdateStats, kronecker_obs_update, removed_set_obs_update
from llm_surgeon.methods.base import (
    NM,
    STRUCTURE_COSTS,
    STRUCTURED,
    UNSTRUCTURED,
    UPDATE_SOLVERS,
    UPDATE_STARTS,
    PruningMethod,
)


@dataclass(frozen=True)
class InverseDiagonals:
    """``diag(G⁻¹)`` and ``diag(A⁻¹)`` of one layer: all its element costs need (and, for joint N:M costs,
    the ``m x m`` blocks of ``A⁻¹`` on the diagonal, ``(in // m, m, m)``)."""

    G_inv: torch.Tensor
    A_inv: torch.Tensor
    A_inv_blocks: torch.Tensor | None = None


class SurgeonPruning(PruningMethod):
    name = "surgeon"
    summary = "LLM Surgeon (ours): Kronecker OBS costs, global threshold, correlated update, multi-shot"
    curvature = "kfac_inverse"
    granularities = frozenset({UNSTRUCTURED, NM, STRUCTURED})

    def __init__(self, config=None):
        self.update_iterations = config.update_iterations if config else 20
        self.update_tolerance = config.update_tolerance if config else 1e-3
        self.warm_start = (config.update_start if config else UPDATE_STARTS[0]) == "independent"
        """PCG starts from the independent single-weight updates (the default; BENCHMARKS.md: never a worse
        quadratic, 28.75 against 28.86 in one shot to 50%) or from the removed weights zeroed."""
        self.removed_set = (config.update_solver if config else UPDATE_SOLVERS[0]) == "removed"
        """CG on the removed weights' multipliers instead of PCG on the kept weights (``--update-solver``)."""
        self.outputs_only = (config.structure_costs if config else STRUCTURE_COSTS[0]) == "outputs"
        """Structured: only the output projections' columns are priced and compensated (``--structure-costs``)."""
        joint = config is not None and config.nm is not None and config.nm_costs == "joint"
        self.joint_group = config.nm[1] if joint else None
        """N:M: the group width whose weights are priced together (``--nm-costs joint``, the default); None: one by
        one (``--nm-costs independent``, and every other granularity)."""

    def cost_inputs(self, factors: DampedFactors) -> InverseDiagonals:
        """The costs read only the inverses' diagonals: two vectors per layer instead of four matrices (and
        ``A⁻¹``'s diagonal blocks of the group width for joint N:M costs)."""
        blocks = None if self.joint_group is None else diagonal_blocks(factors.A_inv, self.joint_group).clone()
        return InverseDiagonals(factors.G_inv.diagonal().clone(), factors.A_inv.diagonal().clone(), blocks)

    def nm_choice(self, W, inputs, removed, n, m):
        """With ``--nm-costs joint``, each group's ``n`` weights priced together (their inputs' correlation in
        ``A⁻¹`` counted, :func:`~llm_surgeon.math.costs.nm_joint_choice`); else the summed single costs."""
        if self.joint_group is None:
            return super().nm_choice(W, inputs, removed, n, m)
        return nm_joint_choice(W, inputs.G_inv, inputs.A_inv_blocks, removed, n, m)

    def element_costs(self, W: torch.Tensor, factors: DampedFactors | InverseDiagonals) -> torch.Tensor:
        if isinstance(factors, InverseDiagonals):
            return element_costs(W, factors.G_inv, factors.A_inv)
        return element_costs(W, factors.G_inv.diagonal(), factors.A_inv.diagonal())

    def update(self, W: torch.Tensor, remove: torch.Tensor, factors: DampedFactors
               ) -> tuple[torch.Tensor, UpdateStats | None]:
        if self.removed_set:
            return removed_set_obs_update(W, remove, factors.G, factors.A, factors.G_inv, factors.A_inv,
                                          max_iterations=self.update_iterations, tolerance=self.update_tolerance)
        return kronecker_obs_update(
            W, remove, factors.G, factors.A, factors.G_inv, factors.A_inv,
            max_iterations=self.update_iterations, tolerance=self.update_tolerance, warm_start=self.warm_start,
        )

    def reads_row_factors(self) -> bool:
        return not self.outputs_only

    def row_costs(self, W, bias, factors):
        if self.outputs_only:
            return torch.zeros(W.shape[0], dtype=W.dtype, device=W.device)
        return rows_cols.row_costs(W, factors.A, factors.G_inv)

    def column_costs(self, W, factors):
        return rows_cols.column_costs(W, factors.G, factors.A_inv)

    def row_set_cost(self, W, rows, factors):
        if self.outputs_only:
            return torch.zeros((), dtype=W.dtype, device=W.device)
        return rows_cols.row_set_cost(W, rows, factors.A, factors.G_inv)

    def column_set_cost(self, W, cols, factors):
        return rows_cols.column_set_cost(W, cols, factors.G, factors.A_inv)

    def remove_rows(self, W, rows, factors):
        if self.outputs_only:  # these rows feed only removed columns: nothing to compensate
            return super().remove_rows(W, rows, factors)
        return rows_cols.remove_rows(W, rows, factors.G_inv)

    def remove_columns(self, W, cols, factors):
        return rows_cols.remove_columns(W, cols, factors.A_inv)
