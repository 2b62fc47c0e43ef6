"""Where a pruned model's sparsity went, block by block, beside what the dense model's blocks put out (a
diagnostic for an allocation, not a result).

For the dense model: the share of its prunable weights that are exact zeros already (a de-quantised GGUF
holds some), and per block the RMS of the outputs of ``q_proj``, ``o_proj`` and ``down_proj`` and of the
block itself (the residual stream) on a few calibration windows. For each ``report.json`` given: per block,
the share of FFN neurons a structured run removed, or of ``q_proj`` / ``o_proj`` / ``down_proj`` weights an
unstructured one zeroed; then the Spearman rank correlation of each removal column with the RMS of the
layer it removes from.

    python benchmarks/allocation_by_block.py --model gemma3-270m --data-dir ../shared/data \\
        runs/bench-gemma-structured/runs/surgeon_structured_0.2/report.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from llm_surgeon import load_calibration, load_model_and_tokenizer
from llm_surgeon.math.ranks import spearman
from llm_surgeon.models.adapters import get_adapter

OUTPUTS = {"q": "self_attn.q_proj", "o": "self_attn.o_proj", "down": "mlp.down_proj"}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="*", type=Path, help="report.json files of runs on this model")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--data-dir", default=os.environ.get("LLM_SURGEON_DATA"))
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=512)
    return parser.parse_args()


def output_rms(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, list[float]]:
    """Per block, the RMS of each watched layer's output and of the block's output, on ``ids``."""
    blocks = get_adapter(model).blocks(model)
    rms: dict[str, list[float]] = {key: [0.0] * len(blocks) for key in (*OUTPUTS, "block")}

    def watch(key: str, index: int):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            rms[key][index] = float(out.double().pow(2).mean().sqrt())
        return hook

    handles = [block.register_forward_hook(watch("block", i)) for i, block in enumerate(blocks)]
    for i, block in enumerate(blocks):
        handles += [block.get_submodule(path).register_forward_hook(watch(key, i)) for key, path in OUTPUTS.items()]
    with torch.inference_mode():
        model(ids)
    for handle in handles:
        handle.remove()
    return rms


def removed_by_block(report: dict, blocks: int) -> dict[str, list[float]]:
    """Per block, the FFN neurons a structured run removed, or the weights an unstructured one zeroed."""
    if report.get("structure"):
        layers = report["structure"]["layers"]
        return {"down": [1 - b["ffn_width_kept"] / b["ffn_width_before"] for b in layers]}
    per_layer = report["per_layer_sparsity"]
    return {key: [per_layer[f"model.layers.{i}.{path}"] for i in range(blocks)] for key, path in OUTPUTS.items()}


def main() -> None:
    args = _arguments()
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=torch.float32)[:2]
    linears = get_adapter(model).prunable_linears(model)
    zeros = sum(int((lin.weight == 0).sum()) for lin in linears.values())
    total = sum(lin.weight.numel() for lin in linears.values())
    print(f"dense: {zeros:,} of {total:,} prunable weights are exact zeros ({zeros / total:.2%})")
    ids = load_calibration(tokenizer, samples=args.windows, seqlen=args.seqlen, seed=0, data_dir=args.data_dir)
    rms = output_rms(model, ids)
    runs = {path.parent.name: removed_by_block(json.loads(path.read_text()), len(rms["block"]))
            for path in args.reports}
    columns = [f"{name} {key}" for name, removed in runs.items() for key in removed]
    print("| block | RMS q_proj | RMS o_proj | RMS down_proj | RMS block | " + " | ".join(columns) + " |")
    print("|---" * (5 + len(columns)) + "|")
    for i in range(len(rms["block"])):
        shares = [f"{removed[key][i]:.2f}" for removed in runs.values() for key in removed]
        print(f"| {i} | {rms['q'][i]:.2f} | {rms['o'][i]:.2f} | {rms['down'][i]:.2f} | {rms['block'][i]:.1f} | "
              + " | ".join(shares) + " |")
    for name, removed in runs.items():
        for key, shares in removed.items():
            if max(shares) - min(shares) < 0.01:  # one share everywhere: ranks of ties say nothing
                print(f"{name}: {key} removed evenly ({min(shares):.2f}-{max(shares):.2f})")
                continue
            print(f"{name}: Spearman of {key} removed against the RMS of its output: {spearman(rms[key], shares):+.2f}")


if __name__ == "__main__":
    main()
