"""Removing whole rows or columns of a weight under a Kronecker Fisher ``F = G ⊗ A``.

For a set ``R`` of rows of ``W`` (out x in) forced to zero, the optimal correlated update
of the other rows and the loss increase are

    ΔW = −G⁻¹ E_R ([G⁻¹]_RR)⁻¹ W_R,       cost = ½ tr(W_Rᵀ ([G⁻¹]_RR)⁻¹ W_R A);

for a set ``C`` of columns, by symmetry,

    ΔW = −W_C ([A⁻¹]_CC)⁻¹ E_Cᵀ A⁻¹,      cost = ½ tr(W_C ([A⁻¹]_CC)⁻¹ W_Cᵀ G).

For a single row ``i`` the cost reduces to ``½ wᵢᵀ A wᵢ / [G⁻¹]ᵢᵢ``; for a column ``j`` to
``½ wⱼᵀ G wⱼ / [A⁻¹]ⱼⱼ``.
"""

from __future__ import annotations

import torch


def row_costs(W: torch.Tensor, A: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
    """Cost of removing each single row: ``½ wᵢᵀ A wᵢ / [G⁻¹]ᵢᵢ``."""
    W = W.float() if W.dtype != torch.float64 else W
    return 0.5 * ((W @ A.to(W.dtype)) * W).sum(1) / G_inv.diagonal().to(W.dtype)


def column_costs(W: torch.Tensor, G: torch.Tensor, A_inv: torch.Tensor) -> torch.Tensor:
    """Cost of removing each single column: ``½ wⱼᵀ G wⱼ / [A⁻¹]ⱼⱼ``."""
    W = W.float() if W.dtype != torch.float64 else W
    return 0.5 * ((G.to(W.dtype) @ W) * W).sum(0) / A_inv.diagonal().to(W.dtype)


def row_set_cost(W: torch.Tensor, rows: torch.Tensor, A: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
    """Joint cost of removing the rows ``rows`` together."""
    W_R = W[rows].to(A.dtype)
    solved = torch.linalg.solve(G_inv[rows][:, rows], W_R)
    return 0.5 * (solved * (W_R @ A)).sum()


def column_set_cost(W: torch.Tensor, cols: torch.Tensor, G: torch.Tensor, A_inv: torch.Tensor) -> torch.Tensor:
    """Joint cost of removing the columns ``cols`` together."""
    W_C = W[:, cols].to(G.dtype)
    solved = torch.linalg.solve(A_inv[cols][:, cols], W_C.T)  # (|C| x out)
    return 0.5 * (solved.T * (G @ W_C)).sum()


def remove_rows(W: torch.Tensor, rows: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
    """``W + ΔW`` for the correlated row update, with the removed rows exactly zero."""
    if rows.numel() == 0:
        return W.clone()
    work = W.to(G_inv.dtype)
    M = torch.linalg.solve(G_inv[rows][:, rows], work[rows])
    new = work - G_inv[:, rows] @ M
    new[rows] = 0.0
    return new.to(W.dtype)


def remove_columns(W: torch.Tensor, cols: torch.Tensor, A_inv: torch.Tensor) -> torch.Tensor:
    """``W + ΔW`` for the correlated column update, with the removed columns exactly zero."""
    if cols.numel() == 0:
        return W.clone()
    work = W.to(A_inv.dtype)
    M = torch.linalg.solve(A_inv[cols][:, cols], work[:, cols].T)  # (|C| x out)
    new = work - M.T @ A_inv[cols]
    new[:, cols] = 0.0
    return new.to(W.dtype)


def removable_count(size: int, already_removed: int, cap: int | None) -> int:
    """How many of a group's ``size`` structures may be removed in all: never its last one, and with a
    ``cap`` at most that many, unless more were removed before the cap applied (those stay removed)."""
    if cap is None:
        return size - 1
    return min(size - 1, max(cap, already_removed))


def select_structures(
    costs: list[torch.Tensor],
    params: list[torch.Tensor],
    removed: list[torch.Tensor],
    target_params: int,
    per_parameter: bool = True,
    caps: list[int] | None = None,
) -> list[torch.Tensor]:
    """Cheapest-per-parameter structures until ``target_params`` parameters are removed.

    ``costs[i]``, ``params[i]`` and ``removed[i]`` describe one group of interchangeable
    structures (e.g. the FFN neurons of one block). Already-removed structures stay
    removed; the most expensive structure of every group is always kept, so no layer is
    emptied, and with ``caps`` group ``i`` loses at most ``caps[i]`` structures (or what it
    has lost already): only its cheapest that many can be chosen. With ``per_parameter=False``
    the costs are ranked as they are (scores already comparable across groups, e.g.
    standardised); the parameters still set the count. Returns the new removal masks.
    """
    ratios = []
    for i, (c, p, r) in enumerate(zip(costs, params, removed, strict=True)):
        ratio = c.double() / p.double() if per_parameter else c.double().clone()
        ratio = ratio.masked_fill(r, float("-inf"))
        keep = torch.where(r, torch.full_like(ratio, float("-inf")), ratio).argmax()
        ratio[keep] = float("inf")
        if caps is not None:  # the already removed sort first (-inf): they count against the cap
            ratio[torch.argsort(ratio, stable=True)[removable_count(c.numel(), int(r.sum()), caps[i]):]] = float("inf")
        ratios.append(ratio)
    flat = torch.cat(ratios)
    flat_params = torch.cat([p.double() for p in params])
    order = torch.argsort(flat, stable=True)
    cumulative = torch.cumsum(flat_params[order], 0)
    forced = int(torch.cat(removed).sum())
    target = torch.tensor(float(target_params), dtype=torch.float64)
    needed = int(torch.searchsorted(cumulative, target)) + 1 if target_params > 0 else 0
    count = min(max(needed, forced), int(torch.isfinite(flat).sum()) + forced)
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[order[:count]] = True
    chosen &= flat != float("inf")
    out, offset = [], 0
    for c in costs:
        out.append(chosen[offset : offset + c.numel()])
        offset += c.numel()
    return out


def removable_params(costs: list[torch.Tensor], params: list[torch.Tensor], removed: list[torch.Tensor],
                     caps: list[int] | None = None) -> float:
    """The most parameters :func:`select_structures` can remove: every group but its last structure, and at
    most ``caps[i]`` structures of group ``i`` (or what it has removed already)."""
    total = 0.0
    for i, (c, p, r) in enumerate(zip(costs, params, removed, strict=True)):
        count = removable_count(c.numel(), int(r.sum()), None if caps is None else caps[i])
        total += float(p.double().sort().values[:count].sum())  # interchangeable: a group's params are equal
    return total


def round_kept_counts(
    costs: list[torch.Tensor],
    params: list[torch.Tensor],
    removed: list[torch.Tensor],
    chosen: list[torch.Tensor],
    multiple: int,
    target_params: int,
    rounded: list[bool],
) -> list[torch.Tensor]:
    """Adjust a selection so that every ``rounded`` group keeps a multiple of ``multiple`` structures.

    Each such group may keep the multiple just above its count (giving back its most expensive newly
    chosen structures) or just below (removing its cheapest kept ones; never below one multiple, never
    what earlier shots removed). All groups start above; then the cheapest moves down, by cost per
    parameter of what they remove, are taken until ``target_params`` parameters are removed again, so
    the total stays at the target up to one step of one group. Groups not ``rounded`` are unchanged.
    """
    out = [c.clone() for c in chosen]
    moves = []  # (cost per parameter, group, structures to remove)
    for i, (c, p, r) in enumerate(zip(costs, params, removed, strict=True)):
        size = c.numel()
        kept = size - int(out[i].sum())
        if not rounded[i] or size <= multiple or kept % multiple == 0:
            continue
        ratio = c.double() / p.double()
        up = min((kept + multiple - 1) // multiple * multiple, size - int(r.sum()))
        newly = (out[i] & ~r).nonzero().squeeze(1)
        give_back = newly[torch.argsort(ratio[newly], descending=True)[: up - kept]]
        out[i][give_back] = False
        down = up - multiple
        if down < multiple:
            continue
        kept_now = (~out[i]).nonzero().squeeze(1)
        extra = kept_now[torch.argsort(ratio[kept_now])[: up - down]]
        moves.append((float(c.double()[extra].sum() / p.double()[extra].sum()), i, extra))
    removed_params = sum(float(p.double()[o].sum()) for p, o in zip(params, out, strict=True))
    for _, i, extra in sorted(moves, key=lambda move: move[0]):
        if removed_params >= target_params:
            break
        out[i][extra] = True
        removed_params += float(params[i].double()[extra].sum())
    return out


def equal_width_slots(costs: torch.Tensor, removed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Neurons of ``P`` parts that must keep equally many (the experts of one fused [E, 2I, H] tensor) as
    ``I`` interchangeable slots: slot ``s`` removes the ``s``-th cheapest remaining neuron of every part,
    so its cost is the sum of those; slots are in rising cost, the first ones those already removed.

    ``costs`` and ``removed`` are [P, I]; every part must have removed equally many. Returns (slot costs,
    slot removed), each [I]. With :func:`remove_cheapest` this chooses, for any count of slots, the
    cheapest equal-width removal (each part's own cheapest neurons)."""
    counts = removed.sum(1)
    if not bool((counts == counts[0]).all()):
        raise ValueError(f"parts that keep one width have removed different counts: {counts.tolist()}")
    ordered = costs.double().masked_fill(removed, float("-inf")).sort(1).values
    slot_removed = torch.arange(costs.shape[1]) < int(counts[0])
    return ordered.sum(0).masked_fill(slot_removed, 0.0), slot_removed


def remove_cheapest(costs: torch.Tensor, removed: torch.Tensor, count: int) -> torch.Tensor:
    """[P, I] removal masks: each part's ``count`` cheapest neurons, those already removed counted first."""
    order = costs.double().masked_fill(removed, float("-inf")).argsort(dim=1, stable=True)
    out = torch.zeros_like(removed, dtype=torch.bool)
    return out.scatter_(1, order[:, :count], True)
