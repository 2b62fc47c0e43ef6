"""Closed-form OBS removal costs under a Kronecker-factored Fisher ``F = G ⊗ A``.

Removing element ``(i, j)`` with the optimal compensating update of all other weights
raises the quadratic loss by ``½ W_ij² / [F⁻¹]_{(ij),(ij)} = ½ W_ij² / ([G⁻¹]_ii [A⁻¹]_jj)``.
"""

from __future__ import annotations

import torch


def element_costs(W: torch.Tensor, G_inv_diag: torch.Tensor, A_inv_diag: torch.Tensor) -> torch.Tensor:
    """Per-element cost ``½ W² / ([G⁻¹]_ii [A⁻¹]_jj)`` (same shape as ``W``)."""
    work = torch.promote_types(W.dtype, torch.float32)
    denom = G_inv_diag.to(work)[:, None] * A_inv_diag.to(work)[None, :]
    return 0.5 * W.to(work).pow(2) / denom


def nm_group_costs(costs: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Cost of bringing each group of ``m`` consecutive inputs of a row into N:M form.

    Returns ``(rows, cols // m)``: the sum of the ``n`` cheapest element costs of each
    group (the elements that would be removed). Groups never cross a row boundary because
    the reshape is done per row.
    """
    rows, cols = costs.shape
    grouped = costs.reshape(rows, cols // m, m)
    return grouped.topk(n, dim=-1, largest=False).values.sum(-1)


def nm_group_element_mask(costs: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask marking, in every group of ``m``, its ``n`` cheapest elements."""
    rows, cols = costs.shape
    grouped = costs.reshape(rows, cols // m, m)
    idx = grouped.topk(n, dim=-1, largest=False).indices
    mask = torch.zeros_like(grouped, dtype=torch.bool)
    mask.scatter_(-1, idx, True)
    return mask.reshape(rows, cols)
