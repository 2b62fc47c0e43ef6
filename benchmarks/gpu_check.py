"""The prepared check for a machine with one CUDA GPU and no network: under 8 minutes, one JSON.

    PYTHONPATH=src python benchmarks/gpu_check.py --out $OUT/gpu_check.json

It needs only this repository and torch, transformers, accelerate, safetensors and pytest (no model files,
no data files, no gguf). In order, each step recorded as it ends (a step that fails is recorded with its
error and the next one runs):

1. the test suite's CUDA-marked tests (``pytest -m cuda``);
2. the bf16 matmul throughput of the GPU;
3. a Llama-3-8B-shaped model (``benchmarks/configs/llama-3-8b.json``) built on the GPU with random bf16
   weights, 128 x 2048 random token ids for calibration, then one LLM Surgeon shot at 50% unstructured
   and, from the dense weights again, one at 2:4. The dense model's curvature is the same for both, so
   the 2:4 shot replays the factors of the first pass when they are still held (one block group) rather
   than spend minutes collecting them again; the JSON says so. Per shot: curvature / costs / update
   seconds, peak GPU memory beside the prediction the memory check made, and the curvature pass's
   achieved TFLOP/s (the plan's FLOP count of the pass and the statistics over the measured seconds)
   against the matmul throughput.
4. the structured model's speed in transformers: the same 8B-shaped model (bf16, random weights) dense, then
   pruned by structured magnitude to 80% and 70% of its prunable parameters kept and compacted (speed needs no
   real weights); prompt and greedy decode tokens/s with the KV cache, medians of 3 rounds, and the ratios
   to dense.

On a CPU with a small config it is a smoke test (the test suite runs it so):

    python benchmarks/gpu_check.py --device cpu --config tiny.json --samples 4 --seqlen 32 --skip-tests --out x.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


class Recorder:
    """The JSON being built, rewritten atomically after every step so a stopped check keeps what it measured."""

    def __init__(self, path: Path):
        self.path, self.data, self.started = path, {}, time.perf_counter()

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.data["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

    def step(self, key: str, fn, *args):
        """Run one step; its result, or its error in one line plus the traceback's tail, goes under ``key``."""
        try:
            value = fn(*args)
        except Exception as exc:  # a failed step is a result too; the next step still runs
            value = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0],
                     "traceback": traceback.format_exc().splitlines()[-6:]}
        self.put(key, value)
        return value


def environment(device: str) -> dict:
    import transformers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    gpu = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None
    return {"device": device, "gpu": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "commit": commit.stdout.strip() or None}


def cuda_tests(timeout_s: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                          "--continue-on-collection-errors", "tests"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout_s)
    lines = run.stdout.strip().splitlines()
    return {"exit": run.returncode, "summary": lines[-1] if lines else run.stderr[-300:],
            "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))][:20],
            "seconds": round(time.perf_counter() - start, 1)}


def matmul_tflops(device: str, dtype: torch.dtype, size: int, seconds: float = 2.0) -> float:
    a = torch.randn(size, size, dtype=dtype, device=device)
    a @ a
    _synchronize(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        runs += 1
        if runs % 10 == 0:
            _synchronize(device)
    _synchronize(device)
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e12


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def build_model(config_path: Path, device: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**json.loads(config_path.read_text()))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def replay_collector(inner):
    """A collector that collects once per set of layers and hands the same factors back afterwards (the
    dense model's curvature, for a second shot from the same dense weights)."""
    from llm_surgeon.curvature.collectors import CurvatureCollector

    class ReplayCollector(CurvatureCollector):
        def __init__(self):
            self.inner, self.saved, self.replayed = inner, {}, False

        def collect(self, model, adapter, linears, windows, request, seed, label=""):
            key = (tuple(linears), request.with_gradients, request.diagonal_only, request.from_block)
            self.replayed = key in self.saved
            if not self.replayed:
                self.saved[key] = self.inner.collect(model, adapter, linears, windows, request, seed, label)
            return self.saved[key]

        def placement(self):
            return self.inner.placement()

        def routed_rows(self):
            return self.inner.routed_rows()

    return ReplayCollector()


def one_shot(model, adapter, linears, windows, granularity: str, args, collector, scratch: str) -> dict:
    from llm_surgeon import PruneConfig
    from llm_surgeon.api import memory_fit
    from llm_surgeon.artifacts.report import peak_memory_mb
    from llm_surgeon.curvature.layout import MemoryLayout
    from llm_surgeon.engine.pruner import prune_model, setup
    from llm_surgeon.planning.plan import shot_flops

    config = PruneConfig(granularity=granularity, sparsity=0.5, shots=1, calib_samples=args.samples,
                         calib_seqlen=args.seqlen, batch_size=args.batch_size,
                         update_iterations=args.update_iterations)
    parts = setup(model, config, adapter)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    fit = memory_fit(model, adapter, parts, config, args.device)
    collector.inner.batch_size = fit.batch_size  # lowered by the fit when the requested batch does not fit
    layout = MemoryLayout(None, fit.block_groups, scratch_dir=scratch)
    if torch.device(args.device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(args.device)
    result = prune_model(model, windows, config, progress=False, adapter=adapter, layout=layout,
                         collector=collector, parts=parts)
    record = result.shots[-1]
    flops = shot_flops(model, adapter, linears, config, adapter.distinct_input_widths(model))
    pass_flops = flops["pass"] + flops["statistics"]
    replayed = collector.replayed
    return {"granularity": granularity, "achieved_sparsity": round(record.achieved_sparsity, 6),
            "nm_valid": (result.nm_validation or {}).get("valid"), "block_groups": layout.block_groups,
            "batch_size": fit.batch_size, "batch_lowered": fit.batch_lowered, "curvature_replayed": replayed,
            "seconds": {"curvature": round(record.seconds_curvature, 2), "costs": round(record.seconds_costs, 2),
                        "update": round(record.seconds_update, 2)},
            "update_iterations_mean": record.update_iterations_mean,
            "peak_mb": round(peak_memory_mb(args.device)),
            "predicted_peak_mb": round(weights_mb + fit.memory.total / 2**20),
            "curvature_flops": pass_flops,
            "curvature_tflops": None if replayed else float(f"{pass_flops / record.seconds_curvature / 1e12:.4g}")}


def surgeon_shots(args, rec: Recorder) -> dict:
    from llm_surgeon.curvature.collectors import LocalCollector
    from llm_surgeon.models.adapters import get_adapter

    start = time.perf_counter()
    model = build_model(args.config, args.device, torch.bfloat16)
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    windows = torch.randint(0, model.config.vocab_size, (args.samples, args.seqlen),
                            generator=torch.Generator().manual_seed(0))
    dense = {name: lin.weight.detach().to("cpu", copy=True) for name, lin in linears.items()}
    built = {"config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
             "parameters": sum(p.numel() for p in model.parameters()), "dtype": "bfloat16",
             "calibration": f"{args.samples} x {args.seqlen} random token ids",
             "build_seconds": round(time.perf_counter() - start, 1)}
    rec.put("model", built)
    collector = replay_collector(LocalCollector(args.batch_size, progress=False))
    shots = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        for granularity in ("unstructured", "2:4"):
            left = args.deadline_s - (time.perf_counter() - rec.started)
            if shots and "seconds" in shots[-1] and left < 1.5 * sum(shots[-1]["seconds"].values()):
                shots.append({"granularity": granularity, "skipped": f"{left:.0f} s left of --deadline-s"})
                break
            with torch.no_grad():
                for name, lin in linears.items():
                    lin.weight.copy_(dense[name])
            shots.append(rec.step("_shot", one_shot, model, adapter, linears, windows, granularity, args, collector,
                                  scratch))
            rec.put("shots", shots)
    rec.data.pop("_shot", None)
    return built


def decode_speed(model, prompt_tokens: int, new_tokens: int, device: str, rounds: int = 3) -> dict:
    """Prompt and greedy decode tokens/s in transformers (KV cache, last-position logits), medians of rounds."""
    import statistics

    ids = torch.randint(0, model.config.vocab_size, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    prompt_speeds, decode_speeds = [], []
    with torch.inference_mode():
        model(ids[:, :16], use_cache=True, logits_to_keep=1)  # warm-up
        for _ in range(rounds):
            _synchronize(device)
            start = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            _synchronize(device)
            prompt_done = time.perf_counter()
            for _ in range(new_tokens):
                out = model(token, past_key_values=out.past_key_values, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            _synchronize(device)
            prompt_speeds.append(prompt_tokens / (prompt_done - start))
            decode_speeds.append(new_tokens / (time.perf_counter() - prompt_done))
    return {"prompt_tokens_per_s": round(statistics.median(prompt_speeds), 1),
            "decode_tokens_per_s": round(statistics.median(decode_speeds), 1)}


def structured_speed(args, rec: Recorder) -> dict:
    """The model dense and structurally pruned (magnitude, compacted) to 80% and 70% kept: speed and ratios."""
    from llm_surgeon import PruneConfig, prune
    from llm_surgeon.artifacts.compaction import compact
    from llm_surgeon.models.adapters import get_adapter

    found: dict[str, dict] = {}
    for kept in (1.0, 0.8, 0.7):
        model = build_model(args.config, args.device, torch.bfloat16)
        if kept < 1.0:
            adapter = get_adapter(model)
            config = PruneConfig(method="magnitude", granularity="structured", sparsity=round(1 - kept, 2), shots=1)
            compact(model, prune(model, None, config, progress=False, adapter=adapter).masks, adapter)
        row = {"parameters": sum(p.numel() for p in model.parameters()),
               **decode_speed(model, args.speed_prompt, args.speed_generate, args.device)}
        dense = found.get("100%")
        if dense is not None:
            row.update({f"{key}_ratio": round(row[key] / dense[key], 3)
                        for key in ("prompt_tokens_per_s", "decode_tokens_per_s")})
        found[f"{kept:.0%}"] = row
        summary = {"prompt_tokens": args.speed_prompt, "new_tokens": args.speed_generate, "dtype": "bfloat16",
                   "pruned_by": "structured magnitude, compacted", "kept": found}
        rec.put("structured_speed", summary)  # what is measured so far, should a later size fail
        del model
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", type=Path, default=REPO / "benchmarks" / "configs" / "llama-3-8b.json")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=2, help="windows per micro-batch of the curvature pass")
    parser.add_argument("--update-iterations", type=int, default=20)
    parser.add_argument("--deadline-s", type=float, default=450.0,
                        help="the 2:4 shot is skipped when less time is left than the first shot's 1.5x")
    parser.add_argument("--tests-timeout-s", type=int, default=120)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--speed-prompt", type=int, default=512, help="prompt tokens of the structured speed step")
    parser.add_argument("--speed-generate", type=int, default=128, help="tokens generated in that step")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    rec = Recorder(args.out)
    rec.put("environment", environment(args.device))
    if not args.skip_tests:
        rec.step("cuda_tests", cuda_tests, args.tests_timeout_s)
    size = 8192 if torch.device(args.device).type == "cuda" else 512
    rec.step("matmul_bf16_tflops", lambda: float(f"{matmul_tflops(args.device, torch.bfloat16, size):.4g}"))
    rec.step("surgeon", surgeon_shots, args, rec)
    rec.step("structured_speed", structured_speed, args, rec)
    print(json.dumps(rec.data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
