"""Kronecker factors: damping and inversion.

The Fisher of a Linear weight ``W`` (out x in) is approximated as ``G ⊗ A`` with
``A = E[a aᵀ]`` over inputs and ``G = E[g gᵀ]`` over output gradients. Each factor is
damped relative to its *own* mean diagonal, so the damping is scale-free and the two
factors can be damped differently (their scales differ by orders of magnitude).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class NonFiniteCurvatureError(ValueError):
    """A curvature factor holds NaN/Inf or is not positive definite even after damping."""


def damp(factor: torch.Tensor, relative: float) -> torch.Tensor:
    """Return ``factor + relative * mean(diag(factor)) * I``.

    A factor with an all-zero diagonal (a dead layer) gets unit damping so that it stays
    invertible instead of silently producing NaNs.
    """
    mean_diag = factor.diagonal().mean()
    if not torch.isfinite(mean_diag):
        raise NonFiniteCurvatureError("curvature factor has a non-finite diagonal")
    scale = relative * mean_diag if mean_diag > 0 else torch.ones((), dtype=factor.dtype)
    out = factor.clone()
    out.diagonal().add_(scale)
    return out


def spd_inverse(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of a symmetric positive-definite matrix through Cholesky in float64.

    float64 because the factors of LLM layers are badly conditioned and float32 Cholesky
    of a 4096-wide factor loses several digits; the cost is negligible next to a
    forward/backward pass.
    """
    m64 = matrix.to(torch.float64)
    m64 = 0.5 * (m64 + m64.T)
    chol, info = torch.linalg.cholesky_ex(m64)
    if int(info) != 0:
        raise NonFiniteCurvatureError("curvature factor is not positive definite")
    inv = torch.cholesky_inverse(chol)
    return inv.to(matrix.dtype)


@dataclass
class DampedFactors:
    """A Linear layer's damped Kronecker factors and their inverses."""

    G: torch.Tensor
    A: torch.Tensor
    G_inv: torch.Tensor
    A_inv: torch.Tensor

    def to(self, dtype: torch.dtype) -> DampedFactors:
        return DampedFactors(*(t.to(dtype) for t in (self.G, self.A, self.G_inv, self.A_inv)))


def damped_with_inverse(factor: torch.Tensor, relative: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A damped factor and its inverse; the unit that layers sharing an input can share."""
    if not torch.isfinite(factor).all():
        raise NonFiniteCurvatureError("curvature factor holds NaN or Inf")
    damped = damp(factor, relative)
    return damped, spd_inverse(damped)
