"""First-order corrections between shots: a masked low-rank (LoRA) delta per pruned layer.

The OBS update is second-order and layer-local; a few gradient steps on the model's own loss
recover some of what the local quadratic misses. The delta is trained on the calibration
text with every weight frozen, then absorbed into the weights. It is multiplied by the keep
mask both while training and when absorbed, so removed weights stay exact zeros and the
pattern (N:M groups, removed rows and columns) is kept.

The delta is a ``torch.nn.utils.parametrize`` parametrization of each ``nn.Linear``'s
weight, so the same code serves every architecture the adapters know: no attention module
is rewritten.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from llm_surgeon.curvature.collectors import frozen_parameters, input_device
from llm_surgeon.errors import LLMSurgeonError
from llm_surgeon.models.adapters import ArchitectureAdapter
from llm_surgeon.models.nll import backward_next_token_nll


class MaskedLowRankDelta(nn.Module):
    """``W -> W + keep ⊙ (up @ down)``: a rank-``r`` correction confined to the kept weights.

    ``down`` starts random and ``up`` at zero, so the correction starts at exactly zero and
    the first forward pass equals the pruned model's. The factors live in float32 whatever
    the weight's dtype, because Adam's small steps vanish in bfloat16.
    """

    def __init__(self, keep: torch.Tensor, rank: int, generator: torch.Generator):
        super().__init__()
        rows, cols = keep.shape
        down = torch.randn(rank, cols, generator=generator, device=generator.device) / math.sqrt(cols)
        self.down = nn.Parameter(down.to(keep.device))
        self.up = nn.Parameter(torch.zeros(rows, rank, device=keep.device))
        self.register_buffer("keep", keep)

    def delta(self) -> torch.Tensor:
        return self.keep * (self.up @ self.down)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)


@dataclass
class CorrectionRecord:
    seconds: float
    steps: int
    epoch_losses: list[float]
    """Mean training NLL per token of each epoch (the first epoch's starts at the pruned model)."""


def attach_deltas(linears: dict[str, nn.Linear], removed: dict[str, torch.Tensor], rank: int, seed: int
                  ) -> dict[str, MaskedLowRankDelta]:
    """Parametrize every layer's weight with a fresh zero correction; ``removed`` marks the pruned weights."""
    deltas = {}
    for name, lin in linears.items():
        weight = lin.weight
        generator = torch.Generator(device=weight.device).manual_seed(seed + len(deltas))
        mask = removed.get(name)
        keep = torch.ones_like(weight, dtype=torch.float32) if mask is None else (~mask.to(weight.device)).float()
        deltas[name] = MaskedLowRankDelta(keep, rank, generator)
        parametrize.register_parametrization(lin, "weight", deltas[name])
    return deltas


def detach_deltas(linears: dict[str, nn.Linear], absorb: bool) -> None:
    """Remove the parametrizations, folding each correction into its weight when ``absorb``
    (else the weights are left as they were before :func:`attach_deltas`)."""
    for lin in linears.values():
        if parametrize.is_parametrized(lin, "weight"):
            with torch.no_grad():
                parametrize.remove_parametrizations(lin, "weight", leave_parametrized=absorb)


def correct_with_lora(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    linears: dict[str, nn.Linear],
    removed: dict[str, torch.Tensor],
    windows: torch.Tensor,
    rank: int,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    progress: bool = True,
) -> CorrectionRecord:
    """Train a masked rank-``rank`` correction of every layer with Adam on the mean next-token NLL
    of ``windows``, then absorb it. The model's other parameters do not change."""
    t0 = time.perf_counter()
    device = input_device(model)
    was_training = model.training
    model.eval()  # no dropout: the correction should fit the model as it will be used
    order = torch.Generator().manual_seed(seed)
    epoch_losses, steps = [], 0
    with frozen_parameters(model):  # only the deltas, attached below, train
        deltas = attach_deltas(linears, removed, rank, seed)
        absorb = False
        try:
            params = [p for d in deltas.values() for p in d.parameters()]
            optimizer = torch.optim.Adam(params, lr=lr)
            for epoch in range(epochs):
                total, tokens = 0.0, 0
                batches = windows[torch.randperm(len(windows), generator=order)].split(batch_size)
                for batch in tqdm(batches, desc=f"low-rank correction, epoch {epoch + 1}/{epochs}",
                                  disable=not progress):
                    ids = batch.to(device)
                    optimizer.zero_grad(set_to_none=True)
                    loss = backward_next_token_nll(model, adapter, ids, mean=True)
                    if not math.isfinite(loss):
                        raise LLMSurgeonError("the low-rank correction diverged (non-finite loss); "
                                              "lower --lora-lr")
                    optimizer.step()
                    steps += 1
                    total += loss * ids[:, 1:].numel()
                    tokens += ids[:, 1:].numel()
                epoch_losses.append(total / tokens)
            absorb = True
        finally:
            detach_deltas(linears, absorb)  # a failed correction leaves the pruned weights untouched
    model.train(was_training)
    return CorrectionRecord(seconds=time.perf_counter() - t0, steps=steps, epoch_losses=epoch_losses)
