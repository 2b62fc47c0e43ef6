"""What a model costs to run: parameters, bytes on disk, forward latency, forward peak memory."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def folder_bytes(folder: Path, pattern: str = "*.safetensors") -> int:
    return sum(f.stat().st_size for f in Path(folder).glob(pattern))


@torch.inference_mode()
def forward_footprint(model: nn.Module, tokens: int = 256, repeats: int = 5, seed: int = 0) -> dict:
    """Median forward latency on one fixed random sequence, and peak memory where it can be measured.

    CUDA reports the peak allocated during the forward; on a CPU PyTorch keeps no allocator
    statistics, so only the weights' bytes are reported there.
    """
    device = next(model.parameters()).device
    tokens = min(tokens, getattr(model.config, "max_position_embeddings", tokens))
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=generator).to(device)
    model(input_ids=ids, use_cache=False)  # warm-up
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {
        "tokens": tokens,
        "latency_ms_median": 1000 * statistics.median(times),
        "weights_mb": weights_mb,
        "forward_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        "parameters": parameter_count(model),
    }
