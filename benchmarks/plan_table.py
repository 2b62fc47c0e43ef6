"""The plan for large models on several GPU layouts, as a markdown table (predictions only).

A layout ``RxD`` is R ``torchrun`` ranks, each holding the model on D devices (``--device-map``): ``1x8`` is
one process over 8 GPUs, ``8x1`` eight ranks of one GPU, ``2x4`` two ranks of 4. Builds nothing but
meta-device models from the shapes in ``benchmarks/configs`` (public config.json shapes, no weights), so
it runs offline in seconds; the last columns are what each rank moves per shot (GiB): hidden states across
device boundaries, factor sums reduced to their owners, updated weights broadcast.

    python benchmarks/plan_table.py --configs benchmarks/configs/llama-3-8b.json,benchmarks/configs/llama-3-70b.json \\
        --layouts 1x1,1x8,8x1 --memory 80GiB,141GiB --tflops 400 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llm_surgeon.config import PruneConfig
from llm_surgeon.planning.memory import parse_bytes
from llm_surgeon.planning.plan import plan_shot

GIB = 2**30


def row(name: str, layout: str, memory: str, plan) -> str:
    fits = "yes" if plan.fits else "no"
    moved = plan.communication_bytes
    return (f"| {name} | {layout} x {memory} | {plan.weights_bytes / GIB:.1f} | {plan.factors_bytes / GIB:.1f} | "
            f"{plan.activations_bytes / GIB:.1f} | {plan.logits_bytes / GIB:.1f} | {plan.peak_bytes / GIB:.1f} | "
            f"{fits} | {plan.block_groups} | {plan.batch_size} | {plan.seconds_per_shot:.0f} | "
            f"{moved['device_boundaries'] / GIB:.1f} | {moved['factor_reduce'] / GIB:.1f} | "
            f"{moved['weight_broadcast'] / GIB:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", required=True, help="comma-separated config.json paths")
    parser.add_argument("--layouts", default="1x1,1x8,8x1", help="RxD: R ranks of D devices each")
    parser.add_argument("--memory", default="80GiB,141GiB")
    parser.add_argument("--tflops", type=float, default=400.0, help="per device")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--calib-seqlen", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    config = PruneConfig(calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, batch_size=args.batch_size,
                         shots=1)
    print("| model | ranks x devices | weights GiB | factor sums + working set GiB | activations GiB | logits GiB | "
          "peak per device GiB | fits | block groups | batch | s per shot | boundaries GiB | factor reduce GiB | "
          "weight broadcast GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in args.configs.split(","):
        for layout in args.layouts.split(","):
            ranks, devices = (int(n) for n in layout.split("x"))
            for memory in args.memory.split(","):
                plan = plan_shot(path, config, args.dtype, parse_bytes(memory), args.tflops, devices, ranks)
                print(row(Path(path).stem, layout, memory, plan), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
