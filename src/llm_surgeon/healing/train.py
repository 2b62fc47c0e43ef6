"""Healing: the pruned model trained to predict what the dense model predicts, its pattern kept exactly.

Every kept weight of the pruned layers trains (``--heal-rank 0``), its gradient multiplied by the keep mask
and the removed weights set back to zero after each Adam step, so unstructured masks, N:M groups and removed
rows and columns stay exact zeros and a structured model compacts to the same shapes; or a rank-``r``
correction per layer trains and is merged back with its mask (:mod:`llm_surgeon.engine.correction`). The
loss is the coarse KL of :mod:`llm_surgeon.math.distill` against the dense model's stored top-k predictions,
logits made a chunk of positions at a time as in a curvature pass; with ``--heal-block-weight``, plus that
weight times the relative squared error of some blocks' outputs against the dense model's.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from llm_surgeon.curvature.collectors import frozen_parameters, input_device
from llm_surgeon.engine.correction import attach_deltas, detach_deltas
from llm_surgeon.errors import LLMSurgeonError
from llm_surgeon.healing.blocks import block_outputs, stacked
from llm_surgeon.healing.targets import TeacherTargets
from llm_surgeon.math.distill import coarse_kl, learning_rate_factor, relative_squared_error, squared_error_sums
from llm_surgeon.models.adapters import ArchitectureAdapter
from llm_surgeon.models.nll import LOGIT_CHUNK_TOKENS

if TYPE_CHECKING:
    from llm_surgeon.config import PruneConfig

WARMUP_SHARE = 0.05
"""Steps of linear warm-up, as a share of all steps (at least one)."""
LOSS_POINTS = 50
"""At most this many points of the training loss curve go into the report."""


@dataclass
class HealSettings:
    rank: int
    lr: float
    batch: int
    seed: int
    progress: bool = True
    block_weight: float = 0.0
    """The weight of the block-output loss beside the KL (0: none)."""
    blocks: tuple[int, ...] = ()
    """The blocks whose outputs are matched, in the order of the targets' block axis."""
    lr_scale: str = "absolute"
    """``weight-rms``: ``lr`` is a fraction of each layer's kept weights' RMS (``--heal-lr-scale``), not every
    weight's rate."""

    @classmethod
    def from_config(cls, config: PruneConfig, batch: int, progress: bool,
                    blocks: tuple[int, ...] = ()) -> HealSettings:
        """The settings ``config``'s healing options resolve to (its rate and what the rate is relative to), so
        ``prune --heal`` and a saved folder healed later train alike; ``batch`` is the passes' batch, which
        the memory fit may have lowered below ``config``'s."""
        return cls(config.heal_rank, config.heal_learning_rate, batch, config.seed, progress,
                   block_weight=config.heal_block_weight, blocks=blocks, lr_scale=config.heal_rate_scale)

    @property
    def matched(self) -> tuple[int, ...]:
        """The blocks the loss reads: none when the weight is zero."""
        return self.blocks if self.block_weight > 0 else ()


@dataclass
class HealRecord:
    """What healing did, for ``report.json``'s ``heal`` section."""

    tokens: int
    steps: int
    rank: int
    lr: float
    topk: int
    kl_before: float
    """Mean KL per token to the dense model on the held-out windows, before healing."""
    kl_after: float
    held_out_tokens: int
    seconds: float
    block_weight: float = 0.0
    blocks: list[int] = field(default_factory=list)
    block_error_before: float | None = None
    """With ``--heal-block-weight``: the matched blocks' relative squared error to the dense model's outputs
    on the held-out windows (summed over them, divided once), before and after."""
    block_error_after: float | None = None
    seconds_teacher: float = 0.0
    """Computing the dense model's predictions (before the first shot)."""
    losses: list[float] = field(default_factory=list)
    """The training KL per token, averaged over equal spans of steps (at most :data:`LOSS_POINTS`)."""
    data: dict = field(default_factory=dict)
    lr_scale: str = "absolute"
    """``weight-rms``: ``lr`` was a fraction of each layer's kept weights' RMS (:func:`layer_rates`)."""

    def to_dict(self) -> dict:
        return asdict(self)


def distill_backward(model: nn.Module, adapter: ArchitectureAdapter, ids: torch.Tensor, targets: TeacherTargets,
                     windows: slice, chunk_tokens: int = LOGIT_CHUNK_TOKENS, blocks: tuple[int, ...] = (),
                     block_weight: float = 0.0) -> float:
    """Back-propagate the mean KL per position of ``ids`` to the targets of ``windows`` (plus ``block_weight``
    times the mean over ``blocks`` of their outputs' relative squared error); return the KL. The body runs
    once; the head and the loss run a chunk of positions at a time into a detached copy of the hidden states,
    then one backward through the body (the logits' memory stays one chunk's)."""
    indices, log_probs = targets.rows(windows)
    with block_outputs(model, adapter, blocks) as captured:
        hidden = adapter.body(model)(input_ids=ids, use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])
    leaf = hidden.detach().requires_grad_(True)
    rows, total = hidden.shape[0], 0.0
    for start in range(0, rows, chunk_tokens):
        logits = adapter.logits(model, leaf[start:start + chunk_tokens])
        part = slice(start, start + chunk_tokens)
        loss = coarse_kl(logits, indices[part].to(logits.device), log_probs[part].to(logits.device)) / rows
        loss.backward()
        total += float(loss.detach())
    if not blocks:
        hidden.backward(leaf.grad)
        return total
    block_loss = block_weight * _block_error(captured, blocks, targets.hidden[windows])
    torch.autograd.backward([hidden, block_loss], [leaf.grad, None])
    return total


def _block_error(captured: dict[int, torch.Tensor], blocks: tuple[int, ...], dense: torch.Tensor) -> torch.Tensor:
    """The mean over ``blocks`` of each one's relative squared error to the dense outputs (batch, positions,
    blocks, width)."""
    student = stacked(captured, blocks)
    dense = dense.to(student.device)
    errors = [relative_squared_error(student[:, :, b], dense[:, :, b]) for b in range(len(blocks))]
    return torch.stack(errors).mean()


@torch.no_grad()
def held_out_scores(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor, targets: TeacherTargets,
                    batch: int, blocks: tuple[int, ...] = (), chunk_tokens: int = LOGIT_CHUNK_TOKENS
                    ) -> tuple[float, float | None]:
    """Mean KL per position of the model's predictions on ``windows`` to ``targets``, and (with ``blocks``)
    the mean over them of their outputs' relative squared error, each block's sums taken over all windows
    before dividing (None without blocks). No gradients."""
    device, total = input_device(model), 0.0
    errors, sizes = torch.zeros(len(blocks)), torch.zeros(len(blocks))
    for first in range(0, len(windows), batch):
        part = slice(first, first + batch)
        indices, log_probs = targets.rows(part)
        with block_outputs(model, adapter, blocks) as captured:
            hidden = adapter.body(model)(input_ids=windows[part].to(device), use_cache=False).last_hidden_state
        for b, index in enumerate(blocks):
            error, size = squared_error_sums(captured[index], targets.hidden[part][:, :, b].to(hidden.device))
            errors[b] += float(error)
            sizes[b] += float(size)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        for start in range(0, hidden.shape[0], chunk_tokens):
            logits = adapter.logits(model, hidden[start:start + chunk_tokens])
            rows = slice(start, start + chunk_tokens)
            total += float(coarse_kl(logits, indices[rows].to(logits.device), log_probs[rows].to(logits.device)))
    block_error = float((errors / sizes.clamp(min=1e-30)).mean()) if blocks else None
    return total / windows.numel(), block_error


@contextlib.contextmanager
def _masked_weights(linears: dict[str, nn.Linear], removed: dict[str, torch.Tensor]
                    ) -> Iterator[tuple[list[nn.Parameter], tuple[Callable[[], None], Callable[[], None]]]]:
    """Every pruned layer's weight trains; of the two callables returned, the first (after each backward)
    zeroes the removed weights' gradients, the second (after each step) the removed weights themselves (only
    the first is needed with Adam, whose update of a never-nonzero gradient is zero; the second makes it
    exact whatever the optimizer)."""
    keeps = {name: ~removed[name].to(lin.weight.device) for name, lin in linears.items() if name in removed}
    for lin in linears.values():
        lin.weight.requires_grad_(True)

    def mask_gradients() -> None:
        for name, keep in keeps.items():
            if linears[name].weight.grad is not None:
                linears[name].weight.grad.mul_(keep)

    def mask_weights() -> None:
        with torch.no_grad():
            for name, keep in keeps.items():
                linears[name].weight.mul_(keep)

    try:
        yield [lin.weight for lin in linears.values()], (mask_gradients, mask_weights)
    finally:
        for lin in linears.values():
            lin.weight.grad = None  # a weight-sized buffer per layer, not needed after training


@contextlib.contextmanager
def _low_rank(linears: dict[str, nn.Linear], removed: dict[str, torch.Tensor], rank: int, seed: int
              ) -> Iterator[tuple[list[nn.Parameter], tuple[Callable[[], None], Callable[[], None]]]]:
    """A masked rank-``rank`` correction of every pruned layer, merged into the weights when the block ends
    normally (left out when it fails)."""
    deltas = attach_deltas(linears, removed, rank, seed)
    merged = False
    try:
        yield [p for d in deltas.values() for p in d.parameters()], (lambda: None, lambda: None)
        merged = True
    finally:
        detach_deltas(linears, absorb=merged)


def heal_model(model: nn.Module, adapter: ArchitectureAdapter, linears: dict[str, nn.Linear],
         removed: dict[str, torch.Tensor], train: torch.Tensor, train_targets: TeacherTargets,
         held_out: torch.Tensor, held_targets: TeacherTargets, settings: HealSettings) -> HealRecord:
    """One pass of Adam over ``train`` in batches of ``settings.batch`` windows on the KL to the targets; the
    KL on the held-out windows before and after. The model's other parameters do not change."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()  # no dropout: the student is trained as it will be used
    kl_before, block_before = held_out_scores(model, adapter, held_out, held_targets, settings.batch,
                                              settings.matched)
    with frozen_parameters(model):
        trainable = _low_rank(linears, removed, settings.rank, settings.seed) if settings.rank > 0 \
            else _masked_weights(linears, removed)
        with trainable as (params, (after_backward, after_step)):
            groups = layer_rates(linears, removed, settings.lr) if settings.lr_scale == "weight-rms" \
                else [{"params": params, "lr": settings.lr}]
            losses = _train(model, adapter, train, train_targets, groups, after_backward, after_step, settings)
    kl_after, block_after = held_out_scores(model, adapter, held_out, held_targets, settings.batch,
                                            settings.matched)
    model.train(was_training)
    return HealRecord(tokens=train.numel(), steps=len(losses), rank=settings.rank, lr=settings.lr,
                      lr_scale=settings.lr_scale,
                      topk=train_targets.indices.shape[-1], kl_before=kl_before, kl_after=kl_after,
                      held_out_tokens=held_out.numel(), seconds=time.perf_counter() - t0,
                      block_weight=settings.block_weight, blocks=list(settings.matched),
                      block_error_before=block_before, block_error_after=block_after,
                      losses=_binned(losses, LOSS_POINTS))


def kept_rms(weight: torch.Tensor, removed: torch.Tensor | None) -> float:
    """The root mean square of a layer's kept weights (the removed ones, zeros, left out of the mean, so that a
    masked layer and its physically smaller copy agree); 0 when none is kept."""
    w = weight.detach().double()
    kept = w if removed is None else w[~removed.to(w.device)]
    return float(kept.pow(2).mean().sqrt()) if kept.numel() else 0.0


def layer_rates(linears: dict[str, nn.Linear], removed: dict[str, torch.Tensor], fraction: float) -> list[dict]:
    """Adam's parameter groups for ``--heal-lr-scale weight-rms``: each layer's weight at ``fraction`` times its
    kept weights' RMS. Adam's step is about its rate whatever the gradient's size, so an absolute rate is a
    relative step that grows as a model's weights shrink; this keeps the relative step the same across models."""
    return [{"params": [lin.weight], "lr": fraction * kept_rms(lin.weight, removed.get(name))}
            for name, lin in linears.items()]


def _train(model: nn.Module, adapter: ArchitectureAdapter, train: torch.Tensor, targets: TeacherTargets,
           groups: list[dict], after_backward: Callable[[], None], after_step: Callable[[], None],
           settings: HealSettings) -> list[float]:
    """The optimizer loop: windows in a seeded order, one Adam step per batch, warm-up then cosine decay (every
    parameter group's rate by the same factor)."""
    device = input_device(model)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(settings.seed))
    batches = order.split(settings.batch)
    optimizer = torch.optim.Adam(groups)
    warmup = max(1, int(WARMUP_SHARE * len(batches)))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(s, len(batches), warmup))
    losses = []
    for picked in tqdm(batches, desc="healing", disable=not settings.progress):
        optimizer.zero_grad(set_to_none=True)
        loss = distill_backward(model, adapter, train[picked].to(device), targets.picked(picked), slice(None),
                                blocks=settings.matched, block_weight=settings.block_weight)
        if not math.isfinite(loss):
            raise LLMSurgeonError("healing diverged (non-finite KL); lower --heal-lr")
        after_backward()
        optimizer.step()
        after_step()
        schedule.step()
        losses.append(loss)
    return losses


def _binned(values: list[float], points: int) -> list[float]:
    """``values`` averaged over ``points`` equal spans (all of them when there are fewer)."""
    if len(values) <= points:
        return values
    edges = [round(i * len(values) / points) for i in range(points + 1)]
    return [sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:], strict=False)]
