"""The end-to-end jobs behind the CLI, usable from Python just the same."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_surgeon.config import PruneConfig
from llm_surgeon.data import calibration_windows, evaluation_tokens, resolve_data_dir
from llm_surgeon.errors import ConfigError
from llm_surgeon.evaluation import PerplexityResult, perplexity
from llm_surgeon.export import densify, to_semi_structured
from llm_surgeon.io import atomic_write_json, fsync_tree
from llm_surgeon.models.adapters import get_adapter
from llm_surgeon.models.loading import load_model_and_tokenizer
from llm_surgeon.pruner import PruneResult, prune_model, sparsity_stats
from llm_surgeon.report import build_report, peak_memory_mb

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REPORT_NAME = "report.json"


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
    semi_structured_export: bool = False
    """Convert 2:4 weights to PyTorch's semi-structured format for evaluation (CUDA only)."""


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a folder that holds something else, unless told to."""
    if overwrite or not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder")
    if any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise ConfigError(f"output folder {out} already holds a run; pass --overwrite to replace it")


def save_pruned_model(model, tokenizer, out: Path, report: dict) -> None:
    """Write a ``save_pretrained`` checkpoint and its report so that it is never half-complete.

    Files are written to a hidden staging folder inside ``out`` and moved in one by one;
    ``report.json`` is removed first and written last, so its presence means "complete".
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_NAME).unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        fsync_tree(staging)
        for item in staging.iterdir():
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            item.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_json(out / REPORT_NAME, report)


def evaluate(model, tokenizer, data_dir, seqlen: int, max_windows: int | None, progress: bool = True
             ) -> PerplexityResult:
    tokens = evaluation_tokens(tokenizer, resolve_data_dir(data_dir))
    return perplexity(model, tokens, seqlen, max_windows, progress=progress)


def prune(model, calibration: torch.Tensor | None, config: PruneConfig, progress: bool = True) -> PruneResult:
    """Prune a loaded model in place (the library entry point); see :func:`prune_model`."""
    return prune_model(model, calibration, config, progress=progress)


def run_prune(model_name: str, config: PruneConfig, options: RunOptions) -> dict:
    """Load, calibrate, prune, optionally evaluate, save; return the report."""
    config.validate()
    out = Path(options.out)
    check_output_folder(out, options.overwrite)
    dtype = parse_dtype(options.dtype)
    data_dir = resolve_data_dir(options.data_dir)
    start = time.perf_counter()
    model, tokenizer, _ = load_model_and_tokenizer(model_name, dtype, options.device)
    get_adapter(model)
    calibration, spec = None, None
    if config.method != "magnitude":
        calibration, spec = calibration_windows(
            tokenizer, config.calib_samples, config.calib_seqlen, config.seed, data_dir
        )
    torch.manual_seed(config.seed)
    result = prune_model(model, calibration, config, progress=options.progress)
    linears = get_adapter(model).prunable_linears(model)
    achieved, per_layer = sparsity_stats(linears)
    seconds = dict(result.seconds)
    export = None
    if options.semi_structured_export:
        export = to_semi_structured(linears, config.nm)
        if not export.applied:
            warnings.warn(export.reason, stacklevel=2)
    ppl = None
    if options.eval:
        t = time.perf_counter()
        evaluated = evaluate(model, tokenizer, data_dir, options.eval_seqlen, options.eval_max_windows,
                             options.progress)
        seconds["eval"] = time.perf_counter() - t
        ppl = {"wikitext2": evaluated.ppl, "wikitext2_detail": evaluated.to_dict()}
    if export is not None and export.applied:
        densify(linears)  # safetensors stores the dense zeros
    seconds["wall"] = time.perf_counter() - start
    report = build_report(
        config=config, model_name=model_name, result=result,
        calibration=spec.__dict__ if spec else None,
        achieved_sparsity=achieved, per_layer_sparsity=per_layer, ppl=ppl, seconds=seconds,
        peak_mb=peak_memory_mb(options.device),
    )
    report["semi_structured_export"] = export.to_dict() if export else None
    save_pruned_model(model, tokenizer, out, report)
    return report


def run_eval(model_name: str, data_dir: str | None, seqlen: int, max_windows: int | None,
             device: str = "cpu", dtype: str = "float32", progress: bool = True) -> dict:
    model, tokenizer, _ = load_model_and_tokenizer(model_name, parse_dtype(dtype), device)
    return evaluate(model, tokenizer, data_dir, seqlen, max_windows, progress).to_dict()


def load_report(out: str | Path) -> dict:
    return json.loads((Path(out) / REPORT_NAME).read_text())
