"""Heal a model that ``llm-surgeon prune`` already pruned and saved, as ``prune --heal`` would have healed it.

Measuring a healed row with ``prune --heal`` prunes again and scores the model before healing again; when a
bench run already saved that pruned model and its score, this script heals the saved folder instead: the
dense model's predictions on the healing windows the run's own settings choose (``--heal-tokens`` of its
calibration text, read back from ``--targets`` when an earlier call stored them for the same windows), the
same training (``heal_model``: Adam, the same learning rate, seed and batch), the removed weights kept at
zero (a structured folder is already physically smaller; in a sparse one every exact zero stays zero), then
the perplexity under the standard protocol. ``--dense MODEL`` heals the dense model the same way (the
comparator). Tests check both against ``prune --heal`` on a tiny model.

    python benchmarks/heal_pruned_folder.py runs/bench-gemma-structured/runs/surgeon_structured_0.2 \\
        --data-dir ../shared/data --targets runs/heal-targets/gemma.safetensors --out runs/heal-from/s80.json
    python benchmarks/heal_pruned_folder.py --dense gemma3-270m --data-dir ../shared/data \\
        --targets runs/heal-targets/gemma.safetensors --out runs/heal-from/dense.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from llm_surgeon import PruneConfig, evaluate, load_model_and_tokenizer
from llm_surgeon.artifacts.report import peak_memory_mb
from llm_surgeon.data.calibration import resolve_data_dir
from llm_surgeon.healing.targets import prepare_heal_inputs
from llm_surgeon.healing.train import HealSettings, heal_model
from llm_surgeon.models.adapters import get_adapter
from llm_surgeon.runtime.files import REPORT_NAME, atomic_write_json


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", help="a folder `llm-surgeon prune` saved (its report names the dense "
                        "model)")
    parser.add_argument("--dense", metavar="MODEL", help="instead: heal the dense MODEL itself (the comparator)")
    parser.add_argument("--data-dir", default=os.environ.get("LLM_SURGEON_DATA"))
    parser.add_argument("--batch-size", type=int, default=4, help="healing's batch (quality_runs' heal rows: 4)")
    parser.add_argument("--heal-tokens", type=int, default=None, help="default: prune's (131,072)")
    parser.add_argument("--heal-lr", type=float, default=None, help="default: prune's (1e-3 x each layer's weight RMS)")
    parser.add_argument("--heal-lr-scale", choices=("auto", "weight-rms", "absolute"), default=None,
                        help="default: prune's (auto: weight-rms)")
    parser.add_argument("--targets", default=None, help="where the dense model's predictions are kept between calls")
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--eval-max-windows", type=int, default=None)
    parser.add_argument("--out", required=True, help="the JSON record written")
    return parser.parse_args()


def heal_config(report: dict, batch_size: int, heal_tokens: int | None = None, heal_lr: float | None = None,
                heal_lr_scale: str | None = None) -> PruneConfig:
    """The pruning run's config with healing on, as ``prune --heal --batch-size`` (and ``--heal-tokens``,
    ``--heal-lr``, ``--heal-lr-scale`` when given) would have had it today: the run pruned without ``--heal``,
    so its healing settings are only the defaults of its day, and today's stand in for them."""
    given = {k: v for k, v in (("heal_tokens", heal_tokens), ("heal_lr", heal_lr), ("heal_lr_scale", heal_lr_scale))
             if v}
    pruning = {k: v for k, v in report["config"].items() if not k.startswith("heal")}
    config = replace(PruneConfig.from_dict(pruning), heal=True, batch_size=batch_size, **given)
    config.validate()
    return config


def removed_weights(linears: dict[str, torch.nn.Linear], sparse: bool) -> dict[str, torch.Tensor]:
    """What healing keeps at zero: in a sparse folder every exact zero (the run's masks: a zero costs nothing, so
    every method removed them first); nothing in a structured folder (what went is gone from the shapes) or in
    the dense model."""
    return {name: (lin.weight.detach() == 0) if sparse else torch.zeros_like(lin.weight, dtype=torch.bool)
            for name, lin in linears.items()}


def heal_folder(folder: Path, data_dir: Path | None, batch_size: int = 4, heal_tokens: int | None = None,
                heal_lr: float | None = None, targets: Path | None = None, eval_seqlen: int = 2048,
                eval_max_windows: int | None = None, progress: bool = True, heal_lr_scale: str | None = None) -> dict:
    """Heal the pruned model in ``folder`` against its dense model: the record, the perplexity after and the
    pruned folder's own score before (from its report, when it has one)."""
    report = json.loads((folder / REPORT_NAME).read_text())
    config = heal_config(report, batch_size, heal_tokens, heal_lr, heal_lr_scale)
    result = heal_student(report["model"], str(folder), report["granularity"] != "structured", config, data_dir,
                          targets, eval_seqlen, eval_max_windows, progress)
    return {"folder": str(folder), "ppl_before": (report.get("ppl") or {}).get("wikitext2"), **result}


def heal_dense(model: str, data_dir: Path | None, calib_samples: int = 64, calib_seqlen: int = 512, seed: int = 0,
               batch_size: int = 4, heal_tokens: int | None = None, heal_lr: float | None = None,
               targets: Path | None = None, eval_seqlen: int = 2048, eval_max_windows: int | None = None,
               progress: bool = True, heal_lr_scale: str | None = None) -> dict:
    """The comparator: the dense model healed the same way (``prune --method magnitude --sparsity 0 --heal``,
    quality_runs' ``dense-heal``), so a gain that is fitting the text and not repair shows."""
    base = PruneConfig(method="magnitude", sparsity=0.0, shots=1, calib_samples=calib_samples,
                       calib_seqlen=calib_seqlen, seed=seed)
    config = heal_config({"config": base.to_dict()}, batch_size, heal_tokens, heal_lr, heal_lr_scale)
    return {"folder": None, "ppl_before": None,
            **heal_student(model, model, False, config, data_dir, targets, eval_seqlen, eval_max_windows, progress)}


def heal_student(model: str, student_source: str, sparse: bool, config: PruneConfig, data_dir: Path | None,
                 targets: Path | None, eval_seqlen: int, eval_max_windows: int | None, progress: bool) -> dict:
    """The dense ``model``'s predictions on ``config``'s healing windows, the model in ``student_source`` trained
    on them (its removed weights kept at zero), then scored."""
    t0 = time.perf_counter()
    teacher, tokenizer = load_model_and_tokenizer(model, dtype=torch.float32)[:2]
    inputs = prepare_heal_inputs(teacher, get_adapter(teacher), tokenizer, config, data_dir, model, targets,
                                 progress)
    del teacher
    student = load_model_and_tokenizer(student_source, dtype=torch.float32)[0]
    adapter = get_adapter(student)
    linears = adapter.prunable_linears(student)
    removed = removed_weights(linears, sparse)
    settings = HealSettings.from_config(config, config.batch_size, progress)
    record = heal_model(student, adapter, linears, removed, inputs.windows.train, inputs.train,
                        inputs.windows.held_out, inputs.held_out, settings)
    kept_zero = all(bool((lin.weight[removed[name]] == 0).all()) for name, lin in linears.items())
    ppl = evaluate(student, tokenizer, data_dir, eval_seqlen, eval_max_windows, progress=progress)
    return {"model": model, "config": config.to_dict(),
            "heal": {**record.to_dict(), "seconds_teacher": inputs.seconds_teacher}, "removed_stay_zero": kept_zero,
            "ppl": ppl.ppl, "ppl_detail": ppl.to_dict(), "peak_mb": peak_memory_mb(),
            "seconds": time.perf_counter() - t0}


def main() -> None:
    args = _arguments()
    if (args.folder is None) == (args.dense is None):
        raise SystemExit("give a pruned folder or --dense MODEL (one of them)")
    common = {"batch_size": args.batch_size, "heal_tokens": args.heal_tokens, "heal_lr": args.heal_lr,
              "heal_lr_scale": args.heal_lr_scale,
              "targets": Path(args.targets) if args.targets else None, "eval_seqlen": args.eval_seqlen,
              "eval_max_windows": args.eval_max_windows}
    data_dir = resolve_data_dir(args.data_dir)
    result = heal_dense(args.dense, data_dir, **common) if args.dense else heal_folder(Path(args.folder), data_dir,
                                                                                        **common)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out), result)
    heal = result["heal"]
    print(f"{args.folder or args.dense}: ppl {result['ppl_before']} -> {result['ppl']:.2f}; KL to dense "
          f"{heal['kl_before']:.4f} -> {heal['kl_after']:.4f}; teacher {heal['seconds_teacher']:.0f} s, "
          f"healing {heal['seconds']:.0f} s, peak {result['peak_mb']:.0f} MB; "
          f"removed weights still zero: {result['removed_stay_zero']}")


if __name__ == "__main__":
    main()
