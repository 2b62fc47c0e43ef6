"""Turning per-layer costs into removal masks for one shot.

Already-removed weights are forced back into the selection (their cost is ``-inf``), so
masks only ever grow across shots. :func:`select_unstructured` and :func:`select_nm` take every
layer's costs at once: they are the explicit references. The shot loop's selectors
(:mod:`llm_surgeon.engine.selectors`) compute the same masks from costs made one layer at a time, with
:func:`force_removed` and :func:`nm_layer_mask` below and a streamed threshold, and are tested
equal to these.
"""

from __future__ import annotations

import torch

from llm_surgeon.math.costs import nm_group_costs, nm_group_element_mask
from llm_surgeon.math.threshold import select_cheapest


def force_removed(costs: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Costs with the already-removed entries at ``-inf``, so that they are selected first."""
    return costs.masked_fill(removed, float("-inf"))


def _force_removed(costs: dict[str, torch.Tensor], removed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: force_removed(c, removed[name]) for name, c in costs.items()}


def chosen_elements(group_choice: torch.Tensor, chosen_groups: torch.Tensor, removed: torch.Tensor, m: int
                    ) -> torch.Tensor:
    """One layer's mask: the elements each chosen group would lose (``group_choice``), plus what was removed."""
    group_mask = chosen_groups.reshape(group_choice.shape[0], -1).repeat_interleave(m, dim=1)
    return (group_choice & group_mask) | removed


def nm_layer_mask(forced: torch.Tensor, chosen_groups: torch.Tensor, removed: torch.Tensor, n: int, m: int
                  ) -> torch.Tensor:
    """One layer's mask: the ``n`` cheapest elements of every chosen group, plus what was removed before."""
    return chosen_elements(nm_group_element_mask(forced, n, m), chosen_groups, removed, m)


def select_unstructured(
    costs: dict[str, torch.Tensor],
    removed: dict[str, torch.Tensor],
    sparsity: float,
    scope: str = "global",
) -> dict[str, torch.Tensor]:
    """Masks with ``round(sparsity * size)`` removed weights, by one global threshold or per layer."""
    forced = _force_removed(costs, removed)
    if scope == "layer":
        return {
            name: select_cheapest([c], round(sparsity * c.numel()))[0] for name, c in forced.items()
        }
    total = sum(c.numel() for c in forced.values())
    masks = select_cheapest(list(forced.values()), round(sparsity * total))
    return dict(zip(forced, masks, strict=True))


def select_nm(
    costs: dict[str, torch.Tensor],
    removed: dict[str, torch.Tensor],
    n: int,
    m: int,
    group_fraction: float,
    scope: str = "global",
) -> dict[str, torch.Tensor]:
    """Bring the cheapest ``group_fraction`` of all groups into N:M form.

    A group is ``m`` consecutive inputs of one row; its cost is the sum of its ``n``
    cheapest element costs. Groups chosen in an earlier shot have cost ``-inf`` and
    keep exactly the elements removed then.
    """
    forced = _force_removed(costs, removed)
    group_costs = {name: nm_group_costs(c, n, m) for name, c in forced.items()}
    if scope == "layer":
        chosen = {
            name: select_cheapest([g], round(group_fraction * g.numel()))[0] for name, g in group_costs.items()
        }
    else:
        total = sum(g.numel() for g in group_costs.values())
        chosen = dict(zip(group_costs, select_cheapest(list(group_costs.values()), round(group_fraction * total)),
                          strict=True))
    return {name: nm_layer_mask(c, chosen[name], removed[name], n, m) for name, c in forced.items()}


def nm_violations(W: torch.Tensor, n: int, m: int) -> int:
    """Number of groups of ``m`` consecutive inputs of a row holding fewer than ``n`` zeros."""
    rows, cols = W.shape
    if cols % m:
        raise ValueError(f"input width {cols} is not a multiple of {m}")
    zeros = (W.reshape(rows, cols // m, m) == 0).sum(-1)
    return int((zeros < n).sum())
