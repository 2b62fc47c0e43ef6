"""Symmetric matrices kept as their upper triangle: half the memory of a factor sum.

A Kronecker factor sum ``Σ aᵀa`` is symmetric, so between batches only its upper triangle (row-major,
diagonal included) needs to be stored: ``n(n+1)/2`` numbers instead of ``n²``. Each batch's full
statistic is folded in with one gather; a layer's matrix is rebuilt only when its costs need it.
"""

from __future__ import annotations

import functools
import math

import torch


@functools.lru_cache(maxsize=16)
def upper_indices(n: int, device: str = "cpu") -> torch.Tensor:
    """Flat (row-major) positions of the upper triangle of an ``n x n`` matrix, diagonal included."""
    rows, cols = torch.triu_indices(n, n, device=device)
    return rows * n + cols


def packed_width(length: int) -> int:
    """``n`` such that ``n(n+1)/2 == length``; ``ValueError`` if there is none."""
    n = (math.isqrt(8 * length + 1) - 1) // 2
    if n * (n + 1) // 2 != length:
        raise ValueError(f"{length} is not the length of a packed upper triangle")
    return n


def pack_upper(matrix: torch.Tensor) -> torch.Tensor:
    """The upper triangle of a square ``matrix`` as a vector (the lower one is assumed to mirror it)."""
    return torch.take(matrix, upper_indices(matrix.shape[0], str(matrix.device)))


def unpack_upper(packed: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle is ``packed``."""
    n = packed_width(packed.numel())
    upper = packed.new_zeros(n, n)
    upper.view(-1)[upper_indices(n, str(packed.device))] = packed
    full = upper + upper.T
    full.diagonal().mul_(0.5)
    return full
