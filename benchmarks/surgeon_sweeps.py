"""Issue 17's sweeps of LLM Surgeon's own settings, on the first 40 WikiText-2 test windows.

Every row is one ``llm-surgeon prune ... --eval --eval-max-windows 40`` process (its own folder under
``--work``; a finished folder is read back, not rerun), from the core protocol (SmolLM2-135M, 64 x 512
calibration tokens of WikiText-2 valid, seed 0, float32) with one setting changed. The base of the
unstructured sweeps is one shot to 50% (a 5-shot row costs five curvature passes); the table gives
perplexity, the seconds of each phase and peak memory, so each setting is shown with its cost.

    python benchmarks/surgeon_sweeps.py --data-dir ../shared/data --work runs/sweeps --sweeps damping,pcg
    python benchmarks/surgeon_sweeps.py --data-dir ../shared/data --work runs/sweeps --sweeps shots --max-shots 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# Settings a default may change are pinned, so a row read back from its folder never stands for a newer default.
SURGEON_50 = ["--method", "surgeon", "--sparsity", "0.5", "--update-start", "independent"]
UNSTRUCTURED_BASE = ["--method", "surgeon", "--sparsity", "0.5", "--shots", "1", "--update-start", "independent"]
ZEROED_START = ["--method", "surgeon", "--sparsity", "0.5", "--shots", "1", "--update-start", "zeroed"]
STRUCTURED_BASE = ["--granularity", "structured", "--sparsity", "0.2", "--shots", "1"]
# nothing pruned, then one rank-16 correction: how much of a correction's gain is fitting the calibration text
DENSE_RANK16 = ["--method", "magnitude", "--sparsity", "0.0", "--shots", "1", "--lora-rank", "16"]

SWEEPS: dict[str, dict[str, list[str]]] = {
    "damping": {
        "base (A 0.1, G 0.1)": UNSTRUCTURED_BASE,
        "A 0.01, G 0.01": [*UNSTRUCTURED_BASE, "--damp-a", "0.01", "--damp-g", "0.01"],
        "A 1.0, G 1.0": [*UNSTRUCTURED_BASE, "--damp-a", "1.0", "--damp-g", "1.0"],
        "A 0.01, G 0.1": [*UNSTRUCTURED_BASE, "--damp-a", "0.01"],
        "A 0.1, G 0.01": [*UNSTRUCTURED_BASE, "--damp-g", "0.01"],
    },
    "pcg": {  # iterations and where the correlated update's PCG starts (benchmarks/pcg_convergence.py)
        "zeroed start, 10 iterations": [*ZEROED_START, "--update-iterations", "10"],
        "zeroed start, 20 iterations": ZEROED_START,
        "base (independent start, 20 iterations)": UNSTRUCTURED_BASE,
        "zeroed start, 50 iterations": [*ZEROED_START, "--update-iterations", "50"],
        "independent start, 50 iterations": [*UNSTRUCTURED_BASE, "--update-iterations", "50"],
        "removed-set CG, 20 iterations (half the matmuls)": [*UNSTRUCTURED_BASE, "--update-solver", "removed"],
    },
    "damping-fine": {  # between the grid's points: G between 0.1 (the default) and 1.0
        "base (A 0.1, G 0.1)": UNSTRUCTURED_BASE,
        "A 0.1, G 0.3": [*UNSTRUCTURED_BASE, "--damp-g", "0.3"],
        "A 0.1, G 0.5": [*UNSTRUCTURED_BASE, "--damp-g", "0.5"],
    },
    "layer-cap": {  # the global threshold with a ceiling per layer (the uncapped one empties q_proj to 59-99%)
        "base (no cap)": UNSTRUCTURED_BASE,
        "at most 90% of a layer": [*UNSTRUCTURED_BASE, "--max-layer-sparsity", "0.9"],
        "at most 80% of a layer": [*UNSTRUCTURED_BASE, "--max-layer-sparsity", "0.8"],
        "at most 70% of a layer": [*UNSTRUCTURED_BASE, "--max-layer-sparsity", "0.7"],
        "at most 60% of a layer": [*UNSTRUCTURED_BASE, "--max-layer-sparsity", "0.6"],
    },
    "nm-costs": {  # 2:4 in one shot: a group priced by its two cheapest single costs, or by the pair's joint cost
        "2:4, summed single costs (the paper's)": ["--method", "surgeon", "--granularity", "2:4", "--shots", "1",
                                                  "--update-start", "independent", "--nm-costs", "independent"],
        "2:4, joint pair costs": ["--method", "surgeon", "--granularity", "2:4", "--shots", "1", "--update-start",
                                  "independent", "--nm-costs", "joint"],
    },
    "fisher": {
        "base (empirical)": UNSTRUCTURED_BASE,
        "true (labels sampled)": [*UNSTRUCTURED_BASE, "--fisher", "true"],
    },
    "rank": {
        "base (no correction)": UNSTRUCTURED_BASE,
        "rank 4": [*UNSTRUCTURED_BASE, "--lora-rank", "4"],
        "rank 16": [*UNSTRUCTURED_BASE, "--lora-rank", "16"],
        # the peer with the same correction, and the correction alone on the dense model (how much of its gain
        # is fitting WikiText-2 itself: the calibration text is WikiText-2 valid, the evaluation its test)
        "sparsegpt, no correction": ["--method", "sparsegpt", "--sparsity", "0.5"],
        "sparsegpt, rank 16": ["--method", "sparsegpt", "--sparsity", "0.5", "--lora-rank", "16"],
        "dense (nothing pruned), rank 16": [*DENSE_RANK16, "--eval-dense"],
    },
    "rank-shots": {  # the correction after each of 5 shots (the rank sweep's rows correct after one shot)
        "5 shots, no correction": [*SURGEON_50, "--shots", "5"],
        "5 shots, rank 16 after each": [*SURGEON_50, "--shots", "5", "--lora-rank", "16"],
        "5 shots, rank 4 after each": [*SURGEON_50, "--shots", "5", "--lora-rank", "4"],
        # the dense model trained as long as five corrections train (one correction of five epochs)
        "dense (nothing pruned), rank 16 for 5 epochs": [*DENSE_RANK16, "--lora-epochs", "5"],
    },
    "shots": {
        "base (1 shot)": UNSTRUCTURED_BASE,
        "5 shots": [*SURGEON_50, "--shots", "5"],
        "10 shots": [*SURGEON_50, "--shots", "10"],
        "20 shots": [*SURGEON_50, "--shots", "20"],
        "40 shots": [*SURGEON_50, "--shots", "40"],
    },
    "calibration": {  # later flags win: --calib-samples here overrides the protocol's 64
        "64 x 512, 1 shot (base)": UNSTRUCTURED_BASE,
        "128 x 512, 1 shot (2x the pass)": [*UNSTRUCTURED_BASE, "--calib-samples", "128"],
        "32 x 512, 2 shots (the same passes)": [*SURGEON_50, "--shots", "2", "--calib-samples", "32"],
        "16 x 2048, 1 shot (the same tokens at the evaluation's length)": [
            *UNSTRUCTURED_BASE, "--calib-samples", "16", "--calib-seqlen", "2048", "--batch-size", "2"],
    },
    "structured-costs": {  # 80% kept in one shot: how a structure is priced
        "surgeon, all members (the paper's)": ["--method", "surgeon", *STRUCTURED_BASE, "--structure-costs", "all"],
        "surgeon, output columns only (default)": ["--method", "surgeon", *STRUCTURED_BASE, "--structure-costs",
                                                   "outputs"],
        "ziplm (G = I)": ["--method", "ziplm", *STRUCTURED_BASE],
        "flap": ["--method", "flap", *STRUCTURED_BASE],
    },
}
SWEEPS["nm-costs-seed1"] = {  # the same pair on another draw of the calibration windows
    f"{label}, seed 1": [*flags, "--seed", "1"] for label, flags in SWEEPS["nm-costs"].items()}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=os.environ.get("LLM_SURGEON_DATA"))
    parser.add_argument("--work", default="runs/sweeps")
    parser.add_argument("--sweeps", default="damping", help="comma-separated subset of: " + ", ".join(SWEEPS))
    parser.add_argument("--eval-max-windows", type=int, default=40)
    parser.add_argument("--max-shots", type=int, default=None,
                        help="run no row of more shots than this (a row already in its folder is still shown); about "
                             "4 minutes of this 2-core machine per shot")
    return parser.parse_args()


def shots_of(flags: list[str]) -> int:
    """The shots a row runs: the last ``--shots`` wins, as on the command line."""
    values = [int(flags[i + 1]) for i, flag in enumerate(flags[:-1]) if flag == "--shots"]
    return values[-1] if values else 1


def folder_name(flags: list[str]) -> str:
    """One folder per distinct setting, so a row shared by two sweeps (the base) runs once."""
    return "_".join(flag.lstrip("-").replace(".", "p").replace(":", "-") for flag in flags)


def run(flags: list[str], args: argparse.Namespace) -> dict | None:
    """The row's report, running it first unless its folder has one; None for a row over ``--max-shots``."""
    out = Path(args.work) / folder_name(flags)
    if not (out / "report.json").is_file():
        if args.max_shots is not None and shots_of(flags) > args.max_shots:
            return None
        command = [sys.executable, "-m", "llm_surgeon", "prune", args.model, "--out", str(out), "--eval",
                   "--calib-samples", "64", "--calib-seqlen", "512", "--data-dir", args.data_dir,
                   "--eval-max-windows", str(args.eval_max_windows), *flags]
        print("+", " ".join(command), file=sys.stderr, flush=True)
        subprocess.run(command, check=True)
    return json.loads((out / "report.json").read_text())


def row(label: str, report: dict | None) -> str:
    if report is None:
        return f"| {label} | not measured (over --max-shots) | | | | | | | |"
    s, shots = report["seconds"], report["shot_records"]
    iterations = [r["update_iterations_mean"] for r in shots if r.get("update_iterations_mean")]
    pcg = f"{sum(iterations) / len(iterations):.1f}" if iterations else ""
    reductions = [r["update_loss_reduction"] for r in shots if r.get("update_loss_reduction")]
    removed = f"{sum(reductions) / len(reductions):.3f}" if reductions else ""
    return (f"| {label} | {report['ppl']['wikitext2']:.2f} | {s['total']:.0f} | {s.get('curvature', 0):.0f} | "
            f"{s.get('update', 0):.0f} | {s.get('correction', 0):.0f} | {report['peak_memory_mb']:,.0f} | {pcg} | "
            f"{removed} |")


def main() -> int:
    args = _arguments()
    for sweep in args.sweeps.split(","):
        rows = [row(label, run(flags, args)) for label, flags in SWEEPS[sweep].items()]
        print(f"\n### {sweep} (first {args.eval_max_windows} test windows)\n")
        print("| setting | wikitext2 ppl | pruning s | curvature s | update s | correction s | peak MB | PCG "
              "iterations (mean) | share of the zeroed loss the update removed (mean) |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
