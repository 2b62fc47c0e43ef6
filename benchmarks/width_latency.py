"""Latency of a structurally pruned model with FFN widths rounded to a multiple (``--width-multiple``) against
the same prune with widths as the costs fall, and against the dense model, measured side by side in one run.

One LLM Surgeon structured shot per variant, from the same dense model and the same calibration windows; each
result is compacted, then every model's forward latency (median of ``--repeats`` forwards of one
``--tokens``-token input, after a warm-up) is measured in turns, ``--rounds`` times, so that a drift of the
machine hits every variant alike. Perplexity on the first ``--eval-windows`` test windows shows what the
rounding costs in quality. Prints one JSON object and a Markdown table.

    python benchmarks/width_latency.py --model smollm2-135m --kept 0.8 --multiple 64 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


def latency_ms(model, ids: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    from llm_surgeon import PruneConfig, evaluate, load_calibration, prune
    from llm_surgeon.artifacts.compaction import compact
    from llm_surgeon.evaluation.footprint import parameter_count
    from llm_surgeon.models.adapters import get_adapter
    from llm_surgeon.models.loading import load_model_and_tokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--kept", type=float, default=0.8, help="fraction of prunable parameters kept")
    parser.add_argument("--multiple", type=int, default=64)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=512, help="tokens of the timed forward")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval-windows", type=int, default=20)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    dense, tokenizer, _ = load_model_and_tokenizer(args.model)
    windows = load_calibration(tokenizer, args.samples, args.seqlen, 0, args.data_dir)
    models = {"dense": dense}
    widths, seconds = {}, {}
    for label, multiple in (("as the costs fall", 1), (f"multiple of {args.multiple}", args.multiple)):
        model = copy.deepcopy(dense)
        config = PruneConfig(granularity="structured", sparsity=1 - args.kept, shots=args.shots, batch_size=1,
                             calib_samples=args.samples, calib_seqlen=args.seqlen, width_multiple=multiple)
        start = time.perf_counter()
        result = prune(model, windows, config, progress=False)
        seconds[label] = time.perf_counter() - start
        shapes = compact(model, result.masks, get_adapter(model))
        widths[label] = [s.ffn_width for s in shapes.blocks]
        models[label] = model.eval()

    ids = torch.randint(0, dense.config.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    timings = {label: [] for label in models}
    for _ in range(args.rounds):
        for label, model in models.items():
            timings[label].append(latency_ms(model, ids, args.repeats))
    rows = {}
    for label, model in models.items():
        ppl = evaluate(model, tokenizer, args.data_dir, 2048, args.eval_windows, progress=False).ppl
        rows[label] = {"latency_ms": statistics.median(timings[label]), "latency_ms_rounds": timings[label],
                       "parameters": parameter_count(model), "ppl": ppl, "ffn_widths": widths.get(label),
                       "prune_seconds": seconds.get(label)}
    print(json.dumps({"args": vars(args), "threads": torch.get_num_threads(), "rows": rows}))
    print(f"\n| model | FFN widths (min-max, distinct) | parameters | forward {args.tokens} tokens ms | "
          f"ppl (first {args.eval_windows} windows) |\n|---|---|---|---|---|")
    for label, row in rows.items():
        w = row["ffn_widths"]
        shown = "dense" if w is None else f"{min(w)}-{max(w)}, {len(set(w))} distinct"
        print(f"| {label} | {shown} | {row['parameters']:,} | {row['latency_ms']:.1f} | {row['ppl']:.2f} |")


if __name__ == "__main__":
    main()
