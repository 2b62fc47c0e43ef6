"""LLM Surgeon: Kronecker-factored OBS costs and the correlated Kronecker OBS update."""

from __future__ import annotations

import torch

from llm_surgeon.math.costs import element_costs
from llm_surgeon.math.kfac import DampedFactors
from llm_surgeon.math.obs import UpdateStats, kronecker_obs_update
from llm_surgeon.methods.base import PruningMethod


class SurgeonPruning(PruningMethod):
    name = "surgeon"
    curvature = "kfac_inverse"

    def __init__(self, config=None):
        self.update_iterations = config.update_iterations if config else 20
        self.update_tolerance = config.update_tolerance if config else 1e-3

    def element_costs(self, W: torch.Tensor, factors: DampedFactors) -> torch.Tensor:
        return element_costs(W, factors.G_inv.diagonal(), factors.A_inv.diagonal())

    def update(self, W: torch.Tensor, remove: torch.Tensor, factors: DampedFactors
               ) -> tuple[torch.Tensor, UpdateStats | None]:
        return kronecker_obs_update(
            W, remove, factors.G, factors.A, factors.G_inv, factors.A_inv,
            max_iterations=self.update_iterations, tolerance=self.update_tolerance,
        )
