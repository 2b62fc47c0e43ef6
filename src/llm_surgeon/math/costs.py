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


def nm_subsets(n: int, m: int) -> torch.Tensor:
    """Every choice of ``n`` of ``m`` positions, ``(C(m, n), n)``, in lexicographic order."""
    return torch.combinations(torch.arange(m), n)


def diagonal_blocks(matrix: torch.Tensor, m: int) -> torch.Tensor:
    """The ``m x m`` blocks on the diagonal of a square matrix, ``(size // m, m, m)``."""
    size = matrix.shape[0]
    return matrix.reshape(size // m, m, size // m, m).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def nm_joint_choice(W: torch.Tensor, G_inv_diag: torch.Tensor, A_inv_blocks: torch.Tensor, removed: torch.Tensor,
                    n: int, m: int, chunk_elements: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Each group's cost of losing ``n`` of its ``m`` weights together, and which ``n``.

    Removing a set ``S`` of one row ``i`` with the optimal update of every other weight raises the
    quadratic loss by ``½ w_Sᵀ ([F⁻¹]_SS)⁻¹ w_S``; under ``F = G ⊗ A`` that is
    ``½ w_Sᵀ ([A⁻¹]_SS)⁻¹ w_S / [G⁻¹]_ii`` — the summed single-weight costs when ``A⁻¹`` is diagonal on
    the group, less or more when its inputs are correlated. Every ``n``-subset of every group is priced
    (the ``(A⁻¹)_SS`` inverses depend on the group alone, not the row) and the cheapest chosen.
    ``A_inv_blocks`` are ``A⁻¹``'s diagonal blocks, ``(cols // m, m, m)`` (:func:`diagonal_blocks`).
    A group with weights already removed must keep them: it costs ``-inf`` and chooses the cheapest subset
    holding them (its removed set itself when that has ``n`` or more).

    Rows are taken a chunk at a time, each chunk's ``(rows, groups, C(m, n), n)`` subset weights at most
    ``chunk_elements``: a wide pattern such as 4:8 (70 subsets) stays as bounded in memory as 2:4 (6).

    Returns ``(rows, cols // m)`` group costs and a ``(rows, cols)`` mask of each group's chosen weights.
    """
    rows, cols = W.shape
    groups, work = cols // m, torch.promote_types(W.dtype, torch.float32)
    subsets = nm_subsets(n, m).to(W.device)
    rows_per_chunk = max(1, chunk_elements // (groups * subsets.numel()))
    blocks = A_inv_blocks.to(work)
    inverse = torch.linalg.inv(blocks[:, subsets[:, :, None], subsets[:, None, :]])  # (groups, C, n, n)
    member = torch.zeros(len(subsets), m, dtype=torch.bool, device=W.device)
    member[torch.arange(len(subsets), device=W.device)[:, None], subsets] = True  # (C, m)
    costs, masks = [], []
    for start in range(0, rows, rows_per_chunk):
        w = W[start:start + rows_per_chunk].to(work).reshape(-1, groups, m)[:, :, subsets]  # (r, groups, C, n)
        quad = torch.einsum("rgci,gcij,rgcj->rgc", w, inverse, w)
        subset_costs = 0.5 * quad / G_inv_diag[start:start + rows_per_chunk].to(work)[:, None, None]
        gone = removed[start:start + rows_per_chunk].reshape(-1, groups, m)
        holds_removed = ~(gone[:, :, None, :] & ~member).any(-1)  # (r, groups, C): the subset keeps them removed
        best = subset_costs.masked_fill(~holds_removed, float("inf")).argmin(-1)
        fits = holds_removed.any(-1, keepdim=True)  # a group with more than n removed keeps exactly those
        chosen = torch.where(fits, member[best], gone)  # (r, groups, m)
        group_cost = subset_costs.gather(-1, best[..., None]).squeeze(-1)
        costs.append(group_cost.masked_fill(gone.any(-1), float("-inf")))
        masks.append(chosen.reshape(-1, cols))
    return torch.cat(costs), torch.cat(masks)
