"""Magnitude pruning: remove the smallest |W|, no compensation (the floor every method must beat)."""

from __future__ import annotations

import torch

from llm_surgeon.methods.base import NM, STRUCTURED, UNSTRUCTURED, PruningMethod


class MagnitudePruning(PruningMethod):
    """Squared magnitude per element; per structure, the squared L2 norm of its rows and columns."""

    name = "magnitude"
    summary = "smallest |W| first (global, or per layer with --magnitude-scope layer), no update"
    curvature = "none"
    granularities = frozenset({UNSTRUCTURED, NM, STRUCTURED})

    def __init__(self, config=None):
        self.scope = config.magnitude_scope if config else "global"

    def selection_scope(self) -> str:
        return self.scope

    def element_costs(self, W: torch.Tensor, factors) -> torch.Tensor:
        return W.float().pow(2)

    def row_costs(self, W, bias, factors):
        costs = W.pow(2).sum(1)
        return costs if bias is None else costs + bias.to(W.dtype) ** 2

    def column_costs(self, W, factors):
        return W.pow(2).sum(0)

    def row_set_cost(self, W, rows, factors):
        return W[rows].pow(2).sum()

    def column_set_cost(self, W, cols, factors):
        return W[:, cols].pow(2).sum()
