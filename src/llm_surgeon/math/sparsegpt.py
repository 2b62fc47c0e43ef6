"""SparseGPT (Frantar & Alistarh, 2023): OBS column sweep on the layer Hessian ``H = X Xᵀ``.

Columns are eliminated left to right with the upper Cholesky factor of ``H⁻¹``, so pruning
column ``i`` updates only the columns to its right; lazy block updates apply the
accumulated error to later blocks in one matmul. Masks are chosen per block of columns
(adaptive mask selection) or per group of ``m`` columns for N:M.
"""

from __future__ import annotations

import torch


def sparsegpt_flops(rows: int, cols: int) -> float:
    """Floating-point work of :func:`sparsegpt_prune` on a ``rows x cols`` layer, for ``plan``'s time: the float64
    factorizations of the ``cols x cols`` Hessian (Cholesky, the inverse from it, the inverse's Cholesky: about
    ``4/3·cols³`` flops together) and the column sweep, whose in-block and trailing updates together change each
    weight once per later column (``rows·cols·(cols + 1)`` flops when the block size divides ``cols``)."""
    return float(rows * cols * (cols + 1) + 4 * cols**3 / 3)


def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return pruned weights (exact zeros) and the removal mask.

    ``H`` is the (in x in) Hessian of the layer's reconstruction loss; ``damp`` is a
    fraction of its mean diagonal.
    """
    W = W.detach().clone().to(torch.float64 if W.dtype == torch.float64 else torch.float32)
    H = H.detach().clone().to(W.dtype)
    rows, cols = W.shape
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(damp * H.diagonal().mean())
    chol = torch.linalg.cholesky(H.double())
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True).to(W.dtype)

    mask = torch.zeros_like(W, dtype=torch.bool)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        W1 = W[:, start:end].clone()
        Q1 = torch.zeros_like(W1)
        err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[start:end, start:end]
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if nm is None:
            scores = W1.pow(2) / Hinv1.diagonal().pow(2)[None, :]
            k = int(scores.numel() * sparsity)
            if k > 0:
                flat_idx = scores.reshape(-1).topk(k, largest=False).indices
                mask1.view(-1)[flat_idx] = True
        for i in range(end - start):
            w = W1[:, i]
            d = Hinv1[i, i]
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                scores = W1[:, i : i + m].pow(2) / Hinv1.diagonal()[i : i + m].pow(2)[None, :]
                mask1.scatter_(1, i + scores.topk(n, dim=1, largest=False).indices, True)
            q = w.masked_fill(mask1[:, i], 0.0)
            Q1[:, i] = q
            e = (w - q) / d
            W1[:, i:] -= e[:, None] * Hinv1[i, i:][None, :]
            err1[:, i] = e
        W[:, start:end] = Q1
        mask[:, start:end] = mask1
        W[:, end:] -= err1 @ Hinv[start:end, end:]
    return W, mask
