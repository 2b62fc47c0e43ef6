"""The plan's predicted peak beside the measured one, for a real model or one built from a config.

For ``--config`` a model with random weights is built from a transformers ``config.json`` (e.g. the
Llama-3.2-1B config: no download), saved in ``--dtype`` with the SmolLM2 tokenizer (calibration text only
needs token ids below the vocabulary). Then, for each ``--max-memory`` (``none``: the free memory),
``llm-surgeon plan`` predicts and ``llm-surgeon prune`` runs in a child process whose own peak RSS is read
from ``wait4``. Prints one JSON line per run: the plan (peak, block groups, seconds) and the measurement.

    python benchmarks/plan_vs_measured.py --config llama32_1b.json --dtype bfloat16 --max-memory 16GiB \\
        --data-dir ../shared/data
    python benchmarks/plan_vs_measured.py --model smollm2-135m --batch-size 1 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from llm_surgeon.bench import run_child

CLI = [sys.executable, "-m", "llm_surgeon.cli"]


def build_random_model(config_path: str, dtype: str, folder: Path) -> Path:
    """A model with random weights from ``config_path``, saved with SmolLM2's tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from llm_surgeon.models.loading import load_model_and_tokenizer

    config = AutoConfig.for_model(**json.loads(Path(config_path).read_text()))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(folder)
    del model
    _, tokenizer, _ = load_model_and_tokenizer("smollm2-135m")
    tokenizer.save_pretrained(folder)
    return folder


def shared_flags(args: argparse.Namespace, max_memory: str) -> list[str]:
    flags = ["--shots", "1", "--sparsity", "0.5", "--calib-samples", str(args.samples), "--calib-seqlen",
             str(args.seqlen), "--batch-size", str(args.batch_size), "--dtype", args.dtype,
             "--update-iterations", str(args.update_iterations)]
    return flags + ([] if max_memory == "none" else ["--max-memory", max_memory])


def measure(model: str, args: argparse.Namespace, max_memory: str, work: Path) -> dict:
    flags = shared_flags(args, max_memory)
    plan = json.loads(subprocess.run([*CLI, "plan", model, "--json", *flags], check=True, capture_output=True,
                                     text=True).stdout)
    out = work / "run"
    evaluation = ["--eval", "--eval-max-windows", str(args.eval_windows)] if args.eval_windows else []
    code, wall, peak_mb = run_child([*CLI, "prune", model, "--out", str(out), "--overwrite", "--no-progress",
                                     "--data-dir", args.data_dir, *flags, *evaluation], work / "log.txt")
    report = json.loads((out / "report.json").read_text()) if code == 0 else {}
    fit_lines = [line for line in (work / "log.txt").read_text().splitlines() if "does not fit" in line]
    estimate = report.get("memory_estimate") or {}
    shutil.rmtree(out, ignore_errors=True)
    return {"model": args.config or model, "dtype": args.dtype, "max_memory": max_memory, "exit": code,
            "windows": f"{args.samples} x {args.seqlen}", "batch_size": args.batch_size,
            "plan_peak_mb": round(plan["peak_bytes"] / 2**20), "plan_block_groups": plan["block_groups"],
            "plan_batch_size": plan["batch_size"], "plan_fits": plan["fits"],
            "plan_margin_mb": round(plan.get("margin_bytes", 0) / 2**20),
            "prune_batch_size": estimate.get("batch_size"), "prune_margin_mb": estimate.get("margin_mb"),
            "plan_seconds": round(plan["seconds_per_shot"]),
            "prune_predicted_peak_mb": round(estimate["predicted_peak_mb"]) if estimate else None,
            "prune_block_groups": estimate.get("block_groups"), "measured_peak_mb": round(peak_mb),
            "ppl": (report.get("ppl") or {}).get("wikitext2"), "update_iterations": args.update_iterations,
            "seconds": {k: round(v, 1) for k, v in report.get("seconds", {}).items()}, "wall_s": round(wall, 1),
            "fit_line": fit_lines[0] if fit_lines else None,
            "log_tail": [] if code == 0 else (work / "log.txt").read_text().splitlines()[-3:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a model prune accepts (e.g. smollm2-135m)")
    source.add_argument("--config", help="a config.json to build a random-weight model from")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-memory", default="none", help="comma-separated budgets, or none")
    parser.add_argument("--update-iterations", type=int, default=20,
                        help="PCG iterations (the memory does not depend on them)")
    parser.add_argument("--eval-windows", type=int, default=0, help="also evaluate on the first K test windows")
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="plan-vs-measured-"))
    try:
        model = args.model or str(build_random_model(args.config, args.dtype, work / "model"))
        for budget in args.max_memory.split(","):
            print(json.dumps(measure(model, args, budget, work)), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
