"""Rank correlation, for the diagnostics that ask whether one quantity orders layers or blocks as another does.

The diagnostics (``benchmarks/allocation_by_block.py``, ``benchmarks/predicted_vs_true_by_block.py``) compare a
predicted ordering with a measured one, where only the order matters and the scales differ by orders of
magnitude: Spearman's coefficient, the Pearson correlation of the ranks, is what they report.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences: +1 when they order their entries the same
    way, -1 when oppositely. Ties are ranked in order of appearance (the diagnostics' values are continuous)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"spearman needs two sequences of the same length >= 2, got {len(a)} and {len(b)}")
    ranks = torch.stack([torch.tensor(list(v), dtype=torch.float64).argsort().argsort().double() for v in (a, b)])
    return float(torch.corrcoef(ranks)[0, 1])
