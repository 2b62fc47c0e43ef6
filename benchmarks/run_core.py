"""Core benchmark: dense vs magnitude vs LLM Surgeon on one model, measured side by side in one run.

(``llm-surgeon bench`` runs any grid of methods; this script pins the rows of the core
benchmark, including LLM Surgeon at 1 and 5 shots, and reports the per-shot cost split.)

Every pruning run is a fresh ``llm-surgeon prune ... --eval`` process, so peak memory is
that run's own (``wait4`` rusage of the child). Results go to ``--results`` (JSON, one
record per run, resumable: a run whose record exists is skipped) and the markdown table
to stdout / ``--markdown``.

    python benchmarks/run_core.py --model smollm2-135m --data-dir ../shared/data \\
        --results runs/core/results.json --markdown runs/core/table.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path

from llm_surgeon.bench import run_child

RUNS = {
    "dense": None,
    "magnitude-50": ["--method", "magnitude", "--sparsity", "0.5", "--shots", "1"],
    "surgeon-50-1shot": ["--method", "surgeon", "--sparsity", "0.5", "--shots", "1"],
    "surgeon-50-5shot": ["--method", "surgeon", "--sparsity", "0.5", "--shots", "5"],
    "magnitude-2:4": ["--method", "magnitude", "--granularity", "2:4", "--shots", "1"],
    "surgeon-2:4-1shot": ["--method", "surgeon", "--granularity", "2:4", "--shots", "1"],
    "surgeon-2:4-5shot": ["--method", "surgeon", "--granularity", "2:4", "--shots", "5"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=os.environ.get("LLM_SURGEON_DATA"))
    parser.add_argument("--work", default="runs/core", help="folder for pruned models and logs")
    parser.add_argument("--results", default="runs/core/results.json")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of: " + ", ".join(RUNS))
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--eval-max-windows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    common_data = ["--data-dir", args.data_dir] if args.data_dir else []
    eval_flags = ["--eval-max-windows", str(args.eval_max_windows)] if args.eval_max_windows else []
    cli = [sys.executable, "-m", "llm_surgeon.cli"]

    for name in args.runs.split(","):
        if name in results:
            print(f"[skip] {name}: already measured", file=sys.stderr)
            continue
        out = work / name.replace(":", "_")
        if RUNS[name] is None:
            cmd = [*cli, "eval", args.model, "--seqlen", str(args.eval_seqlen), "--json", "--no-progress",
                   *common_data, *(["--max-windows", str(args.eval_max_windows)] if args.eval_max_windows else [])]
        else:
            cmd = [*cli, "prune", args.model, "--out", str(out), "--overwrite", *RUNS[name],
                   "--calib-samples", str(args.calib_samples), "--calib-seqlen", str(args.calib_seqlen),
                   "--seed", str(args.seed), "--eval", "--eval-seqlen", str(args.eval_seqlen), "--no-progress",
                   *eval_flags, *common_data]
        print(f"[run] {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        code, wall, peak_mb = run_child(cmd, work / f"{name.replace(':', '_')}.log")
        if code != 0:
            print(f"[fail] {name} exited {code}; see its log", file=sys.stderr)
            continue
        if RUNS[name] is None:
            last = (work / f"{name}.log").read_text().strip().splitlines()[-1]
            record = {"ppl": json.loads(last)["ppl"], "achieved_sparsity": 0.0, "seconds": {}}
        else:
            report = json.loads((out / "report.json").read_text())
            record = {
                "ppl": report["ppl"]["wikitext2"],
                "achieved_sparsity": report["achieved_sparsity"],
                "seconds": report["seconds"],
                "shot_records": report["shot_records"],
                "nm_validation": report["nm_validation"],
                "report_peak_memory_mb": report["peak_memory_mb"],
            }
        record.update({"command": shlex.join(cmd), "wall_seconds": wall, "peak_rss_mb": peak_mb})
        results[name] = record
        results_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(results_path)

    table = render(results, args)
    if args.markdown:
        Path(args.markdown).write_text(table)
    print(table)
    return 0


def _fmt(seconds: dict, key: str) -> str:
    return f"{seconds[key]:.1f}" if key in seconds else "–"


def render(results: dict, args) -> str:
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, float32.",
        f"Calibration: WikiText-2 valid, {args.calib_samples} x {args.calib_seqlen} tokens, seed {args.seed}. "
        f"Evaluation: WikiText-2 test, seqlen {args.eval_seqlen}"
        + (f", first {args.eval_max_windows} windows." if args.eval_max_windows else ", all windows."),
        "",
        "| run | sparsity | WikiText-2 ppl | curvature s | costs s | update s | prune total s | mean PCG iters | "
        "update loss reduction | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in RUNS:
        r = results.get(name)
        if r is None:
            lines.append(f"| {name} | not measured | | | | | | | | |")
            continue
        s = r["seconds"]
        shots = r.get("shot_records") or []
        iters = sum(x["update_iterations_mean"] for x in shots) / len(shots) if shots else 0
        reduction = sum(x["update_loss_reduction"] for x in shots) / len(shots) if shots else 0
        lines.append(
            f"| {name} | {r['achieved_sparsity']:.4f} | {r['ppl']:.2f} | {_fmt(s, 'curvature')} | {_fmt(s, 'costs')} | "
            f"{_fmt(s, 'update')} | {_fmt(s, 'total')} | {iters:.1f} | {reduction:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
