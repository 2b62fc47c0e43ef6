"""The end-to-end jobs behind the CLI, usable from Python just the same."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_surgeon.checkpoint import (
    config_differences,
    list_checkpoints,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
)
from llm_surgeon.compaction import compact, save_architecture
from llm_surgeon.config import PruneConfig
from llm_surgeon.data import CalibrationSpec, calibration_windows, evaluation_tokens, resolve_data_dir
from llm_surgeon.errors import ConfigError, LLMSurgeonError
from llm_surgeon.evaluation import PerplexityResult, perplexity
from llm_surgeon.export import densify, to_semi_structured
from llm_surgeon.footprint import folder_bytes, forward_footprint
from llm_surgeon.io import REPORT_NAME, atomic_write_json, fsync_tree
from llm_surgeon.models.adapters import ArchitectureAdapter, get_adapter
from llm_surgeon.models.loading import load_model_and_tokenizer
from llm_surgeon.pruner import PruneResult, needs_calibration, prune_model, setup, sparsity_stats
from llm_surgeon.report import build_report, peak_memory_mb
from llm_surgeon.resources import available_bytes, curvature_bytes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class RunOptions:
    """Where a prune reads and writes, and how it is evaluated; not part of the method."""

    out: str
    data_dir: str | None = None
    eval: bool = False
    eval_seqlen: int = 2048
    eval_max_windows: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    overwrite: bool = False
    progress: bool = True
    resume: bool = False
    """Insist on continuing from a checkpoint (re-running the same command resumes anyway)."""
    semi_structured_export: bool = False
    """Convert 2:4 weights to PyTorch's semi-structured format for evaluation (CUDA only)."""


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def inspect_output(out: Path, model_name: str, config: PruneConfig, overwrite: bool) -> str:
    """What to do with ``out``: ``"fresh"``, ``"replace"``, ``"resume"`` or ``"done"``; refuse to clobber
    another run.

    A folder holding a run with a different model or config is refused (naming the fields
    that differ) unless ``overwrite``; so is a non-empty folder that holds no run of ours.
    """
    if not out.exists():
        return "fresh"
    if not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder")
    if overwrite:
        return "replace"  # the old run is removed only once the new one is ready to start
    recorded = None
    if (out / REPORT_NAME).is_file():
        try:
            report = json.loads((out / REPORT_NAME).read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{out / REPORT_NAME} is corrupted; pass --overwrite to replace the run") from exc
        recorded, state = {"model": report.get("model"), **report.get("config", {})}, "done"
    elif checkpoints := list_checkpoints(out):
        meta = checkpoints[-1].meta
        recorded, state = {"model": meta.get("model"), **meta.get("config", {})}, "resume"
    elif any(not p.name.startswith(".") for p in out.iterdir()):
        raise ConfigError(f"output folder {out} already holds other files; pass --overwrite to replace them")
    else:
        return "fresh"
    differing = config_differences(recorded, {"model": model_name, **config.to_dict()})
    if differing:
        raise ConfigError(
            f"output folder {out} holds a different run (differs in: {', '.join(differing)}); "
            "pass --overwrite to replace it or choose another --out"
        )
    return state


def save_model_files(model, tokenizer, out: Path, shapes: list[dict] | None = None) -> int:
    """Write a ``save_pretrained`` checkpoint so that it is never half-complete; return the weights' bytes.

    Files are written to a hidden staging folder inside ``out`` and moved in one by one;
    ``report.json`` is removed first (the caller writes it last), so its presence means "complete".
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_NAME).unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if shapes is not None:
            save_architecture(staging, shapes)
        fsync_tree(staging)
        for item in staging.iterdir():
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            item.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder_bytes(out)


def evaluate(model, tokenizer, data_dir, seqlen: int, max_windows: int | None, progress: bool = True
             ) -> PerplexityResult:
    tokens = evaluation_tokens(tokenizer, resolve_data_dir(data_dir))
    return perplexity(model, tokens, seqlen, max_windows, progress=progress)


def prune(model, calibration: torch.Tensor | None, config: PruneConfig, progress: bool = True,
          adapter: ArchitectureAdapter | None = None) -> PruneResult:
    """Prune a loaded model in place (the library entry point); see :func:`~llm_surgeon.pruner.prune_model`."""
    return prune_model(model, calibration, config, progress=progress, adapter=adapter)


def check_memory(linears, device: str) -> None:
    """Refuse to start a shot whose curvature factors cannot fit, saying how much is needed."""
    needed = curvature_bytes(linears)
    free = available_bytes(device)
    if free is not None and needed > free:
        raise LLMSurgeonError(
            f"not enough memory for the curvature factors: about {needed / 2**30:.1f} GiB needed, "
            f"{free / 2**30:.1f} GiB available on {device}"
        )


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


def prepare_run(model_name: str, config: PruneConfig, options: RunOptions, state: str) -> PreparedRun:
    """Load and check everything a prune needs before any pruning work; resume from a checkpoint."""
    out = Path(options.out)
    dtype = parse_dtype(options.dtype)
    data_dir = resolve_data_dir(options.data_dir)
    started = time.perf_counter()
    model, tokenizer, _ = load_model_and_tokenizer(model_name, dtype, options.device)
    adapter = get_adapter(model)
    method, linears, _ = setup(model, config, adapter)
    calibration, spec = None, None
    if needs_calibration(method, config):
        if method.holds_full_factors():
            check_memory(linears, options.device)
        calibration, spec = calibration_windows(
            tokenizer, config.calib_samples, config.calib_seqlen, config.seed, data_dir
        )
    torch.manual_seed(config.seed)
    resumed, resumed_from_shot = None, None
    if state == "resume":
        checkpoint = list_checkpoints(out)[-1]
        resumed = load_checkpoint(checkpoint, config, linears)
        resumed_from_shot = len(resumed.shots)
        print(f"llm-surgeon: resuming from {checkpoint.path} (shot {checkpoint.shot} of {config.shots})",
              file=sys.stderr)
    if state == "replace":
        (out / REPORT_NAME).unlink(missing_ok=True)
        remove_checkpoints(out)
    out.mkdir(parents=True, exist_ok=True)
    return PreparedRun(model_name, config, options, out, data_dir, model, tokenizer, adapter, linears, calibration,
                       spec, resumed, resumed_from_shot, started)


def execute_run(run: PreparedRun) -> PruneResult:
    """The shots, with a checkpoint after each."""
    return prune_model(
        run.model, run.calibration, run.config, progress=run.options.progress, start=run.resumed,
        adapter=run.adapter,
        on_shot_end=lambda shot, r: save_checkpoint(run.out, run.model_name, r, run.linears),
    )


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
    ppl = None
    if options.eval:
        t = time.perf_counter()
        evaluated = evaluate(run.model, run.tokenizer, run.data_dir, options.eval_seqlen, options.eval_max_windows,
                             options.progress)
        seconds["eval"] = time.perf_counter() - t
        ppl = {"wikitext2": evaluated.ppl, "wikitext2_detail": evaluated.to_dict()}
    if export is not None and export.applied:
        densify(run.linears)  # safetensors stores the dense zeros
    footprint = None
    if shapes is not None:
        footprint = {"dense": dense_footprint, "pruned": forward_footprint(run.model)}
    file_bytes = save_model_files(run.model, run.tokenizer, run.out, shapes)
    if footprint is not None:
        footprint["pruned"]["file_bytes"] = file_bytes
    seconds["wall"] = time.perf_counter() - run.started
    report = build_report(
        config=config, model_name=run.model_name, result=result,
        calibration=run.calibration_spec.__dict__ if run.calibration_spec else None,
        achieved_sparsity=achieved, per_layer_sparsity=per_layer, ppl=ppl, seconds=seconds,
        peak_mb=peak_memory_mb(options.device), export=export.to_dict() if export else None,
        resumed_from_shot=run.resumed_from_shot, footprint=footprint,
    )
    atomic_write_json(run.out / REPORT_NAME, report)
    remove_checkpoints(run.out)
    return report


def run_prune(model_name: str, config: PruneConfig, options: RunOptions) -> dict:
    """Load, calibrate, prune (checkpointing every shot), optionally evaluate, save; return the report.

    Re-running on the same ``out`` continues from the last complete checkpoint.
    """
    config.validate()
    out = Path(options.out)
    state = inspect_output(out, model_name, config, options.overwrite)
    if state == "done":
        return load_report(out)
    if options.resume and state != "resume":
        raise ConfigError(f"nothing to resume in {out}: no complete checkpoint")
    run = prepare_run(model_name, config, options, state)
    dense_footprint = forward_footprint(run.model) if config.granularity == "structured" else None
    result = execute_run(run)
    return finish_run(run, result, dense_footprint)


def run_eval(model_name: str, data_dir: str | None, seqlen: int, max_windows: int | None,
             device: str = "cpu", dtype: str = "float32", progress: bool = True) -> dict:
    model, tokenizer, _ = load_model_and_tokenizer(model_name, parse_dtype(dtype), device)
    return evaluate(model, tokenizer, data_dir, seqlen, max_windows, progress).to_dict()


def load_report(out: str | Path) -> dict:
    return json.loads((Path(out) / REPORT_NAME).read_text())
