"""The interface every pruning method implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from llm_surgeon.math.kfac import DampedFactors
from llm_surgeon.math.obs import UpdateStats


class PruningMethod(ABC):
    """Per-layer costs and compensation; selection and scheduling are not its business."""

    name: str
    needs_curvature: bool = False

    @abstractmethod
    def element_costs(self, W: torch.Tensor, factors: DampedFactors | None) -> torch.Tensor:
        """Cost of removing each element of ``W`` (lower is removed first)."""

    def update(
        self, W: torch.Tensor, remove: torch.Tensor, factors: DampedFactors | None
    ) -> tuple[torch.Tensor, UpdateStats | None]:
        """New weights with exact zeros on ``remove``; by default no compensation."""
        return W.masked_fill(remove, 0.0), None


def get_method(name: str, config) -> PruningMethod:
    from llm_surgeon.methods.magnitude import MagnitudePruning
    from llm_surgeon.methods.surgeon import SurgeonPruning

    if name == "surgeon":
        return SurgeonPruning(config.update_iterations, config.update_tolerance)
    if name == "magnitude":
        return MagnitudePruning()
    raise ValueError(f"unknown method {name!r}")
