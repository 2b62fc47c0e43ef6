"""``llm-surgeon plan``: a shot's peak memory and time, predicted from a model's config alone.

The model is built on PyTorch's meta device (shapes, no storage), so the plan for a 70B model
takes seconds and no weights. Memory comes from :mod:`llm_surgeon.resources` (the same estimate
``prune`` refuses a run with); time is the shot's floating-point work over a throughput measured
on this machine in about a second (or given with ``--tflops`` to plan for another machine).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from llm_surgeon.config import PruneConfig
from llm_surgeon.errors import ModelLoadError
from llm_surgeon.methods import get_method
from llm_surgeon.models.adapters import ArchitectureAdapter, adapter_for_model_type
from llm_surgeon.resources import shot_memory

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class ShotPlan:
    """What one shot is predicted to need on one device."""

    model_type: str
    parameters: int
    weights_bytes: int
    factors_bytes: int
    activations_bytes: int
    logits_bytes: int
    peak_bytes: int
    flops: dict[str, float]
    tflops: float
    seconds_per_shot: float
    device_bytes: int | None
    fits: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


def read_config(model_or_config: str):
    """A transformers config from a ``config.json`` path, or whatever ``prune`` accepts as MODEL."""
    from transformers import AutoConfig

    path = Path(model_or_config)
    if path.suffix == ".json":
        if not path.is_file():
            raise ModelLoadError(f"config file not found: {path}")
        data = json.loads(path.read_text())
        if "model_type" not in data:
            raise ModelLoadError(f"{path} has no model_type")
        return AutoConfig.for_model(**data)
    from llm_surgeon.models.loading import load_config

    return load_config(model_or_config)


def meta_model(config) -> nn.Module:
    """The model with its real shapes and no storage."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def measured_tflops(dtype: torch.dtype = torch.float32, seconds: float = 1.0, size: int = 1024) -> float:
    """Dense matmul throughput of this machine's CPU (or the current CUDA device), in TFLOP/s."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, dtype=dtype, device=device)
    a @ a  # warm-up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        runs += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e12


def shot_flops(model: nn.Module, adapter: ArchitectureAdapter, linears: dict[str, nn.Linear], config: PruneConfig,
               input_widths: list[int]) -> dict[str, float]:
    """Floating-point work of one LLM Surgeon shot, by part.

    pass: forward and input-gradient backward over the calibration tokens (weights frozen: no
    weight gradients), attention scores included; statistics: ``aᵀa`` per distinct input and ``gᵀg``
    per layer; inversions: float64 Cholesky and inverse of every factor, twice (for the costs, then the
    update); update: ``update_iterations`` PCG steps of four Kronecker products per layer.
    """
    c = model.config
    tokens = config.calib_samples * config.calib_seqlen
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    blocks = len(adapter.blocks(model))
    attention = 4 * blocks * tokens * config.calib_seqlen * c.hidden_size
    passes = 2 * (2 * params * tokens + attention)
    stats = 2 * tokens * (sum(w**2 for w in input_widths) + sum(lin.out_features**2 for lin in linears.values()))
    inversions = 2 * (sum(w**3 for w in input_widths) + sum(lin.out_features**3 for lin in linears.values()))
    per_step = sum(2 * lin.out_features * lin.in_features * (lin.out_features + lin.in_features)
                   for lin in linears.values())
    update = 2 * per_step * (config.update_iterations + 1)
    return {"pass": float(passes), "statistics": float(stats), "inversions": float(inversions),
            "update": float(update)}


def plan_shot(model_or_config: str, config: PruneConfig, dtype: str = "float32", device_bytes: int | None = None,
              tflops: float | None = None) -> ShotPlan:
    """The plan of one shot of ``config`` for a model, from its config alone."""
    config.validate()
    model_config = read_config(model_or_config)
    adapter = adapter_for_model_type(model_config.model_type)
    model = meta_model(model_config)
    linears = adapter.prunable_linears(model)
    widths = adapter.distinct_input_widths(model)
    method = get_method(config.method, config)
    memory = shot_memory(model, linears, len(adapter.blocks(model)), config.batch_size, config.calib_seqlen,
                         full_factors=method.holds_full_factors(), backward=True, input_widths=widths,
                         dtype_bytes=DTYPE_BYTES[dtype])
    parameters = sum(p.numel() for p in model.parameters())
    weights = parameters * DTYPE_BYTES[dtype]
    peak = weights + memory.total
    flops = shot_flops(model, adapter, linears, config, widths)
    rate = tflops or measured_tflops()
    return ShotPlan(model_config.model_type, parameters, weights, memory.factors, memory.activations, memory.logits,
                    peak, flops, rate, sum(flops.values()) / (rate * 1e12), device_bytes,
                    None if device_bytes is None else peak <= device_bytes)


def describe(plan: ShotPlan) -> str:
    gib = 2**30
    fits = "" if plan.fits is None else (" — fits" if plan.fits else " — does NOT fit")
    device = f" of {plan.device_bytes / gib:.0f} GiB{fits}" if plan.device_bytes else ""
    parts = ", ".join(f"{k} {v / 1e12:.1f}" for k, v in plan.flops.items())
    return "\n".join([
        f"llm-surgeon plan: {plan.model_type}, {plan.parameters / 1e9:.2f} B parameters",
        f"  peak memory   {plan.peak_bytes / gib:.1f} GiB{device}: weights {plan.weights_bytes / gib:.1f}, "
        f"factors {plan.factors_bytes / gib:.1f}, activations of one batch {plan.activations_bytes / gib:.1f}, "
        f"logits {plan.logits_bytes / gib:.1f}",
        f"  time per shot {plan.seconds_per_shot:.0f} s at {plan.tflops:.2f} TFLOP/s ({parts} TFLOP)",
    ])
