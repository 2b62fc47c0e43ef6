"""The plan for large models on 1 and 8 devices of given sizes, as a markdown table (predictions only).

Builds nothing but meta-device models from the shapes in ``benchmarks/configs`` (public config.json
shapes, no weights), so it runs offline in seconds:

    python benchmarks/plan_table.py --configs benchmarks/configs/llama-3-8b.json,benchmarks/configs/llama-3-70b.json \\
        --devices 1,8 --memory 80GiB,141GiB --tflops 400 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llm_surgeon.config import PruneConfig
from llm_surgeon.planning import plan_shot
from llm_surgeon.resources import parse_bytes

GIB = 2**30


def row(name: str, devices: int, memory: str, plan) -> str:
    fits = "yes" if plan.fits else "no"
    return (f"| {name} | {devices} x {memory} | {plan.weights_bytes / GIB:.1f} | {plan.factors_bytes / GIB:.1f} | "
            f"{plan.activations_bytes / GIB:.1f} | {plan.logits_bytes / GIB:.1f} | {plan.peak_bytes / GIB:.1f} | "
            f"{fits} | {plan.block_groups} | {plan.batch_size} | {plan.seconds_per_shot:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", required=True, help="comma-separated config.json paths")
    parser.add_argument("--devices", default="1,8")
    parser.add_argument("--memory", default="80GiB,141GiB")
    parser.add_argument("--tflops", type=float, default=400.0, help="per device")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--calib-seqlen", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    config = PruneConfig(calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, batch_size=args.batch_size,
                         shots=1)
    print("| model | devices | weights GiB | factor sums + working set GiB | activations GiB | logits GiB | "
          "peak per device GiB | fits | block groups | batch | s per shot |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in args.configs.split(","):
        for devices in (int(d) for d in args.devices.split(",")):
            for memory in args.memory.split(","):
                plan = plan_shot(path, config, args.dtype, parse_bytes(memory), args.tflops, devices)
                print(row(Path(path).stem, devices, memory, plan), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
