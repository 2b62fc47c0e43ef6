"""The multi-shot pruning loop: curvature, costs, one global selection, updates.

This module is the only place that touches the model during pruning; it calls the pure
math of :mod:`llm_surgeon.math` and one :class:`~llm_surgeon.methods.PruningMethod`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from llm_surgeon.config import PruneConfig
from llm_surgeon.correction import correct_with_lora
from llm_surgeon.curvature import KroneckerFactors, collect_kronecker_factors
from llm_surgeon.errors import ConfigError, LLMSurgeonError
from llm_surgeon.layerwise import prune_layerwise
from llm_surgeon.math.kfac import DampedFactors, NonFiniteCurvatureError, damped_with_inverse
from llm_surgeon.math.selection import nm_violations, select_nm, select_unstructured
from llm_surgeon.math.threshold import linear_schedule
from llm_surgeon.methods import LayerwiseMethod, PruningMethod, get_method
from llm_surgeon.models.adapters import get_adapter


@dataclass
class ShotRecord:
    shot: int
    target_sparsity: float
    achieved_sparsity: float
    seconds_curvature: float
    seconds_costs: float
    seconds_update: float
    update_iterations_mean: float = 0.0
    update_loss_reduction: float = 0.0
    """Fraction of the no-update quadratic loss that the correlated update removed."""
    seconds_correction: float = 0.0
    correction_epoch_losses: list[float] = field(default_factory=list)
    """Mean training NLL per epoch of the low-rank correction after this shot (empty: none ran)."""


@dataclass
class PruneResult:
    config: PruneConfig
    masks: dict[str, torch.Tensor]
    shots: list[ShotRecord] = field(default_factory=list)
    nm_validation: dict | None = None
    structure: dict | None = None
    """Per-block heads and FFN widths kept, for structured pruning."""

    @property
    def seconds(self) -> dict[str, float]:
        curvature = sum(s.seconds_curvature for s in self.shots)
        costs = sum(s.seconds_costs for s in self.shots)
        update = sum(s.seconds_update for s in self.shots)
        correction = sum(s.seconds_correction for s in self.shots)
        return {"curvature": curvature, "costs": costs, "update": update, "correction": correction,
                "total": curvature + costs + update + correction}


def sparsity_stats(linears: dict[str, nn.Linear]) -> tuple[float, dict[str, float]]:
    """Fraction of exact zeros over all prunable weights, and per layer."""
    per_layer = {name: float((lin.weight == 0).float().mean()) for name, lin in linears.items()}
    zeros = sum(int((lin.weight == 0).sum()) for lin in linears.values())
    total = sum(lin.weight.numel() for lin in linears.values())
    return zeros / total, per_layer


def check_nm_applicable(linears: dict[str, nn.Linear], m: int) -> None:
    for name, lin in linears.items():
        if lin.in_features % m:
            raise ConfigError(
                f"N:M pattern needs input widths divisible by {m}; layer {name} has {lin.in_features} inputs"
            )


def validate_nm(linears: dict[str, nn.Linear], n: int, m: int) -> dict:
    """Check every group of every layer; raise if any breaks the pattern."""
    bad = {name: nm_violations(lin.weight.detach(), n, m) for name, lin in linears.items()}
    bad = {name: count for name, count in bad.items() if count}
    result = {"pattern": f"{n}:{m}", "layers_checked": len(linears), "violating_groups": bad, "valid": not bad}
    if bad:
        raise LLMSurgeonError(f"N:M validation failed: groups with fewer than {n} zeros in {sorted(bad)}")
    return result


def _damped(name: str, factor: torch.Tensor, relative: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Damp and invert; on failure raise the damping once (x10) and warn, then give up naming the layer."""
    try:
        return damped_with_inverse(factor, relative)
    except NonFiniteCurvatureError:
        warnings.warn(f"curvature of {name} is not finite or not positive definite; retrying with 10x damping",
                      stacklevel=3)
        try:
            return damped_with_inverse(factor, 10 * relative)
        except NonFiniteCurvatureError as exc:
            raise LLMSurgeonError(f"non-finite or indefinite curvature in layer {name}: {exc}") from exc


def prepare_shot_factors(factors: dict[str, KroneckerFactors], config: PruneConfig,
                         progress: bool = False) -> dict[str, DampedFactors]:
    """Damped factors and inverses of every layer; an ``A`` shared by several layers is inverted once."""
    shared_A: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    out = {}
    for name, f in tqdm(factors.items(), desc="invert curvature", disable=not progress):
        if id(f.A) not in shared_A:
            shared_A[id(f.A)] = _damped(name, f.A, config.damp_a)
        A, A_inv = shared_A[id(f.A)]
        G, G_inv = _damped(name, f.G, config.damp_g)
        out[name] = DampedFactors(G=G, A=A, G_inv=G_inv, A_inv=A_inv)
    return out


def needs_calibration(method: PruningMethod | LayerwiseMethod, config: PruneConfig) -> bool:
    return isinstance(method, LayerwiseMethod) or method.curvature != "none" or config.corrects


def end_shot(model: nn.Module, linears: dict[str, nn.Linear], calibration: torch.Tensor | None,
             result: PruneResult, progress: bool, on_shot_end: Callable[[int, PruneResult], None] | None) -> None:
    """What follows every shot's update at every granularity: the optional low-rank correction
    (recorded in the shot's record), then the checkpoint callback."""
    record, config = result.shots[-1], result.config
    if config.corrects:
        correction = correct_with_lora(
            model, linears, result.masks, calibration, rank=config.lora_rank, lr=config.lora_lr,
            epochs=config.lora_epochs, batch_size=config.batch_size, seed=config.seed + 7919 * record.shot,
            progress=progress,
        )
        record.seconds_correction = correction.seconds
        record.correction_epoch_losses = correction.epoch_losses
    if on_shot_end is not None:
        on_shot_end(record.shot, result)


def holds_full_factors(method: PruningMethod | LayerwiseMethod) -> bool:
    """Whether a shot keeps the full A and G of every layer at once (what ``check_memory`` sizes)."""
    return isinstance(method, PruningMethod) and method.curvature != "none" and not method.diagonal_only


def _prune_layerwise(model, method: LayerwiseMethod, calibration, config: PruneConfig, linears, progress: bool
                     ) -> ShotRecord:
    nm = config.nm
    t0 = time.perf_counter()
    prune_layerwise(
        model, get_adapter(model), calibration,
        lambda W, H: method.prune_layer(W, H, config.sparsity, nm),
        batch_size=config.batch_size, progress=progress,
    )
    achieved, _ = sparsity_stats(linears)
    return ShotRecord(shot=1, target_sparsity=config.target_sparsity, achieved_sparsity=achieved,
                      seconds_curvature=0.0, seconds_costs=0.0, seconds_update=time.perf_counter() - t0)


def prune_model(
    model: nn.Module,
    calibration: torch.Tensor | None,
    config: PruneConfig,
    progress: bool = True,
    on_shot_end: Callable[[int, PruneResult], None] | None = None,
    start: PruneResult | None = None,
) -> PruneResult:
    """Prune ``model`` in place over ``config.shots`` shots and return masks and timings.

    ``calibration`` is a (samples, seqlen) tensor of token ids; it may be ``None`` only for
    methods that need no data. ``start`` resumes from the masks and records of a checkpoint.
    """
    config.validate()
    method = get_method(config.method, config)
    linears = get_adapter(model).prunable_linears(model)
    nm = config.nm
    if nm is not None:
        check_nm_applicable(linears, nm[1])
    if needs_calibration(method, config) and calibration is None:
        raise ConfigError(f"method {config.method} needs calibration data")

    result = start or PruneResult(
        config=config,
        masks={name: torch.zeros_like(lin.weight, dtype=torch.bool) for name, lin in linears.items()},
    )
    if config.granularity == "structured":
        from llm_surgeon.structured import prune_structured

        prune_structured(model, calibration, config, result, progress, on_shot_end)
    elif isinstance(method, LayerwiseMethod):
        if not result.shots:
            result.shots.append(_prune_layerwise(model, method, calibration, config, linears, progress))
            result.masks = {name: lin.weight.detach() == 0 for name, lin in linears.items()}
            end_shot(model, linears, calibration, result, progress, on_shot_end)
    else:
        _prune_in_shots(model, method, calibration, config, linears, result, progress, on_shot_end)
    if nm:
        result.nm_validation = validate_nm(linears, *nm)
    return result


def _prune_in_shots(model, method: PruningMethod, calibration, config: PruneConfig, linears, result: PruneResult,
                    progress: bool, on_shot_end) -> None:
    nm = config.nm
    schedule = linear_schedule(1.0 if nm else config.sparsity, config.shots)
    scope = config.magnitude_scope if config.method == "magnitude" else "global"
    for shot in range(len(result.shots), config.shots):
        fraction = schedule[shot]
        t0 = time.perf_counter()
        factors = None
        if method.curvature != "none":
            factors = collect_kronecker_factors(
                model, linears, calibration, batch_size=config.batch_size, fisher=config.fisher,
                seed=config.seed + shot, progress=progress, with_gradients=method.curvature != "inputs",
                diagonal_only=method.diagonal_only,
            )
        t1 = time.perf_counter()

        if method.curvature == "kfac_inverse":
            factors = prepare_shot_factors(factors, config, progress)
        layer_factors = factors or {}
        costs = {name: method.element_costs(lin.weight.detach(), layer_factors.get(name))
                 for name, lin in linears.items()}
        if nm:
            masks = select_nm(costs, result.masks, nm[0], nm[1], fraction, scope)
        else:
            masks = select_unstructured(costs, result.masks, fraction, scope)
        del costs
        t2 = time.perf_counter()

        iterations, loss_before, loss_after = [], 0.0, 0.0
        for name, lin in tqdm(linears.items(), desc=f"shot {shot + 1}/{config.shots}: update", disable=not progress):
            with torch.no_grad():
                new_weight, stats = method.update(lin.weight.detach(), masks[name], layer_factors.get(name))
                lin.weight.copy_(new_weight)
            if stats is not None:
                iterations.append(stats.iterations)
                loss_before += stats.loss_no_update
                loss_after += stats.loss_after
        t3 = time.perf_counter()
        del factors, layer_factors

        result.masks = masks
        achieved, _ = sparsity_stats(linears)
        result.shots.append(
            ShotRecord(
                shot=shot + 1,
                target_sparsity=fraction * (nm[0] / nm[1] if nm else 1.0),
                achieved_sparsity=achieved,
                seconds_curvature=t1 - t0,
                seconds_costs=t2 - t1,
                seconds_update=t3 - t2,
                update_iterations_mean=sum(iterations) / len(iterations) if iterations else 0.0,
                update_loss_reduction=1 - loss_after / loss_before if loss_before > 0 else 0.0,
            )
        )
        end_shot(model, linears, calibration, result, progress, on_shot_end)
