"""The end-to-end jobs behind the CLI, usable from Python just the same."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from llm_surgeon.artifacts.checkpoints import (
    CHECKPOINT_DIR,
    list_checkpoints,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
)
from llm_surgeon.artifacts.compaction import compact
from llm_surgeon.artifacts.formats import check_selectable, refusal
from llm_surgeon.artifacts.heatmap import SPARSITY_PLOT, render_sparsity_heatmap
from llm_surgeon.artifacts.loading import load_model_and_tokenizer
from llm_surgeon.artifacts.output_dir import inspect_output, load_report, save_model_files
from llm_surgeon.artifacts.report import build_report, peak_memory_mb
from llm_surgeon.artifacts.semi_structured import densify, to_semi_structured
from llm_surgeon.config import PruneConfig
from llm_surgeon.curvature.distributed import DataParallelCollector, OwnerCollector, Ranks, joined_ranks
from llm_surgeon.curvature.layout import MemoryLayout
from llm_surgeon.data.calibration import CalibrationSpec, calibration_windows, evaluation_tokens, resolve_data_dir
from llm_surgeon.data.textsets import (
    TextSet,
    check_calibration_files,
    check_evaluation_files,
    parse_text_set,
    parse_text_sets,
)
from llm_surgeon.engine.pruner import PruneResult, RunParts, needs_calibration, prune_model, setup, sparsity_stats
from llm_surgeon.engine.reconstruction import DenseWeights, snapshot_dense
from llm_surgeon.errors import ConfigError, LLMSurgeonError
from llm_surgeon.evaluation import dense_cache
from llm_surgeon.evaluation.footprint import forward_footprint
from llm_surgeon.evaluation.perplexity import PerplexityResult, perplexity, window_count
from llm_surgeon.evaluation.zeroshot import check_tasks, parse_tasks, zero_shot
from llm_surgeon.healing.targets import TARGETS_FILE, HealInputs, TeacherTargets, prepare_heal_inputs, share_of
from llm_surgeon.healing.train import HealRecord, HealSettings, heal_model
from llm_surgeon.methods import MethodBase, get_method, method_class
from llm_surgeon.models.adapters import ArchitectureAdapter, check_family, checked_meta_model, get_adapter
from llm_surgeon.models.experts import expert_summary
from llm_surgeon.models.loading import DEVICE_MAPS, load_config
from llm_surgeon.models.source_dtype import describe_source, source_dtype
from llm_surgeon.planning.eta import RunClock
from llm_surgeon.planning.fit import SAFETY_MARGIN, ShotFit, first_batch, fit_shot, margin_bytes, shot_needs
from llm_surgeon.planning.memory import (
    ShotMemory,
    available_bytes,
    in_use_bytes,
    parse_bytes,
    reconstruction_bytes,
    total_bytes,
)
from llm_surgeon.planning.plan import plan_shot
from llm_surgeon.runtime.devices import check_device, check_positive
from llm_surgeon.runtime.files import REPORT_NAME, atomic_write_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class RunOptions:
    """Where a prune reads and writes, and how it is evaluated; not part of the method."""

    out: str
    data_dir: str | None = None
    eval: bool = False
    eval_seqlen: int = 2048
    eval_max_windows: int | None = None
    eval_datasets: tuple[str, ...] = ("wikitext2",)
    """The sets ``eval`` scores, each a named set in the data folder or a file (:mod:`llm_surgeon.data.textsets`)."""
    text_field: str = "text"
    """The field of JSON-lines or Parquet evaluation files that holds the text."""
    eval_tasks: tuple[str, ...] = ()
    """lm-evaluation-harness tasks scored after pruning (zero-shot accuracy; the ``eval`` extra)."""
    tasks_dir: str | None = None
    """A folder of lm-eval task YAML files (e.g. tasks over local data) added to the harness's own."""
    tasks_limit: int | None = None
    """Score only the first documents of each task (quick checks)."""
    save_format: str = "dense"
    """``dense`` (safetensors with the zeros) or ``compressed`` (pruned matrices as bitmask + values)."""
    save_dtype: str = "auto"
    """The saved weights' dtype: ``auto`` is the source model's own (bf16/fp16 where it was; a quantised
    GGUF's is float16), else ``float32``, ``bfloat16`` or ``float16``. Evaluation runs in ``dtype`` before."""
    device: str = "cpu"
    dtype: str = "float32"
    overwrite: bool = False
    progress: bool = True
    resume: bool = False
    """Insist on continuing from a checkpoint (re-running the same command resumes anyway)."""
    semi_structured_export: bool = False
    """Convert 2:4 weights to PyTorch's semi-structured format for evaluation (CUDA only)."""
    eval_dense: bool = False
    """Also evaluate the dense model on the same windows before pruning (and remember it)."""
    factor_device: str | None = None
    """Where the curvature sums accumulate (None: beside each layer; ``cpu``: host memory)."""
    max_memory: str | None = None
    """The run's memory budget (``"20GiB"``); block groups are chosen to fit it (None: the free memory)."""
    device_map: str | None = None
    """``auto``: accelerate spreads the blocks over the visible GPUs (one process); each layer's factors
    and update stay on its device. None: the whole model on ``device``."""

    def validate(self) -> RunOptions:
        """Every option checked before anything is loaded."""
        device = check_device(self.device)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.index is not None:
            raise ConfigError(f"--device {self.device} under torchrun would put every rank on one GPU; use "
                              "--device cuda: each rank takes the GPU of its LOCAL_RANK")
        if self.device_map is not None:
            if self.device_map not in DEVICE_MAPS:
                raise ConfigError(f"--device-map {self.device_map!r}: choose one of {', '.join(DEVICE_MAPS)}")
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ConfigError("--device-map spreads one process's model over every visible GPU; under "
                                  "torchrun each rank holds a whole model on its own GPU: drop --device-map")
        if self.factor_device is not None:
            check_device(self.factor_device)
        self.budget_bytes()
        parse_dtype(self.dtype)
        check_positive("--eval-seqlen", self.eval_seqlen, 2)
        check_positive("--eval-max-windows", self.eval_max_windows)
        data_dir = resolve_data_dir(self.data_dir)
        for text_set in self.eval_sets() if self.eval else []:
            check_evaluation_files(text_set, data_dir)
        check_positive("--tasks-limit", self.tasks_limit)
        check_selectable(self.save_format)
        if self.save_dtype != "auto":
            parse_dtype(self.save_dtype)
        check_tasks(parse_tasks(self.eval_tasks), self.tasks_dir)
        return self

    def eval_sets(self) -> list[TextSet]:
        return parse_text_sets(",".join(self.eval_datasets), self.text_field)

    def budget_bytes(self) -> int | None:
        if self.max_memory is None:
            return None
        try:
            return parse_bytes(self.max_memory)
        except ValueError as exc:
            raise ConfigError(f"--max-memory: {exc}") from exc


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def evaluate(model, tokenizer, data_dir: str | Path | None = None, seqlen: int = 2048,
             max_windows: int | None = None, progress: bool = True, dataset: str | TextSet = "wikitext2",
             text_field: str = "text", label: str = "") -> PerplexityResult:
    """Perplexity of a loaded model under the standard protocol on one text set (``wikitext2``, ``ptb``,
    ``c4`` in ``data_dir``, or a text/JSON-lines/Parquet file); ``data_dir`` as for the CLI."""
    check_positive("seqlen", seqlen, 2)
    check_positive("max_windows", max_windows)
    text_set = dataset if isinstance(dataset, TextSet) else parse_text_set(dataset, text_field)
    tokens = evaluation_tokens(tokenizer, resolve_data_dir(data_dir), text_set)
    return perplexity(model, tokens, seqlen, text_set.window_limit(max_windows), dataset=text_set.name,
                      progress=progress, label=label)


def load_calibration(tokenizer, samples: int = 128, seqlen: int = 2048, seed: int = 0,
                     data_dir: str | Path | None = None, dataset: str = "wikitext2",
                     text_field: str = "text") -> torch.Tensor:
    """``samples`` x ``seqlen`` calibration token windows for :func:`prune`, from a named set (its train
    split, else valid) or a file."""
    windows, _ = calibration_windows(tokenizer, samples, seqlen, seed, resolve_data_dir(data_dir),
                                     parse_text_set(dataset, text_field))
    return windows


def prune(model, calibration: torch.Tensor | None, config: PruneConfig, progress: bool = True,
          adapter: ArchitectureAdapter | None = None, layout: MemoryLayout | None = None) -> PruneResult:
    """Prune a loaded model in place (the library entry point); see :func:`~llm_surgeon.engine.pruner.prune_model`.

    ``layout`` keeps the curvature sums elsewhere (``MemoryLayout(factor_device="cpu", block_groups=4)``)
    when they do not fit beside the model; the result is the same. A mixture-of-experts model gets its own
    fused expert modules back at the end; the masks name each expert's slices (``...experts.gate_up.3``)."""
    adapter = adapter or get_adapter(model)
    try:
        return prune_model(model, calibration, config, progress=progress, adapter=adapter, layout=layout)
    finally:
        adapter.restore(model)  # fused experts again (the changes are in them)


def _shot_needs(model, adapter: ArchitectureAdapter, parts: RunParts, config: PruneConfig, groups: int,
                devices: int = 1, batch: int | None = None) -> ShotMemory:
    """The fit's estimate of one shot (:func:`~llm_surgeon.planning.fit.shot_needs`) in the model's dtype, at the
    requested batch unless ``batch`` says otherwise."""
    return shot_needs(model, adapter, parts, config, next(model.parameters()).element_size(), groups,
                      batch or first_batch(config), devices)


def block_devices(model, adapter: ArchitectureAdapter) -> dict[str, int]:
    """How many decoder blocks sit on each device (one entry unless a device map spread them)."""
    counts: dict[str, int] = {}
    for block in adapter.blocks(model):
        device = str(next(block.parameters()).device)
        counts[device] = counts.get(device, 0) + 1
    return counts


def room_bytes(device: str, max_memory: int | None) -> int | None:
    """What a shot may still take: the free memory, and within ``max_memory`` what this process does not hold."""
    free = available_bytes(device)
    if max_memory is None:
        return free
    room = max_memory - in_use_bytes(device)
    return room if free is None else min(room, free)


def _tightest_room(devices: list[str], max_memory: int | None) -> tuple[int | None, int]:
    """(room, margin) of the device with the least room once its margin is off: the busiest device is planned
    for the smallest room. The margin is :data:`~llm_surgeon.planning.fit.SAFETY_MARGIN` of ``max_memory``, else
    of the device's whole memory. (None, 0) when a device's free memory is unknown: nothing is checked."""
    tightest: tuple[int, int] | None = None
    for device in devices:
        room = room_bytes(device, max_memory)
        if room is None:
            return None, 0
        margin = margin_bytes(max_memory if max_memory is not None else total_bytes(device))
        if tightest is None or room - margin < tightest[0] - tightest[1]:
            tightest = (room, margin)
    return tightest or (None, 0)


def memory_fit(model, adapter: ArchitectureAdapter, parts: RunParts, config: PruneConfig, device: str,
               max_memory: int | None = None) -> ShotFit:
    """The block groups and micro-batch a shot runs with so that it fits, or a refusal in one line.

    The fit is ``plan``'s (:func:`~llm_surgeon.planning.fit.fit_shot`) against the room measured here (the budget
    less what this process holds, and the free memory) less the safety margin: the fewest block groups at the
    requested batch, else a smaller batch (the same result in more passes), refused only when one window per
    batch in the most groups does not fit, or when the batch may not change (a correction trains on it)."""
    spread = block_devices(model, adapter)
    room, margin = _tightest_room(list(spread) if len(spread) > 1 else [device], max_memory)
    fit = fit_shot(model, adapter, parts, config, next(model.parameters()).element_size(), room, margin,
                   len(spread))
    if fit.fits is False:
        raise LLMSurgeonError(_refusal(fit, config, device, max_memory))
    return fit


def _refusal(fit: ShotFit, config: PruneConfig, device: str, max_memory: int | None) -> str:
    gib = 2**30
    split = f" even in {fit.block_groups} block groups" if fit.block_groups > 1 else ""
    budget = "within --max-memory" if max_memory is not None else "available"
    if fit.batch_fixed:
        advice = f"the batch is kept ({fit.batch_fixed}); lower --batch-size (a different result) or --calib-seqlen"
    else:
        advice = "already one window per batch; lower --calib-seqlen"
    return (f"not enough memory for one shot{split}: about {fit.memory.total / gib:.1f} GiB needed "
            f"({fit.memory.describe()}, batches of {fit.batch_size} x {config.calib_seqlen} tokens), "
            f"{max(fit.room or 0, 0) / gib:.1f} GiB {budget} on {device} once {fit.margin / gib:.1f} GiB "
            f"({SAFETY_MARGIN:.0%}) is kept free; {advice}")


def check_memory(model, adapter: ArchitectureAdapter, parts: RunParts, config: PruneConfig, device: str,
                 max_memory: int | None = None, factor_device: str | None = None
                 ) -> tuple[ShotMemory, MemoryLayout]:
    """:func:`memory_fit`'s estimate and layout (its batch, which may be smaller than the config's, is in
    ``memory_fit(...).batch_size``: a caller that runs the passes itself must use it)."""
    fit = memory_fit(model, adapter, parts, config, device, max_memory)
    return fit.memory, MemoryLayout(factor_device=factor_device, block_groups=fit.block_groups)


def _fit_memory(model, adapter: ArchitectureAdapter, parts: RunParts, config: PruneConfig, options: RunOptions,
                ranks: Ranks) -> tuple[ShotFit, MemoryLayout]:
    """The run's fit, said in one stderr line when the batch had to be lowered (the report records it too)."""
    fit = memory_fit(model, adapter, parts, config, options.device, options.budget_bytes())
    if fit.batch_lowered and ranks.writes:
        print(f"llm-surgeon: --batch-size {fit.requested_batch} does not fit in {fit.room / 2**30:.2f} GiB "
              f"({SAFETY_MARGIN:.0%} of the device kept free); the passes run in batches of {fit.batch_size} "
              f"windows, {fit.block_groups} block group(s): the same result in more passes", file=sys.stderr)
    return fit, MemoryLayout(factor_device=options.factor_device, block_groups=fit.block_groups)


@dataclass
class PreparedRun:
    """A prune ready to start: model loaded and checked, calibration drawn, output folder claimed."""

    model_name: str
    config: PruneConfig
    options: RunOptions
    out: Path
    data_dir: Path | None
    model: torch.nn.Module
    tokenizer: object
    adapter: ArchitectureAdapter
    linears: dict
    calibration: torch.Tensor | None
    calibration_spec: CalibrationSpec | None
    resumed: PruneResult | None
    """Masks and records of the checkpoint resumed from (the shot loop appends to it)."""
    resumed_from_shot: int | None
    started: float
    dense_ppl: dict | None = None
    """The dense model's perplexity on the evaluation windows, measured before pruning (``eval_dense``)."""
    memory_estimate: dict | None = None
    """The up-front prediction of a shot's peak, for the report (beside the measured peak)."""
    block_devices: dict[str, int] | None = None
    """Decoder blocks per device (several with ``--device-map``)."""
    layout: MemoryLayout | None = None
    """Where the shots keep their curvature (host memory, block groups), chosen to fit the memory."""
    ranks: Ranks = field(default_factory=Ranks)
    """This process among the ranks of a ``torchrun`` job; rank 0 alone writes."""
    every_layer_on_every_rank: bool = False
    """The selection reads every layer's whole factors (structured): ranks replicate instead of owning layers."""
    rank_stats: list[dict] | None = None
    """Per rank after the shots: its peak memory and the seconds it spent in collectives."""
    earlier_seconds: float = 0.0
    """Wall seconds the earlier runs of a resumed job spent (from its checkpoint)."""
    clock: RunClock | None = None
    """The run-level progress: shot k of T, elapsed, an estimate of what is left."""
    time_plan: dict | None = None
    """``plan``'s time per shot, made for the progress line (with progress on), kept for the report."""
    dense: DenseWeights | None = None
    """The dense weights a reconstructing run fits to, copied before a checkpoint's were loaded."""
    parts: RunParts | None = None
    """The method, layers and selector :func:`~llm_surgeon.engine.pruner.setup` built while preparing."""
    pass_batch: int | None = None
    """The micro-batch the passes run with when the memory fit lowered it (None: the config's)."""
    heal: HealInputs | None = None
    """Healing's windows and the dense model's predictions on them (``--heal``), made before the first shot."""

    def pass_config(self) -> PruneConfig:
        """The config the shots run with: the user's, with the fitted batch (which changes memory and time, not
        the result). Checkpoints and the report keep the user's, so re-running the same command resumes."""
        return self.config if self.pass_batch is None else replace(self.config, batch_size=self.pass_batch)


def _estimate_dict(fit: ShotFit | None, loaded_mb: float, layout: MemoryLayout, max_memory: int | None,
                   attention: str | None, refit: dict[str, int] | None = None) -> dict | None:
    """The shot's predicted needs over the loaded model (which holds the dense copy of a reconstructing run);
    the re-fit after a shot comes when the shot's factors are gone, so the peak is the larger of the two. With
    the batch the passes ran with, the one asked for, and the margin the fit kept free."""
    if fit is None:
        return None
    mb, estimate = 2**20, fit.memory
    refit_mb = sum(v for k, v in (refit or {}).items() if k != "dense_copy") / mb
    return {"loaded_mb": loaded_mb, "factors_mb": estimate.factors / mb, "activations_mb": estimate.activations / mb,
            "logits_mb": estimate.logits / mb, "correction_mb": estimate.correction / mb,
            "heal_mb": estimate.heal / mb, "heal_targets_mb": estimate.heal_targets / mb,
            "layerwise_mb": estimate.layerwise / mb,
            "reconstruction_mb": refit_mb,
            "predicted_peak_mb": loaded_mb + max(estimate.total / mb, refit_mb),
            "max_memory_mb": None if max_memory is None else max_memory / mb, "attention": attention,
            "batch_size": fit.batch_size, "requested_batch_size": fit.requested_batch, "margin_mb": fit.margin / mb,
            "backward": fit.backward, **layout.to_dict()}


def _check_method_applies(model_config, config: PruneConfig) -> None:
    """Refuse, before the weights are loaded, a method whose preparation cannot apply to this model (FLAP
    where no config flag gives the output projections a bias): it runs on the model built on the meta
    device, shapes only. Methods without a preparation step skip the meta build."""
    method = get_method(config.method, config)
    if type(method).prepare_model is MethodBase.prepare_model:
        return
    meta = checked_meta_model(model_config)
    method.prepare_model(meta, get_adapter(meta))


def prepare_run(model_name: str, config: PruneConfig, options: RunOptions, state: str,
                ranks: Ranks | None = None) -> PreparedRun:
    """Load and check everything a prune needs before any pruning work; resume from a checkpoint."""
    ranks = ranks or Ranks()
    out = Path(options.out)
    data_dir = resolve_data_dir(options.data_dir)
    started = time.perf_counter()
    model_config = load_config(model_name)
    check_family(model_config)  # refuse a family before loading its weights
    _check_method_applies(model_config, config)
    if needs_calibration(method_class(config.method), config):
        check_calibration_files(parse_text_set(config.calib_data, config.text_field), data_dir)
    model, tokenizer, _ = load_model_and_tokenizer(model_name, parse_dtype(options.dtype), options.device,
                                                   options.device_map)
    adapter = get_adapter(model)
    if reason := refusal(options.save_format, config.granularity, adapter, model):
        raise ConfigError(reason)
    parts = setup(model, config, adapter, options.progress and ranks.writes)
    method, linears = parts.method, parts.linears
    calibration, spec, fit, layout = None, None, None, MemoryLayout(factor_device=options.factor_device)
    if needs_calibration(method, config):
        fit, layout = _fit_memory(model, adapter, parts, config, options, ranks)
        calibration, spec = calibration_windows(
            tokenizer, config.calib_samples, config.calib_seqlen, config.seed, data_dir,
            parse_text_set(config.calib_data, config.text_field),
        )
    torch.manual_seed(config.seed)
    dense = snapshot_dense(linears) if config.needs_dense_weights else None  # before a checkpoint's weights
    if state == "replace" and ranks.writes:
        (out / REPORT_NAME).unlink(missing_ok=True)
        remove_checkpoints(out)
    if ranks.writes:
        out.mkdir(parents=True, exist_ok=True)
    heal = None
    if config.heal:  # the dense model's predictions: before a checkpoint's weights, too
        heal = prepare_heal_inputs(model, adapter, tokenizer, config, data_dir, model_name,
                                   out / CHECKPOINT_DIR / TARGETS_FILE, options.progress)
    resumed, resumed_from_shot, earlier_seconds = _resume(out, config, linears) if state == "resume" else (None,
                                                                                                        None, 0.0)
    ranks.barrier()
    loaded_mb = peak_memory_mb(options.device)
    refit = None
    if config.reconstruct and calibration is not None:
        refit = reconstruction_bytes(model, adapter, linears, len(calibration), calibration.shape[1],
                                     next(model.parameters()).element_size())
    layout = MemoryLayout(layout.factor_device, layout.block_groups, scratch_dir=str(out))
    return PreparedRun(model_name, config, options, out, data_dir, model, tokenizer, adapter, linears, calibration,
                       spec, resumed, resumed_from_shot, started, layout=layout, ranks=ranks,
                       every_layer_on_every_rank=parts.selector.needs_every_layer, dense=dense, parts=parts,
                       block_devices=block_devices(model, adapter),
                       pass_batch=fit.batch_size if fit is not None and fit.batch_lowered else None,
                       earlier_seconds=earlier_seconds, heal=heal,
                       memory_estimate=_estimate_dict(fit, loaded_mb, layout, options.budget_bytes(),
                                                      getattr(model.config, "_attn_implementation", None), refit))


def _resume(out: Path, config: PruneConfig, linears: dict) -> tuple[PruneResult, int, float]:
    """The newest checkpoint's weights loaded into ``linears``: its result, its shot, the time already spent."""
    checkpoint = list_checkpoints(out)[-1]
    resumed = load_checkpoint(checkpoint, config, linears)
    stage = "healed" if resumed.heal is not None else f"shot {checkpoint.shot} of {config.effective_shots}"
    print(f"llm-surgeon: resuming from {checkpoint.path} ({stage})", file=sys.stderr)
    return resumed, len(resumed.shots), float(checkpoint.meta.get("wall_seconds") or 0.0)


def execute_run(run: PreparedRun) -> PruneResult:
    """The shots, with a checkpoint after each (written by rank 0; the others wait for it)."""
    clock = run.clock or RunClock(run.config.effective_shots, earlier_seconds=run.earlier_seconds,
                                  started=run.started)
    run.clock = clock
    talk = run.options.progress and run.ranks.writes

    def checkpoint(shot: int, result: PruneResult) -> None:
        if run.config.heal_each_shot and shot < run.config.effective_shots:
            result.shots[-1].heal = heal_between_shots(run, result, shot)
        if talk:
            print(clock.shot_line(len(result.shots), result.shots[-1].seconds_total), file=sys.stderr, flush=True)
        if run.ranks.writes:  # the user's config: the fitted batch is no part of the run's identity
            save_checkpoint(run.out, run.model_name, replace(result, config=run.config), run.linears,
                            wall_seconds=clock.elapsed())
        run.ranks.barrier()

    if talk:
        print(clock.opening_line(run.resumed_from_shot or 0), file=sys.stderr, flush=True)

    collector = _collector(run)
    result = prune_model(
        run.model, run.calibration, run.pass_config(), progress=run.options.progress and run.ranks.writes,
        start=run.resumed, adapter=run.adapter, layout=run.layout, collector=collector, on_shot_end=checkpoint,
        dense=run.dense, parts=run.parts,
    )
    run.rank_stats = run.ranks.gather({"rank": run.ranks.rank, "peak_mb": peak_memory_mb(run.options.device),
                                       "communication_s": collector.clock.seconds if collector else 0.0})
    return result


def _heal_settings(run: PreparedRun) -> HealSettings:
    return HealSettings.from_config(run.config, run.pass_config().batch_size, run.options.progress,
                                    blocks=run.heal.blocks)


def _heal_share(run: PreparedRun, shot: int) -> tuple[torch.Tensor, TeacherTargets]:
    """The training windows healing after ``shot`` (from 1) uses: all of them, or with ``--heal-each-shot``
    the shot's share."""
    if not run.config.heal_each_shot:
        return run.heal.windows.train, run.heal.train
    return share_of(run.heal, shot - 1, run.config.effective_shots)


def _heal_after(run: PreparedRun, result: PruneResult, shot: int, when: str) -> HealRecord:
    """Healing after ``shot`` on its windows (:func:`_heal_share`), said on stderr as healed ``when``."""
    train, targets = _heal_share(run, shot)
    inputs = run.heal
    record = heal_model(run.model, run.adapter, run.linears, result.masks, train, targets,
                        inputs.windows.held_out, inputs.held_out, _heal_settings(run))
    if run.options.progress:
        blocks = "" if record.block_error_before is None else \
            f", block outputs' error {record.block_error_before:.4f} -> {record.block_error_after:.4f}"
        print(f"llm-surgeon: healed{when} in {record.seconds:.0f} s: KL to the dense model on held-out text "
              f"{record.kl_before:.4f} -> {record.kl_after:.4f}{blocks}", file=sys.stderr, flush=True)
    return record


def heal_between_shots(run: PreparedRun, result: PruneResult, shot: int) -> dict:
    """``--heal-each-shot``: healing on ``shot``'s share of the windows before its checkpoint (so a resumed run
    does not heal it again); its record goes into the shot's record."""
    record = _heal_after(run, result, shot, f" after shot {shot}")
    return {**record.to_dict(), "peak_mb_after": peak_memory_mb(run.options.device)}


def heal_pruned(run: PreparedRun, result: PruneResult) -> None:
    """Healing after the last shot (``--heal``) into ``result.heal``: the pruned model scored first when the run
    evaluates (the report then shows before and after), trained on the dense model's predictions, and a
    ``healed`` checkpoint written so that a run stopped after it does not heal again."""
    config, options, inputs = run.config, run.options, run.heal
    before = None
    if options.eval:
        scored = _evaluate_pruned(run)
        before = {t.name: scored[t.name] for t in options.eval_sets()}
    peak_before = peak_memory_mb(options.device)
    record = _heal_after(run, result, config.effective_shots, "")
    record.seconds_teacher = inputs.seconds_teacher
    record.data = {"text": inputs.windows.source, "split": inputs.windows.split,
                   "windows": record.tokens // config.calib_seqlen, "held_out_windows": len(inputs.windows.held_out),
                   "seqlen": config.calib_seqlen}
    result.heal = {**record.to_dict(), "ppl_before": before, "peak_mb_before": peak_before,
                   "peak_mb_after": peak_memory_mb(options.device), "each_shot": config.heal_each_shot,
                   **_healing_totals(record.tokens, record.seconds, result)}
    save_checkpoint(run.out, run.model_name, replace(result, config=run.config), run.linears,
                    wall_seconds=run.clock.elapsed() if run.clock else None)


def _healing_totals(tokens: int, seconds: float, result: PruneResult) -> dict:
    """The tokens and training seconds of every healing of the run: the last one's, plus those after earlier
    shots (``--heal-each-shot``)."""
    between = [s.heal for s in result.shots if s.heal]
    return {"tokens_all_shots": tokens + sum(h["tokens"] for h in between),
            "seconds_all_shots": seconds + sum(h["seconds"] for h in between)}


def _time_plan(model_name: str, config: PruneConfig, dtype: str) -> dict | None:
    """``plan``'s seconds per shot on this machine and the throughput they assume, for the run's first
    estimate and the report (beside the measured shots); None when it cannot say."""
    try:
        plan = plan_shot(model_name, config, dtype)
    except Exception:  # an estimate is a courtesy: a model plan cannot read runs all the same
        return None
    return {"plan_seconds_per_shot": plan.seconds_per_shot, "tflops": plan.tflops,
            "throughput_source": plan.throughput_source}


def _time_estimate(run: PreparedRun, result: PruneResult) -> dict | None:
    """The plan's time per shot beside the mean of this run's measured shots (None: no plan was made)."""
    if run.time_plan is None:
        return None
    measured = [s.seconds_total for s in result.shots[run.resumed_from_shot or 0:]]
    return {**run.time_plan, "measured_seconds_per_shot": sum(measured) / len(measured) if measured else None}


def _collector(run: PreparedRun) -> DataParallelCollector | None:
    """Alone: the default. Over ranks: layer owners, or every rank computing everything when the
    selection reads every layer's factors (structured)."""
    if run.ranks.world == 1:
        return None
    kind = DataParallelCollector if run.every_layer_on_every_rank else OwnerCollector
    return kind(run.pass_config().batch_size, run.config.fisher, run.options.progress,
                run.layout.factor_device if run.layout else None)


def _experts_dict(run: PreparedRun, result: PruneResult) -> dict | None:
    if run.adapter.experts_path is None:
        return None
    return expert_summary(run.linears, result.routed_rows, run.adapter.experts_path)


def _distributed_dict(run: PreparedRun) -> dict:
    scheme = None
    if run.ranks.world > 1:
        scheme = "replicated" if run.every_layer_on_every_rank else "layer owners"
    return {**run.ranks.to_dict(), "scheme": scheme, "ranks": run.rank_stats, "device_map": run.options.device_map,
            "blocks_per_device": run.block_devices}


def finish_run(run: PreparedRun, result: PruneResult, dense_footprint: dict | None) -> dict:
    """Compact, export, evaluate, save the model, then write the report last; return the report."""
    options, config = run.options, run.config
    achieved, per_layer = sparsity_stats(run.linears)
    seconds = dict(result.seconds)
    shapes = compact(run.model, result.masks, run.adapter) if config.granularity == "structured" else None
    export = None
    if options.semi_structured_export:
        export = to_semi_structured(run.linears, config.nm)
        if not export.applied:
            warnings.warn(export.reason, stacklevel=2)
    ppl, accuracy = _evaluate_all(run, seconds)
    if export is not None and export.applied:
        densify(run.linears)  # safetensors stores the dense zeros
    footprint = None
    if shapes is not None:
        footprint = {"dense": dense_footprint, "pruned": forward_footprint(run.model)}
    pattern = config.granularity if config.nm else "unstructured"
    saved_dtype = _cast_for_saving(run)
    file_bytes = save_model_files(run.model, run.tokenizer, run.out, shapes, options.save_format, (achieved, pattern),
                                  source=run.model_name)
    if footprint is not None:
        footprint["pruned"]["file_bytes"] = file_bytes
    if result.heal is not None:
        heal = result.heal  # a healed checkpoint of an older version holds no totals: its healing was one
        seconds["heal"] = heal.get("seconds_all_shots", heal["seconds"]) + heal["seconds_teacher"]
    seconds["wall_this_run"] = time.perf_counter() - run.started
    seconds["wall"] = run.earlier_seconds + seconds["wall_this_run"]
    report = build_report(
        config=config, model_name=run.model_name, result=result,
        calibration=run.calibration_spec.__dict__ if run.calibration_spec else None,
        achieved_sparsity=achieved, per_layer_sparsity=per_layer, ppl=ppl, seconds=seconds,
        peak_mb=peak_memory_mb(options.device), export=export.to_dict() if export else None,
        resumed_from_shot=run.resumed_from_shot, footprint=footprint, memory_estimate=run.memory_estimate,
        distributed=_distributed_dict(run), experts=_experts_dict(run, result),
    )
    report["files"] = {"save_format": options.save_format, "weights_bytes": file_bytes, "save_dtype": saved_dtype,
                       "evaluated_in": options.dtype}
    report["model_loaded_as"] = describe_source(run.model_name, parse_dtype(options.dtype))
    if result.heal is not None:
        report["heal"] = result.heal
    if (time_estimate := _time_estimate(run, result)) is not None:
        report["time_estimate"] = time_estimate
    if accuracy is not None:
        report["zero_shot"] = {"tasks": accuracy, "limit": options.tasks_limit}
    drawn = render_sparsity_heatmap(report, run.out / SPARSITY_PLOT)
    report["sparsity_plot"] = SPARSITY_PLOT if drawn else None  # None: matplotlib is not installed
    atomic_write_json(run.out / REPORT_NAME, report)
    remove_checkpoints(run.out)
    return report


def _cast_for_saving(run: PreparedRun) -> str:
    """Cast the pruned model to the dtype it is saved in (``--save-dtype``; ``auto``: the source's own, else the
    run's), after it was evaluated; return that dtype's name."""
    wanted = run.options.save_dtype
    dtype = source_dtype(run.model_name) if wanted == "auto" else parse_dtype(wanted)
    dtype = dtype or parse_dtype(run.options.dtype)
    if dtype != next(run.model.parameters()).dtype:
        run.model.to(dtype)
    return str(dtype).removeprefix("torch.")


def _evaluate_all(run: PreparedRun, seconds: dict[str, float]) -> tuple[dict | None, dict | None]:
    """Perplexity on every evaluation set and the zero-shot tasks, as asked; their seconds go into ``seconds``."""
    options = run.options
    ppl, accuracy = None, None
    if options.eval:
        t = time.perf_counter()
        ppl = _evaluate_pruned(run)
        seconds["eval"] = time.perf_counter() - t
    if options.eval_tasks:
        t = time.perf_counter()
        accuracy = zero_shot(run.model, run.tokenizer, parse_tasks(options.eval_tasks), options.tasks_dir,
                             options.tasks_limit)
        seconds["zero_shot"] = time.perf_counter() - t
    return ppl, accuracy


def _dense_key(run: PreparedRun, text_set: TextSet) -> str:
    o = run.options
    return dense_cache.cache_key(run.model_name, o.dtype, run.data_dir, o.eval_seqlen, text_set)


def _evaluate_on(run: PreparedRun, text_set: TextSet, label: str) -> PerplexityResult:
    o = run.options
    return evaluate(run.model, run.tokenizer, run.data_dir, o.eval_seqlen, o.eval_max_windows, o.progress, text_set,
                    label=label)


def _evaluate_pruned(run: PreparedRun) -> dict:
    """Per set: ``{name: ppl, name_detail: {...}, dense_name: the dense model's result or None}``."""
    ppl: dict = {}
    for text_set in run.options.eval_sets():
        evaluated = _evaluate_on(run, text_set, "pruned model")
        dense = (run.dense_ppl or {}).get(text_set.name) or dense_cache.lookup(_dense_key(run, text_set),
                                                                                 evaluated.windows)
        ppl.update({text_set.name: evaluated.ppl, f"{text_set.name}_detail": evaluated.to_dict(),
                    f"dense_{text_set.name}": dense})
    return ppl


def _evaluate_dense(run: PreparedRun) -> dict:
    """Perplexity of the still-dense model on the windows the pruned one will be scored on, per set: from the
    dense cache when an earlier evaluation covered them, else measured now and remembered."""
    results = {}
    o = run.options
    for text_set in o.eval_sets():
        tokens = evaluation_tokens(run.tokenizer, run.data_dir, text_set)
        limit = text_set.window_limit(o.eval_max_windows)
        cached = dense_cache.lookup(_dense_key(run, text_set), window_count(tokens.numel(), o.eval_seqlen, limit))
        if cached is None:
            cached = perplexity(run.model, tokens, o.eval_seqlen, limit, text_set.name, o.progress,
                                label="dense model").to_dict()
            dense_cache.store(_dense_key(run, text_set), cached)
        results[text_set.name] = cached
    return results


@dataclass
class PruneOutcome:
    report: dict
    already_finished: bool = False
    """``out`` already held this finished run; nothing was done."""


def prune_job(model_name: str, config: PruneConfig, options: RunOptions) -> PruneOutcome:
    """The whole ``llm-surgeon prune`` job: check, load, calibrate, prune (checkpointing every shot),
    optionally evaluate, save. Re-running on the same ``out`` continues from the last complete checkpoint.

    Started by ``torchrun`` with several processes, the calibration windows are shared among the ranks
    (:class:`~llm_surgeon.curvature.distributed.DataParallelCollector`) and rank 0 alone writes; the other ranks
    return an empty report."""
    config.validate()
    options.validate()
    _check_heal(config, options)
    if reason := refusal(options.save_format, config.granularity):
        raise ConfigError(reason)  # before the model is loaded
    out = Path(options.out)
    state = inspect_output(out, model_name, config, options.overwrite)
    if state == "done":
        return PruneOutcome(load_report(out), already_finished=True)
    if options.resume and state != "resume":
        raise ConfigError(f"nothing to resume in {out}: no complete checkpoint")
    with joined_ranks(options.device) as ranks, _removed_if_left_empty(out, ranks.writes and not out.exists()):
        run = prepare_run(model_name, config, options, state, ranks)
        if options.progress and ranks.writes and run.calibration is not None:
            run.time_plan = _time_plan(model_name, config, options.dtype)
            run.clock = RunClock(config.effective_shots, run.time_plan and run.time_plan["plan_seconds_per_shot"],
                                 run.earlier_seconds, run.started)
        if options.eval and options.eval_dense and run.resumed is None and ranks.writes:
            run.dense_ppl = _evaluate_dense(run)
        dense_footprint = forward_footprint(run.model) if config.granularity == "structured" else None
        result = execute_run(run)
        if config.heal and result.heal is None:
            heal_pruned(run, result)
        if not ranks.writes:
            return PruneOutcome({})
        return PruneOutcome(finish_run(run, result, dense_footprint))


def _check_heal(config: PruneConfig, options: RunOptions) -> None:
    """Refuse healing where it cannot do what it says: over several ranks, or every weight trained in a 16-bit
    dtype (Adam's steps, ~1e-5 of a weight, vanish below bfloat16's precision; low-rank factors are float32)."""
    if not config.heal:
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--heal trains in one process; run it without torchrun (or prune without --heal)")
    if config.heal_rank == 0 and options.dtype != "float32":
        raise ConfigError(f"--heal trains every kept weight in --dtype {options.dtype}, which loses Adam's small "
                          "steps; add --heal-rank R (a float32 low-rank correction, merged) or use --dtype float32")


@contextlib.contextmanager
def _removed_if_left_empty(out: Path, created_here: bool) -> Iterator[None]:
    """A run stopped before it wrote anything (Ctrl-C while loading, an error before the first checkpoint)
    leaves no empty ``out`` folder behind, when this run created it; anything written there stays."""
    try:
        yield
    except BaseException:
        if created_here and out.is_dir() and not any(p.is_file() for p in out.rglob("*")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def run_prune(model_name: str, config: PruneConfig, options: RunOptions) -> dict:
    """:func:`prune_job`, returning just the report (the finished run's, if ``out`` already held it)."""
    return prune_job(model_name, config, options).report


def run_eval(model_name: str, data_dir: str | None = None, seqlen: int = 2048, max_windows: int | None = None,
             device: str = "cpu", dtype: str = "float32", progress: bool = True,
             datasets: tuple[str, ...] | list[str] = ("wikitext2",), text_field: str = "text",
             tasks: tuple[str, ...] | list[str] = (), tasks_dir: str | None = None,
             tasks_limit: int | None = None) -> dict[str, dict]:
    """Perplexity of a model or pruned folder on each set, ``{name: result}`` (flags, sets and tasks checked
    before loading), each remembered as a dense reference; with ``tasks``, their zero-shot metrics under
    ``"zero_shot"``."""
    check_device(device)
    check_positive("--seqlen", seqlen, 2)
    check_positive("--max-windows", max_windows)
    check_positive("--tasks-limit", tasks_limit)
    resolved = resolve_data_dir(data_dir)
    text_sets = parse_text_sets(",".join(datasets), text_field)
    for text_set in text_sets:
        check_evaluation_files(text_set, resolved)
    task_names = parse_tasks(tasks)
    check_tasks(task_names, tasks_dir)
    model, tokenizer, _ = load_model_and_tokenizer(model_name, parse_dtype(dtype), device)
    results: dict[str, dict] = {}
    for text_set in text_sets:
        results[text_set.name] = evaluate(model, tokenizer, resolved, seqlen, max_windows, progress, text_set).to_dict()
        dense_cache.store(dense_cache.cache_key(model_name, dtype, resolved, seqlen, text_set),
                          results[text_set.name])
    if task_names:
        results["zero_shot"] = {"tasks": zero_shot(model, tokenizer, task_names, tasks_dir, tasks_limit),
                                "limit": tasks_limit}
    return results
