"""The JSON report written beside every pruned model."""

from __future__ import annotations

import platform
import resource
import sys
from dataclasses import asdict

import torch


def versions() -> dict[str, str]:
    import transformers

    from llm_surgeon._version import __version__

    return {
        "llm_surgeon": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def peak_memory_mb(device: str | torch.device = "cpu") -> float:
    """Peak GPU memory allocated on CUDA; otherwise the process's peak resident set size."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def machine() -> dict[str, str | int]:
    import os

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count() or 0,
    }


def build_report(
    *,
    config,
    model_name: str,
    result,
    calibration: dict | None,
    achieved_sparsity: float,
    per_layer_sparsity: dict[str, float],
    ppl: dict | None,
    seconds: dict[str, float],
    peak_mb: float,
    export: dict | None = None,
    resumed_from_shot: int | None = None,
    footprint: dict | None = None,
    memory_estimate: dict | None = None,
    distributed: dict | None = None,
    experts: dict | None = None,
) -> dict:
    """Everything a reader needs to judge and reproduce the run, in one dict (written as report.json)."""
    report = {
        "model": model_name,
        "method": config.method,
        "granularity": config.granularity,
        "target_sparsity": config.target_sparsity,
        "achieved_sparsity": achieved_sparsity,
        "per_layer_sparsity": per_layer_sparsity,
        "shots": config.effective_shots,
        "shot_records": [asdict(s) for s in result.shots],
        "nm_validation": result.nm_validation,
        "calibration": calibration,
        "ppl": ppl or {},
        "seconds": seconds,
        "peak_memory_mb": peak_mb,
        "memory_estimate": memory_estimate,
        "seed": config.seed,
        "config": config.to_dict(),
        "versions": versions(),
        "machine": machine(),
        "semi_structured_export": export,
        "resumed_from_shot": resumed_from_shot,
        "distributed": distributed or {"world_size": 1, "backend": None},
        "experts": experts,
    }
    if result.structure is not None:
        report["structure"] = result.structure
    if footprint is not None:
        report["footprint"] = footprint
    return report
