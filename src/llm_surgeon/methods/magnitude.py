"""Magnitude pruning: remove the smallest |W|, no compensation (the floor every method must beat)."""

from __future__ import annotations

import torch

from llm_surgeon.math.kfac import DampedFactors
from llm_surgeon.methods.base import PruningMethod


class MagnitudePruning(PruningMethod):
    name = "magnitude"
    needs_curvature = False

    def element_costs(self, W: torch.Tensor, factors: DampedFactors | None) -> torch.Tensor:
        return W.float().pow(2)
