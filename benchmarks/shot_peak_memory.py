"""Peak memory of one LLM Surgeon shot on a real model, with the up-front prediction beside it.

Runs ``llm-surgeon prune MODEL --shots 1 ...`` in a child process (its own peak RSS from ``wait4``)
with the code under ``--src`` (so two code versions can be measured alternately in one run), and
prints one JSON line per batch size: measured peak, the report's predicted peak (when that code
version predicts one), the seconds of each part and, with ``--eval-windows``, the perplexity on the
first test windows (two code versions that must prune alike show the same number).

    python benchmarks/shot_peak_memory.py --src src --label HEAD --batch-sizes 2,8 --data-dir ../shared/data
    python benchmarks/shot_peak_memory.py --src /tmp/old/src --label old --granularity structured \
        --sparsity 0.2 --samples 64 --batch-sizes 8 --eval-windows 40 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from llm_surgeon.bench import run_child


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default="src", help="the package's source folder of the code version to measure")
    parser.add_argument("--label", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-sizes", default="2,8")
    parser.add_argument("--granularity", default="unstructured")
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--eval-windows", type=int, default=0, help="evaluate on this many 2048-token test windows")
    parser.add_argument("--data-dir", default=os.environ.get("LLM_SURGEON_DATA"))
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = str(Path(args.src).resolve())  # the children run this code version
    for batch in args.batch_sizes.split(","):
        out = Path(tempfile.mkdtemp(prefix="shot-memory-"))
        cmd = [sys.executable, "-m", "llm_surgeon.cli", "prune", args.model, "--out", str(out / "run"),
               "--shots", "1", "--sparsity", args.sparsity, "--granularity", args.granularity, "--calib-samples",
               str(args.samples), "--calib-seqlen", str(args.seqlen), "--batch-size", batch, "--no-progress",
               "--data-dir", args.data_dir]
        if args.eval_windows:
            cmd += ["--eval", "--eval-max-windows", str(args.eval_windows)]
        code, wall, peak_mb = run_child(cmd, out / "log.txt")
        report = json.loads((out / "run" / "report.json").read_text()) if code == 0 else {}
        estimate = report.get("memory_estimate") or {}
        print(json.dumps({"label": args.label, "batch_size": int(batch), "windows": f"{args.samples} x {args.seqlen}",
                          "granularity": args.granularity, "sparsity": float(args.sparsity),
                          "ppl": (report.get("ppl") or {}).get("wikitext2"),
                          "exit": code, "measured_peak_mb": round(peak_mb),
                          "predicted_peak_mb": round(estimate["predicted_peak_mb"]) if estimate else None,
                          "estimate_parts_mb": {k: round(v) for k, v in estimate.items()
                                                if isinstance(v, (int, float))} if estimate else None,
                          "seconds": {k: round(v, 1) for k, v in report.get("seconds", {}).items()},
                          "wall_s": round(wall, 1)}), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
