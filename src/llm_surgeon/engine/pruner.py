"""The multi-shot pruning loop, written once for every method and granularity.

Each shot: the collector gathers curvature, the method turns it into costs, the unit
selector (elements, N:M groups or structures) chooses the removals with one global
threshold and applies the method's compensation, the optional low-rank correction runs,
and the caller checkpoints. Layer-wise one-shot methods (SparseGPT, Wanda) take their own
block-by-block engine but finish their single shot the same way.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from llm_surgeon.config import PruneConfig
from llm_surgeon.curvature.block_groups import block_ranges, collect_in_groups
from llm_surgeon.curvature.collectors import CurvatureCollector, CurvatureRequest, LocalCollector
from llm_surgeon.curvature.factors import LazyDampedFactors, RawFactorsOnDevice
from llm_surgeon.curvature.layout import MemoryLayout
from llm_surgeon.curvature.placement import EVERY_LAYER_HERE
from llm_surgeon.engine.correction import correct_with_lora
from llm_surgeon.engine.layerwise import prune_layerwise
from llm_surgeon.engine.reconstruction import DenseWeights, reconstruct, snapshot_dense
from llm_surgeon.engine.selectors import UnitSelector, make_selector
from llm_surgeon.errors import ConfigError, LLMSurgeonError
from llm_surgeon.math.selection import nm_violations
from llm_surgeon.methods import LayerwiseMethod, MagnitudePruning, MethodBase, PruningMethod, get_method
from llm_surgeon.models.adapters import ArchitectureAdapter, get_adapter


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
    unrouted: list[str] = field(default_factory=list)
    """Experts that no calibration token reached in this shot (left dense, or pruned by magnitude)."""
    seconds_reconstruction: float = 0.0
    reconstruction_error_before: float = 0.0
    """Mean over blocks of the relative block-output error (vs the dense model) before the reconstruction."""
    reconstruction_error_after: float = 0.0
    reconstruction_iterations_mean: float = 0.0
    heal: dict | None = None
    """Healing after this shot (``--heal-each-shot``; not after the last, whose healing is the result's)."""

    @property
    def seconds_total(self) -> float:
        """The shot's pruning seconds, every stage."""
        return (self.seconds_curvature + self.seconds_costs + self.seconds_update + self.seconds_correction
                + self.seconds_reconstruction)


@dataclass
class PruneResult:
    config: PruneConfig
    masks: dict[str, torch.Tensor]
    shots: list[ShotRecord] = field(default_factory=list)
    nm_validation: dict | None = None
    structure: dict | None = None
    """Per-block heads and FFN widths kept, for structured pruning."""
    routed_rows: dict[str, int] = field(default_factory=dict)
    """Per layer, the calibration token rows it saw in the last shot (an expert: those routed to it)."""
    heal: dict | None = None
    """What healing after the last shot did (``--heal``), once it has run; None before (or without it)."""

    @property
    def seconds(self) -> dict[str, float]:
        curvature = sum(s.seconds_curvature for s in self.shots)
        costs = sum(s.seconds_costs for s in self.shots)
        update = sum(s.seconds_update for s in self.shots)
        correction = sum(s.seconds_correction for s in self.shots)
        reconstruction = sum(s.seconds_reconstruction for s in self.shots)
        return {"curvature": curvature, "costs": costs, "update": update, "correction": correction,
                "reconstruction": reconstruction, "total": curvature + costs + update + correction + reconstruction}


ShotCallback = Callable[[int, PruneResult], None]


@dataclass
class PruneJob:
    """Everything a shot touches, gathered once: the model, its adapter, its prunable layers, the data."""

    model: nn.Module
    adapter: ArchitectureAdapter
    linears: dict[str, nn.Linear]
    calibration: torch.Tensor | None
    config: PruneConfig
    progress: bool = True
    on_shot_end: ShotCallback | None = None
    layout: MemoryLayout = field(default_factory=MemoryLayout)
    dense: DenseWeights | None = None
    """The dense weights, kept when the run reconstructs after every shot."""

    def device_of(self, name: str) -> torch.device:
        """Where layer ``name`` computes (its factors are brought there, wherever they accumulate)."""
        return self.linears[name].weight.device


def sparsity_stats(linears: dict[str, nn.Linear]) -> tuple[float, dict[str, float]]:
    """Fraction of exact zeros over all prunable weights, and per layer."""
    per_layer = {name: float((lin.weight == 0).float().mean()) for name, lin in linears.items()}
    zeros = sum(int((lin.weight == 0).sum()) for lin in linears.values())
    total = sum(lin.weight.numel() for lin in linears.values())
    return zeros / total, per_layer


def validate_nm(linears: dict[str, nn.Linear], n: int, m: int) -> dict:
    """Check every group of every layer; raise if any breaks the pattern."""
    bad = {name: nm_violations(lin.weight.detach(), n, m) for name, lin in linears.items()}
    bad = {name: count for name, count in bad.items() if count}
    result = {"pattern": f"{n}:{m}", "layers_checked": len(linears), "violating_groups": bad, "valid": not bad}
    if bad:
        raise LLMSurgeonError(f"N:M validation failed: groups with fewer than {n} zeros in {sorted(bad)}")
    return result


def needs_calibration(method: MethodBase, config: PruneConfig) -> bool:
    return method.needs_calibration() or config.corrects or config.reconstruct


def end_shot(job: PruneJob, result: PruneResult) -> None:
    """What follows every shot's update at every granularity: the optional reconstruction and low-rank
    correction (recorded in the shot's record), then the checkpoint callback."""
    record, config = result.shots[-1], job.config
    if config.reconstruct:
        fit = reconstruct(job.model, job.adapter, result.masks, job.dense, job.calibration, config.batch_size,
                          config.reconstruct_iterations, config.reconstruct_damp, job.progress)
        record.seconds_reconstruction = fit.seconds
        record.reconstruction_iterations_mean = fit.mean_iterations
        record.reconstruction_error_before = sum(fit.block_error_before) / len(fit.block_error_before)
        record.reconstruction_error_after = sum(fit.block_error_after) / len(fit.block_error_after)
    if config.corrects:
        correction = correct_with_lora(
            job.model, job.adapter, job.linears, result.masks, job.calibration, rank=config.lora_rank,
            lr=config.lora_lr, epochs=config.lora_epochs, batch_size=config.batch_size,
            seed=config.seed + 7919 * record.shot, progress=job.progress,
        )
        record.seconds_correction = correction.seconds
        record.correction_epoch_losses = correction.epoch_losses
    if job.on_shot_end is not None:
        job.on_shot_end(record.shot, result)


def _layerwise_shot(job: PruneJob, method: LayerwiseMethod, result: PruneResult) -> None:
    config = job.config
    t0 = time.perf_counter()
    prune_layerwise(job.model, job.adapter, job.calibration,
                    lambda W, H: method.prune_layer(W, H, config.sparsity, config.nm),
                    batch_size=config.batch_size, progress=job.progress)
    achieved, _ = sparsity_stats(job.linears)
    result.masks = {name: lin.weight.detach() == 0 for name, lin in job.linears.items()}
    result.shots.append(ShotRecord(shot=1, target_sparsity=config.target_sparsity, achieved_sparsity=achieved,
                                   seconds_curvature=0.0, seconds_costs=0.0, seconds_update=time.perf_counter() - t0))
    end_shot(job, result)


def curvature_request(method: PruningMethod) -> CurvatureRequest:
    """What ``method``'s curvature pass collects: output gradients or inputs only, full or diagonal, input means."""
    return CurvatureRequest(with_gradients=method.curvature.gradients, diagonal_only=method.diagonal_only,
                            input_means=method.input_means)


def _raw_factors(job: PruneJob, method: PruningMethod, layers: dict[str, nn.Linear], collector: CurvatureCollector,
                 shot: int, label: str, scratch: Path | None) -> Mapping:
    """The curvature pass of a shot over ``layers`` (those the selection reads): nothing, inputs only, or
    full/diagonal Kronecker factors; with block groups one pass per group, the sums waiting in ``scratch``."""
    if not method.curvature.collects:
        return {}
    request = curvature_request(method)
    seed = job.config.seed + shot
    if scratch is None:
        return collector.collect(job.model, job.adapter, layers, job.calibration, request, seed, label)
    ranges = block_ranges(len(job.adapter.blocks(job.model)), job.layout.block_groups)
    return collect_in_groups(collector, job.model, job.adapter, layers, job.calibration, request, seed,
                             ranges, scratch, label)


def _cost_factors(job: PruneJob, method: PruningMethod, raw: Mapping) -> RawFactorsOnDevice | LazyDampedFactors:
    """What the method's costs and update read: the raw factors, or damped ones with their inverses, made
    one layer at a time beside the layer when asked for (``.get(name)`` either way)."""
    if not method.curvature.inverses:
        return RawFactorsOnDevice(raw, job.device_of)
    return LazyDampedFactors(raw, job.config.damp_g, job.config.damp_a, job.device_of)


@contextmanager
def _scratch(job: PruneJob, method: PruningMethod) -> Iterator[Path | None]:
    """A folder for one shot's grouped factor sums (None without groups), removed when the shot ends."""
    if job.layout.block_groups == 1 or not method.curvature.collects:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix=".llm-surgeon-factors-", dir=job.layout.scratch_dir) as folder:
        yield Path(folder)


def _one_shot(job: PruneJob, method: PruningMethod, selector: UnitSelector, collector: CurvatureCollector,
              result: PruneResult, shot: int, fraction: float) -> None:
    with _scratch(job, method) as scratch:
        _shot_with_scratch(job, method, selector, collector, result, shot, fraction, scratch)
    end_shot(job, result)


def _shot_with_scratch(job: PruneJob, method: PruningMethod, selector: UnitSelector, collector: CurvatureCollector,
                       result: PruneResult, shot: int, fraction: float, scratch: Path | None) -> None:
    label = f"shot {shot + 1}/{job.config.effective_shots}"
    t0 = time.perf_counter()
    raw = _raw_factors(job, method, selector.curvature_layers(method), collector, shot, label, scratch)
    t1 = time.perf_counter()
    factors = _cost_factors(job, method, raw)  # damped layer by layer when asked for
    placement = collector.placement() if method.curvature.collects else EVERY_LAYER_HERE
    rows = collector.routed_rows() if method.curvature.collects else {}
    unrouted = [name for name in job.linears if rows.get(name, 1) == 0]
    masks = dict(result.masks)
    if unrouted:
        masks.update(_unrouted_shot(job, selector, unrouted, masks, fraction, label))
        selector, fraction = selector.without(unrouted, masks, fraction)
    masks.update(selector.select(method, factors, masks, fraction, label, placement))
    t2 = time.perf_counter()
    totals = selector.apply(method, factors, masks, label, job.progress, placement)
    t3 = time.perf_counter()
    del factors, raw
    result.masks = masks
    result.routed_rows = rows
    achieved, _ = sparsity_stats(job.linears)
    iterations, before = totals.iterations, totals.loss_no_update
    result.shots.append(ShotRecord(
        shot=shot + 1, target_sparsity=selector.target_sparsity(fraction), achieved_sparsity=achieved,
        seconds_curvature=t1 - t0, seconds_costs=t2 - t1, seconds_update=t3 - t2,
        update_iterations_mean=sum(iterations) / len(iterations) if iterations else 0.0,
        update_loss_reduction=1 - totals.loss_after / before if before > 0 else 0.0, unrouted=unrouted,
    ))


def _unrouted_shot(job: PruneJob, selector: UnitSelector, unrouted: list[str], masks: dict[str, torch.Tensor],
                   fraction: float, label: str) -> dict[str, torch.Tensor]:
    """Experts that no calibration token reached have no curvature: left as they are (unstructured), or
    with ``prune_unrouted`` brought to the shot's fraction by magnitude, layer by layer, no update. N:M must
    hold in every layer, so it refuses to leave them out."""
    if not job.config.prune_unrouted:
        if job.config.nm is not None:
            raise ConfigError(f"{len(unrouted)} experts received no calibration token (first: {unrouted[0]}); "
                              "N:M must hold in every layer: use more calibration text or --prune-unrouted")
        return {}
    magnitude = MagnitudePruning(job.config)
    part = selector.subset(unrouted, scope="layer")
    chosen = part.select(magnitude, {}, masks, fraction, f"{label}: unrouted experts")
    part.apply(magnitude, {}, chosen, f"{label}: unrouted experts", job.progress)
    return chosen


@dataclass
class RunParts:
    """What a run builds once from its config and model: the method, the prunable layers and the unit
    selector. Built before any pruning work (so a bad config fails fast) and handed to
    :func:`prune_model`, so the method's model preparation (FLAP's zero biases) runs once."""

    method: MethodBase
    linears: dict[str, nn.Linear]
    selector: UnitSelector


def setup(model: nn.Module, config: PruneConfig, adapter: ArchitectureAdapter, progress: bool = False) -> RunParts:
    """The method, the prunable layers and the unit selector of a run; raises a clear error when the
    config cannot apply to this model (N:M widths, no structure description). Prepares the model for the
    method (FLAP gives the output projections zero biases): call it once, before any pruning."""
    config.validate()
    method = get_method(config.method, config)
    method.prepare_model(model, adapter)
    linears = adapter.prunable_linears(model)
    selector = make_selector(config.granularity, config.nm, method.selection_scope(), model, adapter, linears,
                             progress, config.width_multiple, config.max_layer_sparsity)
    return RunParts(method, linears, selector)


def prune_model(
    model: nn.Module,
    calibration: torch.Tensor | None,
    config: PruneConfig,
    progress: bool = True,
    on_shot_end: ShotCallback | None = None,
    start: PruneResult | None = None,
    adapter: ArchitectureAdapter | None = None,
    collector: CurvatureCollector | None = None,
    layout: MemoryLayout | None = None,
    dense: DenseWeights | None = None,
    parts: RunParts | None = None,
) -> PruneResult:
    """Prune ``model`` in place over ``config.effective_shots`` shots and return masks and timings.

    ``calibration`` is a (samples, seqlen) tensor of token ids; it may be ``None`` only for
    methods that need no data. ``start`` resumes from the masks and records of a checkpoint.
    ``adapter`` defaults to the registered one for the model's family, ``collector`` to a
    single-process :class:`~llm_surgeon.curvature.collectors.LocalCollector`. ``layout`` says where the curvature
    sums live (host memory, block groups on disk); it changes memory and time, never the result.
    ``dense`` gives the dense weights a reconstructing run fits to (taken here when not resuming).
    ``parts`` are what :func:`setup` built for this model and config (built here when not given).
    """
    adapter = adapter or get_adapter(model)
    parts = parts or setup(model, config, adapter, progress)
    method, linears, selector = parts.method, parts.linears, parts.selector
    if needs_calibration(method, config) and calibration is None:
        raise ConfigError(f"method {config.method} needs calibration data")
    layout = layout or MemoryLayout()
    if config.needs_dense_weights and dense is None:
        if start is not None and start.shots:
            raise ConfigError("resuming a reconstructing run needs the dense weights (snapshot_dense before "
                              "loading the checkpoint)")
        dense = snapshot_dense(linears)
    job = PruneJob(model, adapter, linears, calibration, config, progress, on_shot_end, layout, dense)
    result = start or PruneResult(
        config=config,
        masks={name: torch.zeros_like(lin.weight, dtype=torch.bool) for name, lin in linears.items()},
    )
    if isinstance(method, LayerwiseMethod):
        if not result.shots:
            _layerwise_shot(job, method, result)
    else:
        collector = collector or LocalCollector(config.batch_size, config.fisher, progress, layout.factor_device)
        shots = config.effective_shots  # a one-shot method (FLAP) runs one whatever --shots says
        schedule = selector.schedule(config.sparsity, shots)
        for shot in range(len(result.shots), shots):
            _one_shot(job, method, selector, collector, result, shot, schedule[shot])
    if config.nm:
        result.nm_validation = validate_nm(linears, *config.nm)
    result.structure = selector.summary(result.masks)
    return result
