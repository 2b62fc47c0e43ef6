"""Healing's learning rate, kind and block-output loss, side by side on one pruned model (a sweep to choose
defaults, not a result).

The model is pruned once (LLM Surgeon, structured, one shot); the dense model's predictions on the healing
windows are computed once before; then every setting heals a fresh copy of the same pruned weights and is
scored on the first ``--eval-windows`` WikiText-2 test windows. Printed as a Markdown table; the JSON beside.

    python benchmarks/heal_sweep.py --data-dir ../shared/data --out runs/heal-sweep \\
        --settings 0:2e-5,0:5e-5,0:2e-4,16:1e-3,0:2e-4:1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=os.environ.get("LLM_SURGEON_DATA"))
    parser.add_argument("--out", default="runs/heal-sweep")
    parser.add_argument("--sparsity", type=float, default=0.2)
    parser.add_argument("--granularity", default="structured")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--heal-tokens", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eval-windows", type=int, default=10)
    parser.add_argument("--settings", default="0:5e-5,0:2e-4",
                        help="comma-separated RANK:LR[:BLOCK_WEIGHT] (rank 0: every kept weight trains; the block "
                             "weight, default 0, as --heal-block-weight)")
    parser.add_argument("--heal-blocks", type=int, default=4, help="as prune's, for settings with a block weight")
    return parser.parse_args()


def main() -> int:
    from llm_surgeon import PruneConfig, load_model_and_tokenizer, prune
    from llm_surgeon.api import evaluate
    from llm_surgeon.data.calibration import calibration_windows
    from llm_surgeon.healing.targets import heal_windows, matched_blocks, teacher_targets
    from llm_surgeon.healing.train import HealSettings, heal_model
    from llm_surgeon.models.adapters import get_adapter

    args = _arguments()
    settings = [(int(rank), float(lr), float(weight[0]) if weight else 0.0)
                for rank, lr, *weight in (s.split(":") for s in args.settings.split(","))]
    config = PruneConfig(method="surgeon", granularity=args.granularity, sparsity=args.sparsity, shots=1,
                         calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen,
                         batch_size=args.batch_size, heal=True, heal_tokens=args.heal_tokens,
                         heal_block_weight=max(w for *_, w in settings), heal_blocks=args.heal_blocks).validate()
    model, tokenizer, _ = load_model_and_tokenizer(args.model, torch.float32, "cpu")
    adapter = get_adapter(model)
    data_dir = Path(args.data_dir) if args.data_dir else None
    windows = heal_windows(tokenizer, config, data_dir)
    blocks = matched_blocks(config, len(adapter.blocks(model)))
    t0 = time.perf_counter()
    train = teacher_targets(model, adapter, windows.train, config.heal_topk, args.batch_size, blocks=blocks)
    held = teacher_targets(model, adapter, windows.held_out, config.heal_topk, args.batch_size, blocks=blocks)
    teacher_s = time.perf_counter() - t0
    dense = evaluate(model, tokenizer, data_dir, 2048, args.eval_windows, True).ppl
    calibration, _ = calibration_windows(tokenizer, args.calib_samples, args.calib_seqlen, 0, data_dir)
    result = prune(model, calibration, config)
    pruned = {k: v.clone() for k, v in model.state_dict().items()}
    before = evaluate(model, tokenizer, data_dir, 2048, args.eval_windows, True).ppl
    linears = adapter.prunable_linears(model)
    rows = []
    for rank, lr, weight in settings:
        model.load_state_dict(pruned)
        record = heal_model(model, adapter, linears, result.masks, windows.train, train, windows.held_out, held,
                            HealSettings(rank, lr, args.batch_size, 0, block_weight=weight, blocks=blocks))
        after = evaluate(model, tokenizer, data_dir, 2048, args.eval_windows, True).ppl
        rows.append({"ppl": after, **record.to_dict()})
        print(f"rank {rank} lr {lr} block weight {weight:g}: ppl {before:.2f} -> {after:.2f}, KL "
              f"{record.kl_before:.4f} -> {record.kl_after:.4f}, {record.seconds:.0f} s", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"args": vars(args), "dense_ppl": dense, "pruned_ppl": before, "teacher_seconds": teacher_s,
               "rows": rows}
    (out / "sweep.json").write_text(json.dumps(summary, indent=1))
    print(f"dense {dense:.2f}; pruned {before:.2f} ({args.eval_windows} windows); dense predictions {teacher_s:.0f} s")
    print(f"blocks matched where a setting has a block weight: {list(blocks)}")
    print("| heal rank | lr | block weight | ppl after | KL held out before -> after | block error held out | steps | "
          "healing s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        error = (f"{r['block_error_before']:.4f} -> {r['block_error_after']:.4f}" if r["block_error_before"]
                 is not None else "–")
        print(f"| {r['rank']} | {r['lr']:g} | {r['block_weight']:g} | {r['ppl']:.2f} | {r['kl_before']:.4f} -> "
              f"{r['kl_after']:.4f} | {error} | {r['steps']} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
