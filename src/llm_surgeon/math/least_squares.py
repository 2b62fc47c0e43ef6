"""Masked least squares: re-fit a pruned matrix's kept weights to target outputs, its zeros held at zero.

With inputs ``x_t`` (rows of ``X``) and targets ``y_t``, the weights ``W`` (out x in) whose removed entries
(``keep`` false) stay zero that minimise ``Σ_t ||W x_t − y_t||²`` solve, row by row with kept set ``S_i``,

    H_SS w_S = b_S,      H = Σ x xᵀ (damped),  bᵢ = Σ_t y_{t,i} x_t   (the rows of ``B = Yᵀ X``).

Every row is its own small system on its own support, so all rows are solved at once by conjugate
gradients on the masked operator ``P ↦ (P H) ⊙ keep``, with per-row step sizes; started from the current
weights, a few iterations suffice when they are already close (after an OBS update).
"""

from __future__ import annotations

import torch


def masked_least_squares(W0: torch.Tensor, H: torch.Tensor, B: torch.Tensor, keep: torch.Tensor,
                         iterations: int, tolerance: float = 1e-6) -> tuple[torch.Tensor, int]:
    """Minimise ``½ tr(W H Wᵀ) − tr(W Bᵀ)`` over ``W`` with ``W ⊙ ~keep = 0``, starting at ``W0 ⊙ keep``.

    ``H`` (in x in) symmetric positive definite, ``B`` (out x in). Stops after ``iterations`` steps or when
    every row's residual fell below ``tolerance`` times the largest row of ``B``. Returns (W, steps taken),
    ``W`` in the dtype of ``H``; removed entries exact zeros."""
    mask = keep.to(H.dtype)
    B = B.to(H.dtype) * mask
    W = W0.to(H.dtype) * mask
    residual = B - (W @ H) * mask
    direction = residual.clone()
    rr = (residual * residual).sum(1)
    floor = float((B * B).sum(1).max()) * tolerance**2
    tiny = torch.finfo(H.dtype).tiny
    steps = 0
    while steps < iterations and float(rr.max()) > floor:
        H_direction = (direction @ H) * mask
        curvature = (direction * H_direction).sum(1)
        alpha = torch.where(curvature > 0, rr / curvature.clamp_min(tiny), 0.0)
        W += alpha[:, None] * direction
        residual -= alpha[:, None] * H_direction
        rr_next = (residual * residual).sum(1)
        direction = residual + torch.where(rr > 0, rr_next / rr.clamp_min(tiny), 0.0)[:, None] * direction
        rr = rr_next
        steps += 1
    return W * mask, steps


def least_squares_objective(W: torch.Tensor, H: torch.Tensor, B: torch.Tensor) -> float:
    """``½ tr(W H Wᵀ) − tr(W Bᵀ)``: the fit's error up to a constant (lower is better)."""
    W = W.to(H.dtype)
    return float(0.5 * ((W @ H) * W).sum() - (W * B.to(H.dtype)).sum())
