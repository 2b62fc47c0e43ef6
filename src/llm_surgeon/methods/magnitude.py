"""Magnitude pruning: remove the smallest |W|, no compensation (the floor every method must beat)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_surgeon.curvature.kinds import NO_CURVATURE
from llm_surgeon.methods.base import NM, STRUCTURED, UNSTRUCTURED, PruningMethod
from llm_surgeon.methods.options import MethodOptions, check_choice, option

MAGNITUDE_SCOPES = ("global", "layer")


@dataclass
class MagnitudeOptions(MethodOptions):
    magnitude_scope: str = option(MAGNITUDE_SCOPES[0], "magnitude: one threshold across layers, or the same "
                                  "fraction in every layer", choices=MAGNITUDE_SCOPES)

    @classmethod
    def check(cls, config) -> None:
        check_choice(config.magnitude_scope, MAGNITUDE_SCOPES, "magnitude scope")


class MagnitudePruning(PruningMethod):
    """Squared magnitude per element; per structure, the squared L2 norm of its rows and columns."""

    name = "magnitude"
    options = MagnitudeOptions
    summary = "smallest |W| first (global, or per layer with --magnitude-scope layer), no update"
    curvature = NO_CURVATURE
    granularities = frozenset({UNSTRUCTURED, NM, STRUCTURED})

    def __init__(self, config=None):
        self.scope = (config or MagnitudeOptions()).magnitude_scope

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
