"""LLM Surgeon: Kronecker-factored OBS costs and the correlated Kronecker OBS update."""

from __future__ import annotations

import torch

from llm_surgeon.math.costs import element_costs
from llm_surgeon.math.kfac import DampedFactors
from llm_surgeon.math.obs import UpdateStats, kronecker_obs_update
from llm_surgeon.methods.base import PruningMethod


class SurgeonPruning(PruningMethod):
    name = "surgeon"
    needs_curvature = True

    def __init__(self, update_iterations: int = 20, update_tolerance: float = 1e-3):
        self.update_iterations = update_iterations
        self.update_tolerance = update_tolerance

    def element_costs(self, W: torch.Tensor, factors: DampedFactors | None) -> torch.Tensor:
        assert factors is not None
        return element_costs(W, factors.G_inv.diagonal(), factors.A_inv.diagonal())

    def update(
        self, W: torch.Tensor, remove: torch.Tensor, factors: DampedFactors | None
    ) -> tuple[torch.Tensor, UpdateStats | None]:
        assert factors is not None
        return kronecker_obs_update(
            W, remove, factors.G, factors.A, factors.G_inv, factors.A_inv,
            max_iterations=self.update_iterations, tolerance=self.update_tolerance,
        )
