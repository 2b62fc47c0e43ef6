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


def _cpu_tensor_peak_bytes(model: nn.Module, ids: torch.Tensor) -> int:
    """Peak of live CPU tensor bytes allocated during one forward, above what existed before it.

    PyTorch keeps no allocator statistics for the CPU, but its profiler records every tensor
    allocation and free; their running sum is the memory the forward itself needs.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(input_ids=ids, use_cache=False)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if event.device_type() == torch.autograd.DeviceType.CPU:
            live += event.nbytes()
            peak = max(peak, live)
    return peak


@torch.inference_mode()
def forward_footprint(model: nn.Module, tokens: int = 256, repeats: int = 5, seed: int = 0) -> dict:
    """Median forward latency on one fixed random sequence, and the forward's peak memory.

    Peak memory is weights plus the largest set of tensors alive at once during the forward:
    from the CUDA allocator on a GPU, from the profiler's allocation events on a CPU (a separate,
    untimed forward, so profiling does not distort the latency).
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
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if cuda:
        peak_bytes, source = torch.cuda.max_memory_allocated(device), "cuda allocator"
    else:
        peak_bytes = weights_bytes + _cpu_tensor_peak_bytes(model, ids)
        source = "weights + peak live tensors of one forward (torch profiler)"
    return {
        "tokens": tokens,
        "latency_ms_median": 1000 * statistics.median(times),
        "weights_mb": weights_bytes / 2**20,
        "forward_peak_mb": peak_bytes / 2**20,
        "forward_peak_source": source,
        "parameters": parameter_count(model),
    }
