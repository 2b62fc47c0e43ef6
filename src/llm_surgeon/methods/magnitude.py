"""Magnitude pruning: remove the smallest |W|, no compensation (the floor every method must beat)."""

from __future__ import annotations

import torch

from llm_surgeon.methods.base import PruningMethod


class MagnitudePruning(PruningMethod):
    name = "magnitude"
    curvature = "none"

    def element_costs(self, W: torch.Tensor, factors) -> torch.Tensor:
        return W.float().pow(2)
