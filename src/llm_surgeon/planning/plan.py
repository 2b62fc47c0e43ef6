"""``llm-surgeon plan``: a shot's peak memory and time, and the whole run's time, predicted from a model's config.

The model is built on PyTorch's meta device (shapes, no storage), so the plan for a 70B model
takes seconds and no weights. Memory and the settings that make a shot fit come from
:func:`llm_surgeon.planning.fit.fit_shot`, the same fit ``prune`` runs with, margin included; time is the
shot's floating-point work over this machine's matmul throughput (:mod:`llm_surgeon.planning.throughput`:
a median of timings, cached per machine) or the one given with ``--tflops`` to plan for another machine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from llm_surgeon.config import PruneConfig
from llm_surgeon.curvature.block_groups import block_ranges
from llm_surgeon.data.calibration import training_window_counts
from llm_surgeon.engine.pruner import RunParts, setup
from llm_surgeon.errors import ConfigError, ModelLoadError
from llm_surgeon.methods import STRUCTURED, LayerwiseMethod, PruningMethod
from llm_surgeon.models.adapters import ArchitectureAdapter, checked_meta_model, get_adapter
from llm_surgeon.planning.fit import SAFETY_MARGIN, ShotFit, collects_gradients, fit_shot, margin_bytes
from llm_surgeon.planning.memory import held_curvature, raw_factor_bytes, reconstruction_bytes
from llm_surgeon.planning.throughput import Throughput, given_tflops, machine_tflops

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
RUNTIME_BYTES = 300 * 2**20
"""The process before any model: Python, torch and transformers imported (256 MB RSS measured on CPU)."""


@dataclass
class ShotPlan:
    """What one shot is predicted to need on each of ``devices`` devices, and the settings that make it fit."""

    model_type: str
    parameters: int
    devices: int
    weights_bytes: int
    """The device's share of the weights, plus the runtime (:data:`RUNTIME_BYTES`)."""
    factors_bytes: int
    activations_bytes: int
    logits_bytes: int
    peak_bytes: int
    """The largest predicted peak of any device (each holds its share of the blocks)."""
    flops: dict[str, float]
    tflops: float
    """Throughput of the float32 work (statistics, inversions, update)."""
    pass_tflops: float
    """Throughput of the forward/backward passes, in the model's dtype (bf16 is slow on many CPUs)."""
    seconds_per_shot: float
    device_bytes: int | None
    fits: bool | None
    block_groups: int = 1
    """Block groups collected in separate passes so that a shot fits ``device_bytes`` (1: one pass)."""
    batch_size: int = 8
    """The micro-batch the plan assumes: the requested one, or the largest that fits when that one does not."""
    ranks: int = 1
    """``torchrun`` processes sharing the calibration windows (each holds the model on its ``devices``)."""
    communication_bytes: dict[str, int] | None = None
    """Bytes each rank sends or receives in one shot, by kind (see :func:`communication_bytes`)."""
    correction_bytes: int = 0
    """``--lora-rank``: the low-rank correction after the shot, which trains once the factors are freed (the peak
    is the larger phase; :func:`~llm_surgeon.planning.memory.correction_bytes`)."""
    reconstruction_bytes: dict[str, int] | None = None
    """``--reconstruct``: the dense copy (held all run) and the re-fit's own needs, by part
    (:func:`~llm_surgeon.planning.memory.reconstruction_bytes`)."""
    layerwise_bytes: int = 0
    """A layer-by-layer method's block being pruned (:func:`~llm_surgeon.planning.memory.layerwise_bytes`)."""
    shots: int = 1
    """The shots of the run (``effective_shots``: one for a one-shot method)."""
    seconds_total: float = 0.0
    """The whole run's time: every shot's (each shot does the same work), and healing's."""
    margin_bytes: int = 0
    """What a fitting plan leaves free on each device (:data:`~llm_surgeon.planning.fit.SAFETY_MARGIN`)."""
    throughput_source: str = ""
    """Which machine's throughput the time used, and how it was measured (or that ``--tflops`` gave it)."""
    requested_batch_size: int = 8
    """The micro-batch asked for (at most the windows); ``batch_size`` is smaller when only that fits."""
    backward: bool = True
    """Whether the method's passes keep activations for a backward
    (:func:`~llm_surgeon.planning.fit.collects_gradients`)."""
    batch_fixed: str | None = None
    """Why the batch may not be lowered to fit (a correction trains on it), else None."""
    heal_bytes: int = 0
    """``--heal``: healing after the last shot, and the dense model's predictions it keeps all run
    (:func:`~llm_surgeon.planning.memory.heal_bytes`)."""
    heal_seconds: float = 0.0
    """``--heal``: the dense model's predictions, the training pass and the held-out KL before and after."""

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


def shot_flops(model: nn.Module, adapter: ArchitectureAdapter, linears: dict[str, nn.Linear], config: PruneConfig,
               input_widths: list[int], curvature: dict[str, nn.Linear] | None = None, backward: bool = True,
               update: str = "pcg") -> dict[str, float]:
    """Floating-point work of one LLM Surgeon shot, by part.

    pass: forward and input-gradient backward over the calibration tokens (weights frozen: no
    weight gradients), attention scores included; statistics: ``aᵀa`` per distinct input and ``gᵀg``
    per layer; inversions: float64 Cholesky and inverse of every factor, twice (for the costs, then the
    update); update (:func:`update_kind`): ``pcg``, ``update_iterations`` PCG steps of four Kronecker products per
    layer; ``closed-form``, a structure's removal compensated in one product per layer, each layer taken to lose
    the shot's average share of its narrower side; ``none``, nothing; correction (``--lora-rank``):
    its epochs over the calibration tokens, weight gradients included. ``curvature``: the
    layers whose factors the shot collects when not all (:func:`~llm_surgeon.planning.memory.held_curvature`).
    Without ``backward`` (the methods of input statistics: ZipLM, L-OBD, FLAP;
    :func:`~llm_surgeon.planning.fit.collects_gradients`) the pass is the blocks' forward alone, no output
    head, and no ``G`` is summed or inverted: pricing it as a forward and backward through the 262k-wide head
    overstated ZipLM's shot on Gemma-3-270M 2.5x (254 s planned, 103 s measured).
    """
    held, widths = held_curvature(linears, input_widths, curvature)
    tokens = config.calib_samples * config.calib_seqlen
    # a forward, or one kind of gradient in the backward
    one_way = 2 * forward_params(model) * tokens + _attention_flops(model, adapter, config)
    passes = 2 * one_way if backward else _blocks_forward_flops(model, adapter, config)
    outputs = [lin.out_features for lin in held.values()] if backward else []
    stats = 2 * tokens * (sum(w**2 for w in widths) + sum(o**2 for o in outputs))
    inversions = 2 * (sum(w**3 for w in widths) + sum(o**3 for o in outputs))
    work = {"pass": float(passes), "statistics": float(stats), "inversions": float(inversions),
            "update": _update_flops(linears, config, update)}
    return work | _correction_flops(config, one_way)


def update_kind(method: PruningMethod, granularity: str) -> str:
    """How a shot compensates the kept weights: ``pcg`` (LLM Surgeon's correlated update of single weights or
    N:M groups, solved iteratively), ``closed-form`` (a structure's columns or rows removed and the rest
    compensated in one solve: LLM Surgeon, ZipLM) or ``none`` (removed weights zeroed: magnitude, OBD, FLAP).
    Pricing a structured shot's update as PCG steps put 78 s a shot into the plan of Gemma-3-270M's structured
    runs whose updates took 7-11 s."""
    if granularity == STRUCTURED:
        return "closed-form" if type(method).remove_columns is not PruningMethod.remove_columns else "none"
    return "pcg" if type(method).update is not PruningMethod.update else "none"


def _update_flops(linears: dict[str, nn.Linear], config: PruneConfig, kind: str) -> float:
    """The update's work in one shot (:func:`update_kind`)."""
    if kind == "pcg":
        per_step = sum(2 * lin.out_features * lin.in_features * (lin.out_features + lin.in_features)
                       for lin in linears.values())
        return float(2 * per_step * (config.update_iterations + 1))
    if kind == "closed-form":
        share = config.sparsity / config.effective_shots
        return float(sum(4 * lin.out_features * lin.in_features * min(lin.out_features, lin.in_features) * share
                         for lin in linears.values()))
    return 0.0


def _correction_flops(config: PruneConfig, one_way: float) -> dict[str, float]:
    """``--lora-rank``: each epoch a forward and a backward with weight gradients (three of the whole model's
    forwards, ``one_way`` each) over the calibration tokens; nothing without a correction."""
    return {"correction": float(config.lora_epochs * 3 * one_way)} if config.corrects else {}


def layerwise_flops(model: nn.Module, adapter: ArchitectureAdapter, linears: dict[str, nn.Linear],
                    config: PruneConfig, method: LayerwiseMethod) -> dict[str, float]:
    """Floating-point work of a layer-by-layer method's one pass (SparseGPT, Wanda), by part.

    pass: every block run forward twice over the calibration tokens (for its Hessians, then pruned, for the next
    block's inputs), without the output head and without a backward; statistics: ``xᵀx`` summed by every Linear's
    own hook (layers reading the same input each sum it); solve: the method's work on each layer's ``(W, H)``
    (:meth:`~llm_surgeon.methods.base.LayerwiseMethod.layer_flops`). Pricing these methods like an LLM Surgeon
    shot, whose passes are mostly the head's and the backward's, overstated their time (Gemma-3-270M, SparseGPT
    2:4: 257 s planned, 142 s measured).
    """
    tokens = config.calib_samples * config.calib_seqlen
    work = {"pass": float(2 * _blocks_forward_flops(model, adapter, config)),
            "statistics": float(sum(2 * tokens * lin.in_features**2 for lin in linears.values())),
            "solve": float(sum(method.layer_flops(lin.out_features, lin.in_features) for lin in linears.values()))}
    whole_forward = 2 * forward_params(model) * tokens + _attention_flops(model, adapter, config)
    return work | _correction_flops(config, whole_forward)


def _attention_flops(model: nn.Module, adapter: ArchitectureAdapter, config: PruneConfig) -> int:
    """The attention scores and their weighted sum in every block, for the calibration windows."""
    tokens = config.calib_samples * config.calib_seqlen
    return 4 * len(adapter.blocks(model)) * tokens * config.calib_seqlen * model.config.hidden_size


def _blocks_forward_flops(model: nn.Module, adapter: ArchitectureAdapter, config: PruneConfig) -> int:
    """One forward of the blocks alone over the calibration windows (no output head): what a pass of input
    statistics runs, or a layer-by-layer method's pass twice."""
    block_params = sum(p.numel() for block in adapter.blocks(model) for p in block.parameters())
    return 2 * block_params * config.calib_samples * config.calib_seqlen + _attention_flops(model, adapter, config)


def communication_bytes(model: nn.Module, linears: dict[str, nn.Linear], curvature: dict[str, nn.Linear],
                        widths: list[int], config: PruneConfig, dtype: str, devices: int, ranks: int, passes: float
                        ) -> dict[str, int]:
    """What one rank moves in one shot, by kind.

    ``device_boundaries``: with blocks split over ``devices``, the hidden states crossing each boundary
    forward and their gradients backward, for the rank's share of the tokens, over ``passes`` passes.
    ``factor_reduce``: over ``ranks``, the ``curvature`` layers' raw sums (packed float32) reduced to their
    owners; a ring reduce moves ``(ranks - 1) / ranks`` of it through each rank. ``weight_broadcast``: the
    updated weights each rank receives from the owners. ``cost_inputs``: two float64 vectors per layer
    gathered on every rank.
    """
    tokens = config.calib_samples * config.calib_seqlen / ranks
    boundary = 2 * tokens * model.config.hidden_size * DTYPE_BYTES[dtype] * (devices - 1) * passes
    share = (ranks - 1) / ranks
    weights = sum(lin.weight.numel() for lin in linears.values()) * DTYPE_BYTES[dtype]
    vectors = 8 * sum(lin.out_features + lin.in_features for lin in linears.values())
    sums = raw_factor_bytes(*held_curvature(linears, widths, curvature))
    return {"device_boundaries": int(boundary), "factor_reduce": int(sums * share),
            "weight_broadcast": int(weights * share), "cost_inputs": int(vectors * share)}


def _pass_share(blocks: int, groups: int) -> float:
    """Forward-backward work of a shot in ``groups`` group passes over that of one pass: every pass runs the
    whole forward (a third of the work) and the backward down to its group's first block."""
    return sum(1 / 3 + 2 / 3 * (blocks - r.start) / blocks for r in block_ranges(blocks, groups))


def _meta_run(model_or_config: str, config: PruneConfig) -> tuple[object, nn.Module, ArchitectureAdapter, RunParts]:
    """The config, the model on the meta device, its adapter and what ``prune``'s setup builds for it (the
    same method, layers and selector, and the method's model preparation: FLAP's biases)."""
    model_config = read_config(model_or_config)
    model = checked_meta_model(model_config)  # built once, refused in one line when no adapter can take it
    adapter = get_adapter(model)
    return model_config, model, adapter, setup(model, config, adapter)


def _throughputs(tflops: float | None, dtype: str) -> tuple[Throughput, Throughput]:
    """(float32 work, passes in the model's dtype): the given throughput for both, else this machine's."""
    if tflops:
        return given_tflops(tflops), given_tflops(tflops)
    rate = machine_tflops(torch.float32)
    return rate, rate if dtype == "float32" else machine_tflops(getattr(torch, dtype))


def forward_params(model: nn.Module) -> int:
    """The parameters a token's forward multiplies by: every one but the input embedding (a lookup), and the
    output head counted in full, tied or not (a tied head is missing from ``named_parameters`` beside the
    embedding; with a 262k vocabulary it is most of a small model's work)."""
    head = model.get_output_embeddings().weight
    body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and p is not head)
    return body + head.numel()


def heal_flops(model: nn.Module, adapter: ArchitectureAdapter, config: PruneConfig) -> dict[str, float]:
    """Floating-point work of healing, by part: the dense model's predictions on every window (a forward),
    the training pass (a forward and a backward with weight gradients, three forwards' worth) and the held-out
    KL before and after (two forwards). The output head counts in full (tied or not): with a large
    vocabulary it is much of a small model's work."""
    if not config.heal:
        return {}
    train, held = training_window_counts(config.heal_tokens, config.calib_seqlen)
    c = model.config
    per_token = 2 * forward_params(model) + 4 * len(adapter.blocks(model)) * config.calib_seqlen * c.hidden_size
    tokens = config.calib_seqlen
    return {"teacher": float((train + held) * tokens * per_token), "training": float(3 * train * tokens * per_token),
            "held_out_kl": float(2 * held * tokens * per_token)}


def _shot_work(model: nn.Module, adapter: ArchitectureAdapter, parts: RunParts, config: PruneConfig,
               widths: list[int], groups: int) -> tuple[dict[str, float], float]:
    """A shot's floating-point work by part, and its passes counted as forward-and-back passes of the whole
    model (what :func:`communication_bytes` multiplies): a layer-by-layer method's own (:func:`layerwise_flops`,
    one pass), else an LLM Surgeon-style shot's collected in ``groups`` block groups (:func:`shot_flops`,
    :func:`_pass_share`)."""
    if isinstance(parts.method, LayerwiseMethod):
        # its block outputs cross each device boundary once, forward: half a forward-and-back pass
        return layerwise_flops(model, adapter, parts.linears, config, parts.method), 0.5
    curvature = parts.selector.curvature_layers(parts.method)
    backward = collects_gradients(parts.method)
    flops = shot_flops(model, adapter, parts.linears, config, widths, curvature, backward,
                       update_kind(parts.method, config.granularity))
    if not backward:  # a forward-only pass cannot stop early: each group's pass runs every block, one way
        flops["pass"] *= groups
        return flops, groups / 2
    share = _pass_share(len(adapter.blocks(model)), groups)
    flops["pass"] *= share
    return flops, share


def _shot_seconds(flops: dict[str, float], rate: Throughput, pass_rate: Throughput) -> float:
    """Passes (and the correction's epochs) at the dtype's rate, the float32 work at the float32 rate; blocks
    split over devices run one after another, so more devices do not speed it up."""
    passes = flops["pass"] + flops.get("correction", 0.0)
    return passes / (pass_rate.tflops * 1e12) + (sum(flops.values()) - passes) / (rate.tflops * 1e12)


def plan_shot(model_or_config: str, config: PruneConfig, dtype: str = "float32", device_bytes: int | None = None,
              tflops: float | None = None, devices: int = 1, ranks: int = 1) -> ShotPlan:
    """The plan of ``config`` for a model on ``devices`` devices of ``device_bytes``, from its config alone: the
    block groups and micro-batch that make a shot fit (:func:`~llm_surgeon.planning.fit.fit_shot`, with its
    margin), a shot's time and the whole run's. With ``ranks`` data-parallel processes each rank holds the same
    (its partial sums are full-size), and the work is shared: the passes by the windows, the inversions and the
    update by the layer owners."""
    config.validate()
    for flag, value in (("--devices", devices), ("--ranks", ranks)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    model_config, model, adapter, parts = _meta_run(model_or_config, config)
    linears, widths = parts.linears, adapter.distinct_input_widths(model)
    curvature = parts.selector.curvature_layers(parts.method)
    blocks = len(adapter.blocks(model))
    parameters = sum(p.numel() for p in model.parameters())
    weights = parameters * DTYPE_BYTES[dtype] // devices + RUNTIME_BYTES
    fit = fit_shot(model, adapter, parts, config, DTYPE_BYTES[dtype],
                   None if device_bytes is None else device_bytes - weights, margin_bytes(device_bytes), devices)
    flops, passes = _shot_work(model, adapter, parts, config, widths, min(blocks, fit.block_groups))
    rate, pass_rate = _throughputs(tflops, dtype)
    layerwise = isinstance(parts.method, LayerwiseMethod)  # not sharded: every rank prunes on every window
    seconds = _shot_seconds(flops, rate, pass_rate) / (1 if layerwise else ranks)
    communication = communication_bytes(model, linears, curvature, widths, config, dtype, devices, ranks, passes)
    refit = reconstruction_bytes(model, adapter, linears, config.calib_samples, config.calib_seqlen,
                                 DTYPE_BYTES[dtype]) if config.reconstruct else None
    source = rate.source if pass_rate == rate else f"{rate.source}; passes: {pass_rate.source}"
    heal_seconds = sum(heal_flops(model, adapter, config).values()) / (pass_rate.tflops * 1e12)
    return ShotPlan(model_config.model_type, parameters, devices, weights, fit.memory.factors,
                    fit.memory.activations, fit.memory.logits, weights + fit.memory.total, flops, rate.tflops,
                    pass_rate.tflops, seconds, device_bytes, fit.fits, fit.block_groups, fit.batch_size, ranks,
                    communication, fit.memory.correction, refit,
                    **_run_fields(fit, config, seconds, source, heal_seconds),
                    heal_bytes=fit.memory.heal + fit.memory.heal_targets, heal_seconds=heal_seconds,
                    layerwise_bytes=fit.memory.layerwise)


def _run_fields(fit: ShotFit, config: PruneConfig, seconds: float, source: str, heal_seconds: float = 0.0) -> dict:
    """The plan's fields beyond one shot: the whole run's time, the margin, the batch asked for and why it stays."""
    return {"shots": config.effective_shots, "seconds_total": seconds * config.effective_shots + heal_seconds,
            "margin_bytes": fit.margin, "throughput_source": source, "requested_batch_size": fit.requested_batch,
            "backward": fit.backward, "batch_fixed": fit.batch_fixed}


def describe(plan: ShotPlan) -> str:
    gib = 2**30
    each = f" per device (x{plan.devices}, blocks split evenly)" if plan.devices > 1 else ""
    parts = ", ".join(f"{k} {v / 1e12:.1f}" for k, v in plan.flops.items())
    moved = ", ".join(f"{k.replace('_', ' ')} {v / gib:.1f}" for k, v in (plan.communication_bytes or {}).items()
                      if v)
    return "\n".join([
        f"llm-surgeon plan: {plan.model_type}, {plan.parameters / 1e9:.2f} B parameters",
        f"  peak memory   {plan.peak_bytes / gib:.1f} GiB{each}{_describe_device(plan)}: weights "
        f"{plan.weights_bytes / gib:.1f}, factors {plan.factors_bytes / gib:.1f}, activations of one batch "
        f"{plan.activations_bytes / gib:.1f}, logits {plan.logits_bytes / gib:.1f}"
        + (f"; the correction after the shot {plan.correction_bytes / gib:.1f}" if plan.correction_bytes else "")
        + (f", the block pruned layer by layer {plan.layerwise_bytes / gib:.2f}" if plan.layerwise_bytes else ""),
        f"  settings      {_describe_settings(plan)}",
        f"  time per shot {plan.seconds_per_shot:.0f} s; whole run ({plan.shots} shot{'s' if plan.shots > 1 else ''}"
        f"{' and healing' if plan.heal_seconds else ''})"
        f" {plan.seconds_total:.0f} s at {plan.tflops:.2f} TFLOP/s (passes at {plan.pass_tflops:.2f}; {parts} TFLOP)",
        f"  throughput    {plan.throughput_source}",
        *([f"  moved / rank  {moved} GiB per shot"] if moved else []),
        *([_describe_reconstruction(plan.reconstruction_bytes)] if plan.reconstruction_bytes else []),
        *([f"  heal          {plan.heal_bytes / gib:.1f} GiB after the last shot (the dense model's predictions "
           f"held all run included); about {plan.heal_seconds:.0f} s more"] if plan.heal_bytes else []),
    ])


def _describe_device(plan: ShotPlan) -> str:
    """`` of 80 GiB — fits, 4.0 GiB (5%) kept free ...``: the verdict always states the margin it kept."""
    if not plan.device_bytes:
        return ""
    gib = 2**30
    verdict = "fits" if plan.fits else "does NOT fit"
    return (f" of {plan.device_bytes / gib:.3g} GiB — {verdict}, {plan.margin_bytes / gib:.2g} GiB "
            f"({SAFETY_MARGIN:.0%}) kept free for allocator fragmentation and the CUDA context")


def _describe_settings(plan: ShotPlan) -> str:
    gib = 2**30
    settings = f"--batch-size {plan.batch_size}"
    if plan.batch_size < plan.requested_batch_size:
        settings += f" (lowered from {plan.requested_batch_size}: the same result in more passes)"
    elif plan.fits is False and plan.batch_fixed:
        settings += f" (kept: {plan.batch_fixed})"
    settings += f", {plan.block_groups} block group(s)"
    if plan.device_bytes:
        settings += f" (chosen by --max-memory {plan.device_bytes / gib:.3g}GiB)"
    if plan.ranks > 1:
        settings += f", {plan.ranks} ranks (each as above)"
    return settings


def _describe_reconstruction(parts: dict[str, int]) -> str:
    gib = 2**30
    refit = parts["block_states"] + parts["stage_sums"] + parts["dense_block"]
    return (f"  reconstruct   dense copy {parts['dense_copy'] / gib:.2f} GiB on the host for the whole run; the re-fit "
            f"after each shot {refit / gib:.2f} GiB (block states {parts['block_states'] / gib:.2f}, stage sums "
            f"{parts['stage_sums'] / gib:.2f}, dense block {parts['dense_block'] / gib:.2f})")
