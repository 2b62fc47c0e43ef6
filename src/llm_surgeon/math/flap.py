"""FLAP's fluctuation metric and bias compensation (An et al., "Fluctuation-based Adaptive Structured
Pruning for Large Language Models", AAAI 2024), as pure functions of a layer's weights and input moments.

A structure leaves a block through input columns of its output projection. When column ``j`` is removed,
the output changes by ``W[:, j] x_j``; its mean part ``W[:, j] E[x_j]`` is put back as a bias, so what is
lost is only the fluctuation of ``x_j`` around its mean, weighted by the column's energy:

    score_j = Var(x_j) · ||W[:, j]||²,     bias += W[:, C] E[x_C].

Scores of different layers have different scales; FLAP standardises them within each layer (and kind of
structure) before one global ranking.
"""

from __future__ import annotations

import torch


def fluctuation(second_moment: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``Var(x_j) = E[x_j²] − E[x_j]²`` per input channel (clamped at 0 against rounding)."""
    return (second_moment.double() - mean.double().pow(2)).clamp_min(0.0)


def column_scores(W: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """FLAP's score of every input column of ``W`` [out, in]: ``Var(x_j) · ||W[:, j]||²``."""
    return variance.double() * W.double().pow(2).sum(0)


def standardized(scores: torch.Tensor, removed: torch.Tensor | None = None) -> torch.Tensor:
    """``(s − mean) / std`` over the structures still present (entries of ``removed`` are returned as they
    are); a constant or single score standardises to 0. Makes scores of differently scaled layers rankable."""
    present = scores if removed is None else scores[~removed]
    if present.numel() == 0:
        return scores.clone()
    centre = present.mean()
    spread = present.std() if present.numel() > 1 else torch.zeros((), dtype=scores.dtype)
    if not torch.isfinite(spread) or spread <= 0:
        spread = torch.ones((), dtype=scores.dtype)
    out = (scores - centre) / spread
    return out if removed is None else torch.where(removed, scores, out)


def bias_shift(W: torch.Tensor, cols: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """What the output bias gains when columns ``cols`` go: their mean contribution ``W[:, C] E[x_C]``."""
    return W[:, cols].double() @ mean[cols].double()
