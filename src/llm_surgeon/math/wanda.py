"""Wanda (Sun et al., 2024): score ``|W_ij| · ‖x_j‖₂``, compared within each output row."""

from __future__ import annotations

import torch


def wanda_scores(W: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
    """``|W| · ‖x‖`` where ``input_sq_norms[j] = Σ_tokens x_j²`` (the diagonal of ``X Xᵀ``)."""
    return W.float().abs() * input_sq_norms.float().clamp_min(0).sqrt()[None, :]


def per_row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the ``round(cols * sparsity)`` lowest scores of every row."""
    k = round(scores.shape[1] * sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, scores.topk(k, dim=1, largest=False).indices, True)
    return mask
