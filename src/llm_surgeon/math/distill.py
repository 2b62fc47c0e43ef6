"""The distillation loss of healing: KL from the teacher's top-k next-token distribution to the student's.

Keeping a teacher's whole distribution for every token is out of reach (a 262k vocabulary is 1 MB per
token in float32), so the teacher's ``k`` most likely tokens are kept with their log-probabilities, and the
rest of the vocabulary becomes one "tail" category holding the remaining mass. Both distributions are
coarsened the same way, so the loss is an exact KL divergence between two distributions over ``k + 1``
categories: zero when the student matches the teacher, never above the full KL (coarsening only merges
categories), and equal to it when ``k`` is the vocabulary.
"""

from __future__ import annotations

import math

import torch

TINY = 1e-30
"""Floor of a tail mass before its logarithm: keeps the loss and its gradient finite when the top-k hold
(numerically) all the mass; such a tail contributes nothing, its weight being zero."""


def top_k_log_probs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most likely tokens of each row of ``logits`` (..., vocab): their indices (int32) and
    log-probabilities (float32, computed in float32 whatever the logits' dtype)."""
    log_probs = logits.float().log_softmax(-1)
    values, indices = log_probs.topk(min(k, log_probs.shape[-1]), dim=-1)
    return indices.to(torch.int32), values


def _tail_log_mass(top_log_probs: torch.Tensor) -> torch.Tensor:
    """``log(1 - Σ exp(top))`` per row, through ``expm1`` so a tail of 1e-9 is not lost to rounding."""
    top_mass_log = torch.logsumexp(top_log_probs, dim=-1)
    return torch.log((-torch.expm1(top_mass_log)).clamp(min=TINY))


def coarse_kl(student_logits: torch.Tensor, teacher_indices: torch.Tensor,
              teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """Σ over rows of KL(teacher ‖ student) over the teacher's top-k tokens and one tail category.

    ``student_logits`` (rows, vocab); ``teacher_indices`` and ``teacher_log_probs`` (rows, k) from
    :func:`top_k_log_probs`. Differentiable in the student's logits."""
    student = student_logits.float().log_softmax(-1)
    student_top = student.gather(-1, teacher_indices.long())
    teacher_top = teacher_log_probs.float()
    kl_top = (teacher_top.exp() * (teacher_top - student_top)).sum(-1)
    teacher_tail_mass = (1.0 - teacher_top.exp().sum(-1)).clamp(min=0.0)
    teacher_tail = torch.log(teacher_tail_mass.clamp(min=TINY))
    student_tail = _tail_log_mass(student_top)
    kl_tail = torch.where(teacher_tail_mass > 0, teacher_tail_mass * (teacher_tail - student_tail),
                          torch.zeros_like(teacher_tail_mass))
    return (kl_top + kl_tail).sum()


def learning_rate_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to zero at ``steps``: the usual schedule of a
    short fine-tune, so the last steps settle instead of jumping at full rate."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(steps - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def squared_error_sums(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ (student - teacher)²`` and ``Σ teacher²`` over every element, in float32: the two halves of
    :func:`relative_squared_error`, kept apart so a score over many batches divides the totals once."""
    teacher = teacher.float()
    return (student.float() - teacher).square().sum(), teacher.square().sum()


def relative_squared_error(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``‖student - teacher‖² / ‖teacher‖²`` over all elements: the block-output loss of healing. Relative, so
    blocks whose residual streams differ in size by orders of magnitude (common in Gemma) weigh alike, and
    ``--heal-block-weight`` means the same on every model; zero only at the teacher. Differentiable in
    ``student``."""
    error, size = squared_error_sums(student, teacher)
    return error / size.clamp(min=TINY)


def evenly_spaced_blocks(count: int, blocks: int) -> list[int]:
    """``count`` distinct block indices of ``blocks`` spread evenly, the last block always among them (its
    output is what the head reads); every block when ``count == blocks``."""
    if not 1 <= count <= blocks:
        raise ValueError(f"{count} blocks out of {blocks}")
    return [(i + 1) * blocks // count - 1 for i in range(count)]
