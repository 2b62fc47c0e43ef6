"""One curvature pass with 2 ranks x 1 thread against 1 process x 1 thread, measured alternately.

    python benchmarks/data_parallel_pass.py --data-dir ../shared/data --samples 16 --rounds 2

Each measurement is a fresh child: ``torchrun --standalone --nproc-per-node 2`` for the ranks (gloo), plain
``python`` with ``OMP_NUM_THREADS=1`` for one process. Both run this file with ``--child`` and print the
pass's seconds and a fingerprint of the factors (the trace of every layer's ``G``, summed), then make LLM
Surgeon's 50% global selection from those factors (untimed) and save the masks; the parent compares each
run's masks with the first one-process run's. Prints one JSON line per measurement and the speed-up of the
medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def child(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from llm_surgeon.curvature.collectors import CurvatureRequest, LocalCollector
    from llm_surgeon.curvature.distributed import DataParallelCollector
    from llm_surgeon.data.calibration import calibration_windows, resolve_data_dir
    from llm_surgeon.models.adapters import get_adapter
    from llm_surgeon.models.loading import load_model_and_tokenizer

    torch.set_num_threads(1)
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    if ranks > 1:
        dist.init_process_group("gloo")
    model, tokenizer, _ = load_model_and_tokenizer(args.model)
    windows, _ = calibration_windows(tokenizer, args.samples, args.seqlen, 0, resolve_data_dir(args.data_dir))
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    collector = DataParallelCollector(batch_size=1, progress=False) if ranks > 1 else LocalCollector(1, progress=False)
    start = time.perf_counter()
    factors = collector.collect(model, adapter, linears, windows, CurvatureRequest(), seed=0)
    seconds = time.perf_counter() - start
    if ranks == 1 or dist.get_rank() == 0:
        fingerprint = sum(float(f.unpacked().G.trace()) for f in factors.values())
        torch.save(surgeon_masks(linears, factors), args.masks_out)
        print(json.dumps({"ranks": ranks, "seconds": round(seconds, 1), "G_trace_sum": fingerprint}), flush=True)
    if ranks > 1:
        dist.destroy_process_group()


def surgeon_masks(linears, factors) -> dict[str, torch.Tensor]:
    """LLM Surgeon's 50% masks by one global threshold from ``factors`` (no update)."""
    from llm_surgeon import PruneConfig
    from llm_surgeon.curvature.factors import LazyDampedFactors
    from llm_surgeon.engine.selectors import ElementSelector
    from llm_surgeon.methods import get_method

    config = PruneConfig()
    removed = {name: torch.zeros_like(lin.weight, dtype=torch.bool) for name, lin in linears.items()}
    lazy = LazyDampedFactors(factors, config.damp_g, config.damp_a)
    return ElementSelector(linears).select(get_method("surgeon", config), lazy, removed, 0.5)


def mask_agreement(reference: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> float:
    """Share of the reference's removed weights that ``masks`` removes too (both remove the same count)."""
    removed = sum(int(m.sum()) for m in reference.values())
    return sum(int((m & masks[n]).sum()) for n, m in reference.items()) / removed


def measure(ranks: int, args: argparse.Namespace, masks_out: str) -> dict:
    flags = [__file__, "--child", "--model", args.model, "--samples", str(args.samples), "--seqlen",
             str(args.seqlen), "--data-dir", args.data_dir, "--masks-out", masks_out]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), *flags]
    else:
        cmd = [sys.executable, *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--masks-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    seconds: dict[int, list[float]] = {1: [], 2: []}
    reference = None
    with tempfile.TemporaryDirectory() as folder:
        masks_out = str(Path(folder) / "masks.pt")
        for _ in range(args.rounds):
            for ranks in (1, 2):
                result = measure(ranks, args, masks_out)
                masks = torch.load(masks_out, weights_only=True)
                reference = reference or masks
                result["mask_agreement_with_first_one_process_run"] = round(mask_agreement(reference, masks), 6)
                seconds[ranks].append(result["seconds"])
                print(json.dumps(result), flush=True)
    print(json.dumps({"speedup_of_medians": round(statistics.median(seconds[1]) / statistics.median(seconds[2]), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
