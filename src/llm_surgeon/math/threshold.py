"""One global threshold over the costs of many layers.

Selecting "the k cheapest of all candidates" is what gives LLM Surgeon its dynamic
per-layer allocation: a layer whose weights are cheap to remove loses more of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def select_cheapest(costs: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Masks marking exactly the ``k`` cheapest entries across all tensors in ``costs``.

    Entries equal to ``-inf`` (already removed) are always selected first. Ties at the
    threshold are broken by position so that the count is exact, never approximate.
    """
    total = sum(c.numel() for c in costs)
    if not 0 <= k <= total:
        raise ValueError(f"cannot select {k} of {total} entries")
    if k == 0:
        return [torch.zeros_like(c, dtype=torch.bool) for c in costs]
    if k == total:
        return [torch.ones_like(c, dtype=torch.bool) for c in costs]
    flat = torch.cat([c.reshape(-1).float() for c in costs])
    threshold = torch.kthvalue(flat, k).values
    below = flat < threshold
    missing = k - int(below.sum())
    at = (flat == threshold).nonzero().squeeze(1)[:missing]
    below[at] = True
    masks, offset = [], 0
    for c in costs:
        masks.append(below[offset : offset + c.numel()].reshape(c.shape))
        offset += c.numel()
    return masks


def linear_schedule(target: float, shots: int) -> list[float]:
    """Sparsity reached after each shot: ``target * t / shots`` for ``t = 1..shots``."""
    return [target * (t + 1) / shots for t in range(shots)]
