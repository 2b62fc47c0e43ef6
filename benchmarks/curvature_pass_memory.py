"""Peak memory and time of one KFAC curvature pass (forward+backward with the factor hooks).

Measures in this process, so run it once per code version to compare, e.g. at two commits:

    LLM_SURGEON_DATA=../shared/data python benchmarks/curvature_pass_memory.py --label HEAD

Prints one JSON line: seconds, peak RSS (CPU) or peak allocated (CUDA), the trace of the
first layer's G (which must agree between versions that claim the same math), and beside the
measured growth over the loaded model the prediction of ``llm_surgeon.planning.memory`` for this pass:
raw factor sums plus the activations of one batch plus one chunk of logits.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from llm_surgeon.artifacts.report import peak_memory_mb
from llm_surgeon.curvature.collectors import CurvatureRequest, LocalCollector
from llm_surgeon.data.calibration import calibration_windows, resolve_data_dir
from llm_surgeon.models.adapters import get_adapter
from llm_surgeon.models.loading import load_model_and_tokenizer
from llm_surgeon.planning.memory import raw_factor_bytes, shot_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="a name for this code version in the output")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--attn-implementation", default=None, choices=["eager", "sdpa"],
                        help="attention kernel of the pass (None: the loader's choice)")
    args = parser.parse_args()
    model, tokenizer, _ = load_model_and_tokenizer(args.model, torch.float32, args.device)
    if args.attn_implementation:
        model.set_attn_implementation(args.attn_implementation)
    windows, _ = calibration_windows(tokenizer, args.samples, args.seqlen, 0, resolve_data_dir(args.data_dir))
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    loaded_mb = peak_memory_mb(args.device)
    start = time.perf_counter()
    collector = LocalCollector(batch_size=args.batch_size, progress=False)
    factors = collector.collect(model, adapter, linears, windows, CurvatureRequest(), seed=0)
    seconds = time.perf_counter() - start
    first = next(iter(factors.values())).unpacked()
    estimate = shot_memory(model, linears, len(adapter.blocks(model)), args.batch_size, args.seqlen,
                           full_factors=False, backward=True)
    raw_factors = raw_factor_bytes(linears, adapter.distinct_input_widths(model))
    predicted_mb = (raw_factors + estimate.activations + estimate.logits) / 2**20
    print(json.dumps({"label": args.label, "seconds": round(seconds, 1), "peak_mb_after_load": round(loaded_mb),
                      "peak_mb": round(peak_memory_mb(args.device)), "G_trace_first_layer": float(first.G.trace()),
                      "windows": f"{args.samples} x {args.seqlen}", "batch_size": args.batch_size,
                      "attention": model.config._attn_implementation,
                      "measured_growth_mb": round(peak_memory_mb(args.device) - loaded_mb),
                      "predicted_growth_mb": round(predicted_mb)}))


if __name__ == "__main__":
    main()
