"""The exact global k-cheapest selection, from costs that are produced one layer at a time.

:func:`~llm_surgeon.math.threshold.select_cheapest` needs every layer's costs at once (a float32
tensor the size of the model). Here the costs are asked for again in a few passes and only
counts are kept between them: each float32 cost is mapped to an order-preserving integer key;
a histogram of the keys' high 16 bits finds the bin that holds the k-th cost, the keys in that
bin give the exact threshold, and a last pass marks everything below it plus the first ties in
layer order — the same masks as the all-at-once selection, ties included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

CostSource = Callable[[int], torch.Tensor]
"""``i -> costs of layer i`` (any float dtype; compared as float32, as the all-at-once selection does)."""


def sortable_keys(costs: torch.Tensor) -> torch.Tensor:
    """int64 keys with the order of the float32 values (``-inf`` first, ``+inf`` last)."""
    bits = (costs.float() + 0.0).contiguous().view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into +0.0
    return torch.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)


def _high(keys: torch.Tensor) -> torch.Tensor:
    return (keys >> 16) + 32768  # 0 .. 65535


def streaming_select_cheapest(source: CostSource, sizes: Sequence[int], k: int) -> list[torch.Tensor]:
    """Flat boolean masks marking exactly the ``k`` cheapest entries over all layers.

    ``sizes[i]`` is the number of entries of layer ``i``; ``source(i)`` must give the same costs on
    every call. Ties at the threshold are taken in layer order, then position, so the result equals
    ``select_cheapest`` on the concatenation.
    """
    total = sum(sizes)
    if not 0 <= k <= total:
        raise ValueError(f"cannot select {k} of {total} entries")
    if k in (0, total):
        return [torch.full((n,), k == total, dtype=torch.bool) for n in sizes]
    counts = torch.zeros(65536, dtype=torch.int64)  # counts and candidates on the host: layers may be anywhere
    for i in range(len(sizes)):
        counts += torch.bincount(_high(sortable_keys(source(i)).reshape(-1)), minlength=65536).cpu()
    cumulative = counts.cumsum(0)
    bin_index = int(torch.searchsorted(cumulative, torch.tensor(k)))
    below_bin = int(cumulative[bin_index - 1]) if bin_index > 0 else 0
    in_bin = [keys[_high(keys) == bin_index].cpu() for keys in
              (sortable_keys(source(i)).reshape(-1) for i in range(len(sizes)))]
    candidates = torch.cat(in_bin).sort().values
    threshold = int(candidates[k - below_bin - 1])
    strictly_below = below_bin + int((candidates < threshold).sum())
    ties_left = k - strictly_below
    masks = []
    for i in range(len(sizes)):
        keys = sortable_keys(source(i)).reshape(-1)
        mask = keys < threshold
        at = (keys == threshold).nonzero().squeeze(1)[:ties_left]
        mask[at] = True
        ties_left -= at.numel()
        masks.append(mask)
    return masks


def capped_select_cheapest(source: CostSource, sizes: Sequence[int], k: int, caps: Sequence[int]
                           ) -> list[torch.Tensor]:
    """Flat masks of the ``k`` cheapest entries over all layers with at most ``caps[i]`` from layer ``i``.

    The greedy rule (take the cheapest entry left whose layer is not yet full) is optimal for a count
    with per-layer limits (a partition matroid), and its threshold only rises as layers fill. So a layer
    that holds more than its cap below the free layers' unconstrained threshold is full in the greedy
    answer too: it is fixed at its cap (its own cheapest ``caps[i]``), the rest are selected again, until
    no free layer overflows — usually two or three rounds of :func:`streaming_select_cheapest`.
    """
    if len(caps) != len(sizes) or any(not 0 <= c <= n for c, n in zip(caps, sizes, strict=True)):
        raise ValueError("every cap must lie between 0 and its layer's size")
    if not 0 <= k <= sum(caps):
        raise ValueError(f"cannot select {k} entries with at most {sum(caps)} allowed by the caps")
    full: set[int] = set()
    while True:
        free = [i for i in range(len(sizes)) if i not in full]
        left = k - sum(caps[i] for i in full)
        masks = streaming_select_cheapest(lambda j, free=free: source(free[j]), [sizes[i] for i in free], left)
        overflowing = {i for i, mask in zip(free, masks, strict=True) if int(mask.sum()) > caps[i]}
        if not overflowing:
            break
        full |= overflowing
    chosen = dict(zip(free, masks, strict=True))
    for i in full:
        chosen[i] = streaming_select_cheapest(lambda _, i=i: source(i), [sizes[i]], caps[i])[0]
    return [chosen[i] for i in range(len(sizes))]
