"""Which process computes each layer's costs and update in a shot, and how the others learn the results.

Alone, a process computes every layer (:data:`EVERY_LAYER_HERE`). Over several ranks, each layer can
have one owner (:class:`llm_surgeon.curvature.distributed.OwnedLayers`): the owner alone damps and inverts the
layer's factors, turns them into what the costs read and runs the update. The selectors ask only this
interface, so the global threshold is the same code whatever the placement: every rank receives every
layer's cost inputs (two vectors per layer for LLM Surgeon, not the factors) and the current weights,
and makes the same exact selection from the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class UpdateTotals:
    """What the compensation of one shot achieved, summed over layers."""

    iterations: list[int]
    loss_no_update: float = 0.0
    loss_after: float = 0.0


DeviceOf = Callable[[str], torch.device]


def moved(value: Any, device: torch.device | str) -> Any:
    """``value`` (a tensor, ``None``, or a dataclass of them such as a layer's cost inputs) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: moved(getattr(value, f.name), device)
                                             for f in dataclasses.fields(value) if f.init})
    return value


class LayerPlacement:
    """Every layer computed by this process; nothing to share (one process, or ranks that all compute
    every layer from the same all-reduced factors)."""

    every_layer_here = True

    def here(self, name: str) -> bool:
        """Whether this process computes layer ``name``'s costs and update."""
        return True

    def share_cost_inputs(self, inputs: dict[str, Any], device_of: DeviceOf) -> dict[str, Any]:
        """Every layer's cost inputs, from those computed here (``inputs``), each beside its layer."""
        return inputs

    def share_weights(self, linears: dict[str, nn.Linear]) -> None:
        """Give every process the updated weights of every layer."""

    def share_totals(self, totals: UpdateTotals) -> UpdateTotals:
        """The update totals of all processes combined."""
        return totals


EVERY_LAYER_HERE = LayerPlacement()
