"""LLM Surgeon: Kronecker-factored OBS costs and the correlated Kronecker OBS update."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_surgeon.curvature.kinds import KFAC_INVERSE
from llm_surgeon.errors import ConfigError
from llm_surgeon.math import structured as rows_cols
from llm_surgeon.math.costs import diagonal_blocks, element_costs, nm_joint_choice
from llm_surgeon.math.kfac import DampedFactors
from llm_surgeon.math.obs import UpdateStats, kronecker_obs_update, removed_set_obs_update
from llm_surgeon.methods.base import (
    NM,
    NM_COSTS,
    STRUCTURE_COSTS,
    STRUCTURED,
    UNSTRUCTURED,
    UPDATE_SOLVERS,
    UPDATE_STARTS,
    PruningMethod,
)
from llm_surgeon.methods.options import MethodOptions, check_choice, option, refuse_changed


@dataclass
class SurgeonOptions(MethodOptions):
    """LLM Surgeon's own settings: how the correlated update is solved and how groups and structures are priced."""

    update_iterations: int = option(20, "max PCG iterations of the correlated update per layer and shot")
    update_tolerance: float = option(
        1e-3, "PCG stops when the preconditioned residual falls below this fraction of its start")
    update_start: str = option(
        UPDATE_STARTS[0], "where the correlated update starts: the sum of the removed weights' single-weight OBS "
        "updates (independent; BENCHMARKS.md: worth about 20 PCG steps), or the removed weights zeroed (the paper's)",
        group="research", choices=UPDATE_STARTS)
    update_solver: str = option(
        UPDATE_SOLVERS[0], "how the correlated update is solved: PCG on the kept weights (4 matmuls a step), or CG "
        "on the removed weights' multipliers (2 matmuls a step; a research option, worse in a real run: 30.86 "
        "against 28.75)", group="research", choices=UPDATE_SOLVERS)
    nm_costs: str = option(
        NM_COSTS[0], "N:M surgeon: price a group by the N weights' joint OBS cost, their inputs' correlation "
        "counted (joint; BENCHMARKS.md: 59.68 against 62.35 at 2:4 in 5 shots), or by its N cheapest single-weight "
        "costs summed (independent, the paper's)", group="research", choices=NM_COSTS)
    structure_costs: str = option(
        STRUCTURE_COSTS[0], "structured surgeon: price and update only the output projection's columns, the rows "
        "that fed them zeroed (outputs; BENCHMARKS.md: 30.12 against 43.89 at 80%% kept), or every member of a "
        "structure (all, the paper's)", group="research", choices=STRUCTURE_COSTS)

    @classmethod
    def check(cls, config) -> None:
        if config.update_iterations < 0:
            raise ConfigError(f"update iterations must be >= 0, got {config.update_iterations}")
        check_choice(config.update_start, UPDATE_STARTS, "update start")
        check_choice(config.update_solver, UPDATE_SOLVERS, "update solver")
        check_choice(config.structure_costs, STRUCTURE_COSTS, "structure costs")
        check_choice(config.nm_costs, NM_COSTS, "N:M costs")
        surgeon = config.method == SurgeonPruning.name
        if not surgeon or config.granularity == STRUCTURED:
            refuse_changed(config, cls, ["update_start"], "chooses where to start LLM Surgeon's unstructured / N:M "
                           "update; use --method surgeon without structured granularity, or drop it")
            refuse_changed(config, cls, ["update_solver"], "chooses how to solve LLM Surgeon's unstructured / N:M "
                           "update; use --method surgeon without structured granularity, or drop it")
        if config.update_solver != UPDATE_SOLVERS[0] and config.update_start != UPDATE_STARTS[0]:
            raise ConfigError("--update-solver removed always starts from the independent updates; drop "
                              "--update-start zeroed")
        if config.granularity != STRUCTURED:
            refuse_changed(config, cls, ["structure_costs"], "chooses how structured pruning prices a structure; "
                           "use --granularity structured or drop it")
        if not surgeon or config.nm is None:
            refuse_changed(config, cls, ["nm_costs"], "chooses how LLM Surgeon prices an N:M group; use --method "
                           "surgeon with an N:M granularity such as 2:4, or drop it")


@dataclass(frozen=True)
class InverseDiagonals:
    """``diag(G⁻¹)`` and ``diag(A⁻¹)`` of one layer: all its element costs need (and, for joint N:M costs,
    the ``m x m`` blocks of ``A⁻¹`` on the diagonal, ``(in // m, m, m)``)."""

    G_inv: torch.Tensor
    A_inv: torch.Tensor
    A_inv_blocks: torch.Tensor | None = None


class SurgeonPruning(PruningMethod):
    name = "surgeon"
    options = SurgeonOptions
    summary = "LLM Surgeon (ours): Kronecker OBS costs, global threshold, correlated update, multi-shot"
    curvature = KFAC_INVERSE
    granularities = frozenset({UNSTRUCTURED, NM, STRUCTURED})

    def __init__(self, config=None):
        config = config or SurgeonOptions()
        self.update_iterations = config.update_iterations
        self.update_tolerance = config.update_tolerance
        self.warm_start = config.update_start == "independent"
        """PCG starts from the independent single-weight updates (the default; BENCHMARKS.md: never a worse
        quadratic, 28.75 against 28.86 in one shot to 50%) or from the removed weights zeroed."""
        self.removed_set = config.update_solver == "removed"
        """CG on the removed weights' multipliers instead of PCG on the kept weights (``--update-solver``)."""
        self.outputs_only = config.structure_costs == "outputs"
        """Structured: only the output projections' columns are priced and compensated (``--structure-costs``)."""
        nm = getattr(config, "nm", None)
        self.joint_group = nm[1] if nm is not None and config.nm_costs == "joint" else None
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
