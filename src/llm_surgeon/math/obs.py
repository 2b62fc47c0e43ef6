"""The correlated optimal-brain-surgeon update in Kronecker form.

Given a set ``R`` of weights to remove, the update that keeps the quadratic loss
``½ vec(ΔW)ᵀ (G ⊗ A) vec(ΔW) = ½ tr(ΔWᵀ G ΔW A)`` smallest while forcing ``W + ΔW`` to
zero on ``R`` is ``ΔW = −G⁻¹ M A⁻¹`` with ``M`` supported on ``R`` and solving
``[G⁻¹ M A⁻¹]_R = W_R``. That system has one unknown per removed weight (hundreds of
thousands per layer), so instead of factorising it row by row we solve the equivalent
problem over the *kept* weights with preconditioned conjugate gradients:

* every iterate is feasible (zeros on ``R``) and lowers the quadratic loss, so stopping
  early is safe — it is a partial, never a wrong, update;
* each iteration costs four dense matmuls with ``G``, ``A``, ``G⁻¹``, ``A⁻¹``, which is
  a small fraction of a forward/backward pass over the calibration set;
* the preconditioner ``P_S (G⁻¹ · A⁻¹) P_S`` is exact when nothing is removed, so
  convergence is fast at the low per-shot sparsity increments of multi-shot pruning;
* it may start from the removed weights zeroed and nothing else moved, or (``warm_start``) from the
  sum of every removed weight's own single-weight OBS update: the optimum for one removed weight,
  and near it while the removed weights interact little (small off-diagonals of ``G⁻¹`` and ``A⁻¹``).

:func:`removed_set_obs_update` solves the same problem from the other side, by conjugate gradients on the
removed weights' multipliers ``M`` (Jacobi-preconditioned; its first iterate is the independent start), at two
matmuls a step instead of four. With 50% removed in every layer it nears the optimum in fewer steps, but in a
real run, where the global threshold removes 5-99% per layer, it did worse (BENCHMARKS.md): a research option.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class UpdateStats:
    """How well the update solved its quadratic: for reports and benchmarks."""

    iterations: int
    relative_residual: float
    loss_no_update: float
    loss_after: float


def kronecker_quadratic(delta: torch.Tensor, G: torch.Tensor, A: torch.Tensor) -> float:
    """``½ tr(ΔWᵀ G ΔW A)``, the loss increase predicted by the Kronecker Fisher."""
    return 0.5 * float((delta * (G @ delta @ A)).sum())


def independent_obs_start(W: torch.Tensor, remove: torch.Tensor, G_inv: torch.Tensor, A_inv: torch.Tensor
                          ) -> torch.Tensor:
    """``ΔW`` as the sum of each removed weight's single-weight OBS update, ``−G⁻¹ M A⁻¹`` with
    ``M_ij = W_ij / ([G⁻¹]_ii [A⁻¹]_jj)`` on the removed set, made feasible (exactly ``−W`` there)."""
    M = torch.where(remove, W / (G_inv.diagonal()[:, None] * A_inv.diagonal()[None, :]), 0.0)
    return torch.where(remove, -W, -(G_inv @ M @ A_inv))


def _solved(W: torch.Tensor, new_W: torch.Tensor, loss_no_update: float, G: torch.Tensor, A: torch.Tensor,
            iterations: int, rz: float, rz0: float) -> UpdateStats:
    """What either solver reports: its steps, its final relative residual and the quadratic before and after."""
    return UpdateStats(iterations=iterations, relative_residual=(rz / rz0) ** 0.5 if rz0 > 0 else 0.0,
                       loss_no_update=loss_no_update, loss_after=kronecker_quadratic(new_W - W, G, A))


IterationHook = Callable[[int, torch.Tensor, float], None]
"""Called after every PCG step with (step, the current ``ΔW``, the relative preconditioned residual)."""


def kronecker_obs_update(
    W: torch.Tensor,
    remove: torch.Tensor,
    G: torch.Tensor,
    A: torch.Tensor,
    G_inv: torch.Tensor,
    A_inv: torch.Tensor,
    max_iterations: int = 20,
    tolerance: float = 1e-4,
    warm_start: bool = False,
    on_iteration: IterationHook | None = None,
) -> tuple[torch.Tensor, UpdateStats]:
    """Return ``W + ΔW`` with exact zeros on ``remove`` and the kept weights compensated.

    ``W`` is (out x in), ``G`` (out x out), ``A`` (in x in). Runs PCG on the kept weights
    until the preconditioned residual falls below ``tolerance`` relative to its start,
    or ``max_iterations`` is reached (``max_iterations=0`` gives "zero and no update", or with
    ``warm_start`` the independent single-weight updates). ``on_iteration`` watches convergence.
    """
    dtype = W.dtype
    work = torch.promote_types(W.dtype, torch.float32)  # bf16/fp16 weights are updated in fp32
    W32 = W.to(work)
    G, A, G_inv, A_inv = (t.to(work) for t in (G, A, G_inv, A_inv))
    keep = ~remove
    keep_f = keep.to(W32.dtype)
    delta = -W32 * remove.to(W32.dtype)
    loss0 = kronecker_quadratic(delta, G, A)
    if warm_start:
        delta = independent_obs_start(W32, remove, G_inv, A_inv)

    residual = -(G @ delta @ A) * keep_f
    z = (G_inv @ residual @ A_inv) * keep_f
    rz = float((residual * z).sum())
    rz0 = rz
    direction = z
    iterations = 0
    while iterations < max_iterations and rz > 0 and rz > tolerance**2 * rz0:
        q = (G @ direction @ A) * keep_f
        curvature = float((direction * q).sum())
        if curvature <= 0:
            break
        step = rz / curvature
        delta = delta + step * direction
        residual = residual - step * q
        z = (G_inv @ residual @ A_inv) * keep_f
        rz_new = float((residual * z).sum())
        direction = z + (rz_new / rz) * direction
        rz = rz_new
        iterations += 1
        if on_iteration is not None:
            on_iteration(iterations, delta, (rz / rz0) ** 0.5)

    new_W = (W32 + delta) * keep_f  # exact zeros on the removed set
    return new_W.to(dtype), _solved(W32, new_W, loss0, G, A, iterations, rz, rz0)


def removed_set_obs_update(
    W: torch.Tensor,
    remove: torch.Tensor,
    G: torch.Tensor,
    A: torch.Tensor,
    G_inv: torch.Tensor,
    A_inv: torch.Tensor,
    max_iterations: int = 20,
    tolerance: float = 1e-4,
    on_iteration: IterationHook | None = None,
) -> tuple[torch.Tensor, UpdateStats]:
    """The minimiser of :func:`kronecker_obs_update` by CG on the removed set: solve ``[G⁻¹ M A⁻¹]_R = W_R``
    for ``M`` on ``R`` with the preconditioner ``1 / ([G⁻¹]_ii [A⁻¹]_jj)``, then ``ΔW = −G⁻¹ M A⁻¹`` with the
    removed weights set to exactly ``−W``. Step 0 is the independent single-weight start; a step costs two
    matmuls. Every iterate is feasible, but unlike the kept-set PCG an early stop is not guaranteed to lower
    the quadratic below the start's (the benchmark measures how it fares)."""
    dtype = W.dtype
    work = torch.promote_types(W.dtype, torch.float32)
    W32 = W.to(work)
    G, A, G_inv, A_inv = (t.to(work) for t in (G, A, G_inv, A_inv))
    removed = remove.to(work)
    diagonal = G_inv.diagonal()[:, None] * A_inv.diagonal()[None, :]
    target = W32 * removed
    M = target / diagonal
    Y = G_inv @ M @ A_inv  # ΔW = −Y off the removed set, kept up to date with M
    residual = target - Y * removed
    z = residual / diagonal
    rz = rz0 = float((residual * z).sum())
    direction = z
    iterations = 0
    while iterations < max_iterations and rz > 0 and rz > tolerance**2 * rz0:
        Y_direction = G_inv @ direction @ A_inv
        q = Y_direction * removed
        curvature = float((direction * q).sum())
        if curvature <= 0:
            break
        step = rz / curvature
        M = M + step * direction
        Y = Y + step * Y_direction
        residual = residual - step * q
        z = residual / diagonal
        rz_new = float((residual * z).sum())
        direction = z + (rz_new / rz) * direction
        rz = rz_new
        iterations += 1
        if on_iteration is not None:
            on_iteration(iterations, torch.where(remove, -W32, -Y), (rz / rz0) ** 0.5)

    delta = torch.where(remove, -W32, -Y)
    new_W = (W32 + delta) * (1 - removed)
    return new_W.to(dtype), _solved(W32, new_W, kronecker_quadratic(-W32 * removed, G, A), G, A, iterations, rz,
                                    rz0)
