"""Dense vs 2:4 semi-structured Linear on a CUDA GPU: does the sparse kernel pay off, and from how many tokens?

Times ``F.linear`` with a dense fp16/bf16 weight against the same weight pruned to 2:4 and converted
with ``torch.sparse.to_sparse_semi_structured`` (the format ``llm-surgeon prune --semi-structured-export``
produces), for LLM-sized shapes and several token counts; checks the two outputs agree. On a machine
without CUDA, or a card without the kernels, it says so and records that instead of a number.

    python benchmarks/gpu_semi_structured.py --out runs/gpu/semi_structured.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(11008, 4096), (4096, 11008), (4096, 4096)]  # (out, in) of Llama-7B's MLP and attention Linears
TOKENS = [16, 64, 256, 1024, 4096, 16384]


def two_four_weight(out_features: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """A random weight with the two smallest of every four consecutive inputs of a row set to zero."""
    weight = torch.randn(out_features, in_features, device="cuda", dtype=dtype)
    groups = weight.view(out_features, in_features // 4, 4)
    drop = groups.abs().argsort(dim=-1)[..., :2]
    return groups.scatter(-1, drop, 0).view(out_features, in_features)


def median_ms(fn, repeats: int = 50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def measure(dtype: torch.dtype) -> list[dict]:
    from torch.sparse import to_sparse_semi_structured

    rows = []
    for out_features, in_features in SHAPES:
        dense = two_four_weight(out_features, in_features, dtype)
        try:
            sparse = to_sparse_semi_structured(dense)
        except (RuntimeError, NotImplementedError) as exc:
            rows.append({"shape": [out_features, in_features], "dtype": str(dtype), "error": str(exc).splitlines()[0]})
            continue
        for tokens in TOKENS:
            x = torch.randn(tokens, in_features, device="cuda", dtype=dtype)
            row = {"shape": [out_features, in_features], "dtype": str(dtype), "tokens": tokens}
            try:
                reference = F.linear(x, dense)
                result = F.linear(x, sparse)
                row["max_rel_error"] = ((result - reference).abs().max() / reference.abs().max()).item()
                row["dense_ms"] = median_ms(lambda x=x, w=dense: F.linear(x, w))
                row["sparse_ms"] = median_ms(lambda x=x, w=sparse: F.linear(x, w))
                row["speedup"] = row["dense_ms"] / row["sparse_ms"]
            except (RuntimeError, NotImplementedError) as exc:
                row["error"] = str(exc).splitlines()[0]
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu/semi_structured.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_semi_structured: no CUDA device here; the semi-structured 2:4 kernels need one", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    report = {
        "gpu": torch.cuda.get_device_name(),
        "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "rows": measure(torch.float16) + measure(torch.bfloat16),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out)
    print(f"{report['gpu']} (sm {report['capability'][0]}{report['capability'][1]}), torch {report['torch']}")
    print("| shape (out x in) | dtype | tokens | dense ms | 2:4 ms | speed-up | max rel. error |")
    print("|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        shape = "x".join(map(str, r["shape"]))
        if "error" in r:
            print(f"| {shape} | {r['dtype']} | {r.get('tokens', '–')} | – | – | fails: {r['error']} | – |")
        else:
            print(f"| {shape} | {r['dtype']} | {r['tokens']} | {r['dense_ms']:.3f} | {r['sparse_ms']:.3f} | "
                  f"{r['speedup']:.2f}x | {r['max_rel_error']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
