"""Core benchmark: dense vs magnitude vs LLM Surgeon on one model, measured side by side.

The rows are ``llm-surgeon bench`` runs (the bench does the running, resuming and recording);
this script only pins which rows make the core table and renders it with the per-shot cost
split. ``bench`` fixes one shot count per folder, so the 1-shot and 5-shot rows live in
``WORK/shots-1`` and ``WORK/shots-5`` (magnitude is the same at any shot count: no update, one
global threshold over |W|).

    python benchmarks/run_core.py --model smollm2-135m --data-dir ../shared/data --work runs/core \\
        --runs dense,magnitude-50,surgeon-50-5shot --markdown runs/core/table.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path

from llm_surgeon.bench import DENSE, Protocol, RunSpec, run_bench
from llm_surgeon.runtime.files import atomic_write_json

RUNS: dict[str, tuple[int, RunSpec | None]] = {
    "dense": (1, None),
    "magnitude-50": (1, RunSpec("magnitude", "unstructured", 0.5)),
    "surgeon-50-1shot": (1, RunSpec("surgeon", "unstructured", 0.5)),
    "surgeon-50-5shot": (5, RunSpec("surgeon", "unstructured", 0.5)),
    "magnitude-2:4": (1, RunSpec("magnitude", "2:4", 0.5)),
    "surgeon-2:4-1shot": (1, RunSpec("surgeon", "2:4", 0.5)),
    "surgeon-2:4-5shot": (5, RunSpec("surgeon", "2:4", 0.5)),
}
"""Row name -> (shots of its bench folder, the run; ``None`` for the dense evaluation)."""


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=os.environ.get("LLM_SURGEON_DATA"))
    parser.add_argument("--work", default="runs/core", help="parent of the bench folders shots-1 and shots-5")
    parser.add_argument("--markdown", default=None, help="also write the table here")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of: " + ", ".join(RUNS))
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--eval-max-windows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> int:
    args = _arguments()
    names = args.runs.split(",")
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        print(f"run_core: unknown runs {unknown}; choose from {', '.join(RUNS)}", file=sys.stderr)
        return 2
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    records, dense = {}, None
    for shots in sorted({RUNS[n][0] for n in names}):
        protocol = Protocol(model=args.model, data_dir=args.data_dir, calib_samples=args.calib_samples,
                            calib_seqlen=args.calib_seqlen, seed=args.seed, eval_seqlen=args.eval_seqlen,
                            eval_max_windows=args.eval_max_windows, shots=shots)
        specs = [RUNS[n][1] for n in names if RUNS[n][0] == shots and RUNS[n][1] is not None]
        folder = Path(args.work) / f"shots-{shots}"
        if dense is not None:
            _share_dense(folder, protocol, dense)
        results = run_bench(protocol, specs, folder, log=log)
        dense = dense or results["runs"].get(DENSE)
        for n in names:
            spec = RUNS[n][1]
            if RUNS[n][0] == shots:
                records[n] = results["runs"].get(DENSE if spec is None else spec.key)
    table = render(records, args)
    if args.markdown:
        Path(args.markdown).write_text(table)
    print(table)
    return 0 if all(records.values()) else 2


def _share_dense(folder: Path, protocol: Protocol, dense: dict) -> None:
    """Give a later bench folder the dense record measured in the first: the dense model does not depend on
    the shot count, and one evaluation of the full test set takes a quarter of an hour on this CPU."""
    path = folder / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}, "protocol": asdict(protocol)}
    if DENSE not in results["runs"]:
        results["runs"][DENSE] = {**dense, "copied_from": "the first bench folder of this core run"}
        atomic_write_json(path, results)


def _fmt(seconds: dict, key: str) -> str:
    return f"{seconds[key]:.1f}" if key in seconds else "–"


def render(records: dict, args) -> str:
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
    for name, r in records.items():
        if r is None:
            lines.append(f"| {name} | not measured | | | | | | | | |")
            continue
        s = r.get("seconds", {})
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
