"""What a structured prune gains where people run models (issue 35), measured side by side in one run.

SmolLM2 (real weights) pruned by structured LLM Surgeon to each ``--kept`` fraction of its prunable
parameters; the dense model and every pruned one exported to GGUF at each ``--types``; then

* perplexity: each pruned folder in transformers (``eval``) and each GGUF file in llama.cpp
  (``eval --engine llama.cpp``) on the same first ``--eval-windows`` WikiText-2 test windows, the dense
  model beside them;
* speed: ``llm-surgeon speed`` of each pruned model against the dense one, in llama.cpp at each type and in
  transformers, pruned and dense alternated over ``--rounds`` rounds (medians and ratios);
* a 1B-shaped model with random weights (``--random-1b``), pruned by structured magnitude to the same
  sizes (speed needs no real weights), its llama.cpp f16 speed against its dense self.

Every step is a ``llm-surgeon`` command in its own process, exactly as a user runs it; a finished step's
output is read back instead of rerun, so a stopped run continues. Writes ``results.json`` in ``--work`` and
prints Markdown tables.

    python benchmarks/gguf_speed.py --data-dir ../shared/data --work runs/gguf
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "llm_surgeon"]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--work", default="runs/gguf", help="folder for every output; reruns resume here")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--kept", default="0.9,0.8,0.7", help="fractions of the prunable parameters kept")
    parser.add_argument("--types", default="f16,q8_0", help="GGUF types exported and timed")
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=10, help="first test windows of 2048 scored")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--generate", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--random-1b", action="store_true", help="also time a 1B-shaped random model")
    parser.add_argument("--stages", default="prune,export,ppl,speed",
                        help="which stages run (a stage needs the earlier ones' files)")
    return parser.parse_args()


def _run_json(command: list[str], cached: Path) -> dict:
    """Run one ``llm-surgeon ... --json`` command, keep its JSON in ``cached``; a kept answer is reused."""
    if cached.is_file():
        return json.loads(cached.read_text())
    print("$", " ".join(command[2:]), flush=True)
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result, indent=1))
    return result


def _percent(kept: float) -> str:
    return f"{round(kept * 100)}"


def prune_all(args, work: Path, kept: list[float]) -> dict[str, dict]:
    """One structured LLM Surgeon prune per size, each in its own folder."""
    reports = {}
    for fraction in kept:
        out = work / f"kept-{_percent(fraction)}"
        command = [*CLI, "prune", args.model, "--method", "surgeon", "--granularity", "structured",
                   "--sparsity", f"{1 - fraction:.2f}", "--shots", str(args.shots),
                   "--calib-samples", str(args.calib_samples), "--calib-seqlen", str(args.calib_seqlen),
                   "--seed", "0", "--out", str(out),
                   "--no-progress", "--json", *_data(args)]
        report_file = out / "report.json"
        if not report_file.is_file():
            print("$", " ".join(command[2:]), flush=True)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        reports[_percent(fraction)] = json.loads(report_file.read_text())
    return reports


def _data(args) -> list[str]:
    return ["--data-dir", args.data_dir] if args.data_dir else []


def sources(args, work: Path, kept: list[float]) -> dict[str, str]:
    """What is exported and timed: the dense model and each pruned folder, by label."""
    return {"dense": args.model, **{f"{_percent(k)}% kept": str(work / f"kept-{_percent(k)}") for k in kept}}


def export_all(args, work: Path, models: dict[str, str], types: list[str]) -> dict[str, dict]:
    exports = {}
    for label, model in models.items():
        for out_type in types:
            path = _gguf_path(work, label, out_type)
            exports[f"{label} {out_type}"] = _run_json(
                [*CLI, "export", model, "--out", str(path), "--type", out_type, "--json", "--no-progress"],
                path.with_suffix(".export.json"))
    return exports


def _gguf_path(work: Path, label: str, out_type: str) -> Path:
    return work / "gguf" / f"{label.split('%')[0]}-{out_type}.gguf"


def perplexities(args, work: Path, models: dict[str, str], types: list[str]) -> dict[str, dict]:
    """transformers' and llama.cpp's perplexity of every model on the same windows."""
    scored = {}
    windows = ["--max-windows", str(args.eval_windows), *_data(args), "--json", "--no-progress"]
    for label, model in models.items():
        scored[f"{label} transformers"] = _run_json([*CLI, "eval", model, *windows],
                                                    work / "ppl" / f"{label.split('%')[0]}-transformers.json")
        for out_type in types:
            path = _gguf_path(work, label, out_type)
            scored[f"{label} {out_type}"] = _run_json(
                [*CLI, "eval", str(path), "--engine", "llama.cpp", "--threads", str(args.threads), *windows],
                work / "ppl" / f"{path.stem}.json")
    return scored


def speeds(args, work: Path, models: dict[str, str], types: list[str]) -> dict[str, dict]:
    """Each pruned model against the dense one: llama.cpp at each type, then transformers."""
    timed = {}
    common = ["--prompt", str(args.prompt), "--generate", str(args.generate), "--rounds", str(args.rounds),
              "--threads", str(args.threads), "--json", "--no-progress"]
    for label in [name for name in models if name != "dense"]:
        for out_type in types:
            timed[f"{label} {out_type}"] = _run_json(
                [*CLI, "speed", str(_gguf_path(work, label, out_type)), "--against",
                 str(_gguf_path(work, "dense", out_type)), "--engine", "llama.cpp", *common],
                work / "speed" / f"{label.split('%')[0]}-{out_type}.json")
        timed[f"{label} transformers"] = _run_json(
            [*CLI, "speed", models[label], "--against", models["dense"], "--engine", "transformers", *common],
            work / "speed" / f"{label.split('%')[0]}-transformers.json")
    return timed


def random_1b(args, work: Path, kept: list[float]) -> dict[str, dict]:
    """A Llama-3.2-1B-shaped body (SmolLM2's tokenizer and vocabulary, so llama.cpp can read a tokenizer)
    with random weights, pruned by structured magnitude to each size, timed in llama.cpp at f16."""
    folder = work / "random-1b"
    if not (folder / "config.json").is_file():
        subprocess.run([sys.executable, __file__, "--make-random-1b", str(folder), args.model],
                       check=True)
    models = {"dense": str(folder)}
    for fraction in kept:
        out = work / f"random-1b-kept-{_percent(fraction)}"
        if not (out / "report.json").is_file():
            subprocess.run([*CLI, "prune", str(folder), "--method", "magnitude", "--granularity", "structured",
                            "--sparsity", f"{1 - fraction:.2f}", "--shots", "1", "--out", str(out),
                            "--no-progress", "--json", *_data(args)], check=True, stdout=subprocess.DEVNULL)
        models[f"{_percent(fraction)}% kept"] = str(out)
    export_all(args, work / "random-1b-gguf", models, ["f16"])
    timed = {}
    for label in [name for name in models if name != "dense"]:
        gguf = work / "random-1b-gguf"
        timed[label] = _run_json(
            [*CLI, "speed", str(_gguf_path(gguf, label, "f16")), "--against", str(_gguf_path(gguf, "dense", "f16")),
             "--engine", "llama.cpp", "--prompt", str(args.prompt), "--generate", str(args.generate),
             "--rounds", str(args.rounds), "--threads", str(args.threads), "--json", "--no-progress"],
            gguf / "speed" / f"{label.split('%')[0]}-f16.json")
    return timed


def make_random_1b(folder: str, model: str) -> None:
    """Save a Llama-3.2-1B-shaped model with random weights and the source model's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_surgeon.artifacts.loading import load_model_and_tokenizer

    _, tokenizer, _ = load_model_and_tokenizer(model)
    config = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=len(tokenizer), tie_word_embeddings=True,
                         max_position_embeddings=4096, rope_theta=500000.0,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _speed_row(label: str, engine: str, speed: dict, own_ppl: float | None, pruned_ppl: float | None) -> str:
    a, b, ratios = speed["a"], speed["b"], speed["ratios"]
    ppl = "–" if own_ppl is None else f"{own_ppl:.3f}"
    reference = "–" if pruned_ppl is None else f"{pruned_ppl:.3f}"
    return (f"| {label} | {engine} | {ppl} | {reference} | {a['size_bytes'] / 1e6:.1f} ({b['size_bytes'] / 1e6:.1f}) "
            f"| {a['prompt_tokens_per_s']:.1f} ({b['prompt_tokens_per_s']:.1f}) | "
            f"**{ratios['prompt_tokens_per_s']:.2f}x** "
            f"| {a['decode_tokens_per_s']:.1f} ({b['decode_tokens_per_s']:.1f}) | "
            f"**{ratios['decode_tokens_per_s']:.2f}x** "
            f"| {a['peak_rss_delta_bytes'] / 1e6:.0f} ({b['peak_rss_delta_bytes'] / 1e6:.0f}) |")


def tables(results: dict) -> str:
    """Markdown: each timed pair with its file's perplexity beside the pruned model's in transformers."""
    header = ("| model | engine | ppl of this file/model | ppl in transformers | size MB (dense) "
              "| prompt tok/s (dense) | prompt ratio | decode tok/s (dense) | decode ratio | peak MB (dense) |")
    lines = [header, "|---" * 10 + "|"]
    ppl = {key: value["ppl"] for key, value in results.get("ppl", {}).items()}
    for key, speed in results.get("speed", {}).items():
        label, engine = key.rsplit(" ", 1)
        lines.append(_speed_row(label, engine, speed, ppl.get(key), ppl.get(f"{label} transformers")))
    for key, speed in results.get("random_1b", {}).items():
        lines.append(_speed_row(f"random 1B, {key}", "f16", speed, None, None))
    dense = [f"{key}: {value:.3f}" for key, value in ppl.items() if key.startswith("dense")]
    return "\n".join(lines + ["", "dense perplexity: " + ", ".join(dense)])


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--make-random-1b":  # the child that builds the random model
        make_random_1b(sys.argv[2], sys.argv[3])
        return 0
    args = _arguments()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    kept = [float(k) for k in args.kept.split(",")]
    types = args.types.split(",")
    stages = set(args.stages.split(","))
    models = sources(args, work, kept)
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "threads": args.threads,
                     "settings": {k: v for k, v in vars(args).items() if k != "stages"}}
    if "prune" in stages:
        results["prune"] = {k: {"seconds": r["seconds"], "footprint": r.get("footprint")}
                            for k, r in prune_all(args, work, kept).items()}
    if "export" in stages:
        results["export"] = export_all(args, work, models, types)
    if "ppl" in stages:
        results["ppl"] = perplexities(args, work, models, types)
    if "speed" in stages:
        results["speed"] = speeds(args, work, models, types)
    if args.random_1b:
        results["random_1b"] = random_1b(args, work, kept)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
