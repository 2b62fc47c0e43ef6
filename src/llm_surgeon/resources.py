"""Memory one shot needs, estimated before any work starts, and the memory a device has free.

The estimate counts what a shot of the current loop holds at its peak: the raw curvature
sums of every layer with one layer's damped factors and inverses (the loop makes them one layer
at a time), the masks, the activations that one micro-batch keeps for its backward pass, and one
chunk of logits. The activation term is calibrated, not guessed: the process's peak RSS over a curvature
pass grows by 1.12 MB per token on smollm2-135m (batch 2 vs 8 windows of 512 tokens,
``benchmarks/curvature_pass_memory.py``), which is 0.92 times the sum of every prunable Linear's
input and output widths per block, in float32, over its 30 blocks; 1.0 times that sum is used. Inputs
shared by several layers (q/k/v) are counted once per layer, an upper bound, as for the factors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ACTIVATION_FACTOR = 1.0
"""Peak RSS per token per block over (Σ Linear input + output widths) × dtype bytes (0.92 measured)."""
LOGIT_COPIES = 3
"""Logits, their softmax and their gradient are alive at once for one chunk."""


@dataclass(frozen=True)
class ShotMemory:
    """Bytes a shot needs beyond the loaded model, by part."""

    factors: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.factors + self.activations + self.logits

    def describe(self) -> str:
        gib = 2**30
        return (f"factors {self.factors / gib:.1f} GiB, activations of one batch {self.activations / gib:.1f} GiB, "
                f"logits {self.logits / gib:.1f} GiB")


def raw_factor_bytes(linears: dict[str, nn.Linear], input_widths: list[int] | None = None) -> int:
    """float32 bytes of every layer's raw ``G`` sum plus every distinct ``A`` sum (``input_widths``; by
    default one per layer, an upper bound where layers share their input)."""
    widths = input_widths if input_widths is not None else [lin.in_features for lin in linears.values()]
    return 4 * (sum(lin.out_features**2 for lin in linears.values()) + sum(w**2 for w in widths))


def factor_bytes(linears: dict[str, nn.Linear], diagonal_only: bool = False,
                 input_widths: list[int] | None = None) -> int:
    """Bytes of a shot's curvature state at its peak.

    Only the raw float32 sums of every layer persist (:func:`raw_factor_bytes`); the damped factors
    and inverses of one layer at a time, the float64 inversion work of the widest factor, the cost
    temporaries of the largest layer (float32 costs and int64 sort keys) and two boolean masks per
    weight (the shot's old and new masks) come on top.
    """
    weights = sum(lin.weight.numel() for lin in linears.values())
    if diagonal_only:
        return 4 * 2 * sum(lin.out_features + lin.in_features for lin in linears.values()) + 2 * weights
    raw = raw_factor_bytes(linears, input_widths)
    one_layer = max(4 * 2 * (lin.out_features**2 + lin.in_features**2) for lin in linears.values())
    widest = max(max(lin.out_features, lin.in_features) for lin in linears.values())
    largest = max(lin.weight.numel() for lin in linears.values())
    return raw + one_layer + 3 * 8 * widest**2 + 20 * largest + 2 * weights


def activation_bytes(linears: dict[str, nn.Linear], blocks: int, tokens: int, dtype_bytes: int,
                     eager_attention: tuple[int, int] | None = None) -> int:
    """What one micro-batch of ``tokens`` keeps for its backward pass through ``blocks`` blocks.

    ``eager_attention`` = (heads, seqlen) adds the attention probabilities an eager kernel keeps.
    """
    per_block = sum(lin.out_features + lin.in_features for lin in linears.values()) / max(blocks, 1)
    total = ACTIVATION_FACTOR * per_block * tokens * blocks * dtype_bytes
    if eager_attention is not None:
        heads, seqlen = eager_attention
        total += heads * seqlen * tokens * blocks * dtype_bytes
    return int(total)


def shot_memory(model: nn.Module, linears: dict[str, nn.Linear], blocks: int, batch_windows: int, seqlen: int,
                full_factors: bool, backward: bool, chunk_tokens: int = 1024,
                input_widths: list[int] | None = None, dtype_bytes: int | None = None) -> ShotMemory:
    """The estimate for one shot of ``model`` with micro-batches of ``batch_windows`` x ``seqlen`` tokens."""
    config = model.config
    dtype_bytes = dtype_bytes or next(model.parameters()).element_size()
    eager = None
    if getattr(config, "_attn_implementation", None) == "eager":
        eager = (config.num_attention_heads, seqlen)
    activations = activation_bytes(linears, blocks, batch_windows * seqlen, dtype_bytes, eager) if backward else 0
    vocab = model.get_output_embeddings().weight.shape[0]
    logits = LOGIT_COPIES * 4 * min(chunk_tokens, batch_windows * seqlen) * vocab if backward else 0
    factors = factor_bytes(linears, input_widths=input_widths) if full_factors else 0
    return ShotMemory(factors=factors, activations=activations, logits=logits)


def available_bytes(device: str | torch.device) -> int | None:
    """Free memory on ``device``: CUDA's free memory, else the OS's MemAvailable (Linux)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None
