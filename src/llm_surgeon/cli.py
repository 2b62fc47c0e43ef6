"""``llm-surgeon``: a thin command line over :mod:`llm_surgeon.api`."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from llm_surgeon.config import PruneConfig
from llm_surgeon.errors import ConfigError, LLMSurgeonError
from llm_surgeon.methods import method_names, methods_help


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="folder holding wikitext-2-raw/wiki.{train,valid,test}.raw "
                             "(default: $LLM_SURGEON_DATA, else the Hugging Face hub)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_prune_flags(parser: argparse.ArgumentParser) -> None:
    d = PruneConfig()
    parser.add_argument("--method", default=d.method, choices=method_names(), metavar="METHOD",
                        help=f"pruning method (default: {d.method}). {methods_help()}")
    parser.add_argument("--granularity", default=d.granularity, help="unstructured, structured, or N:M such as 2:4")
    parser.add_argument("--sparsity", type=float, default=d.sparsity, help="target fraction of zeros (unstructured)")
    parser.add_argument("--shots", type=int, default=d.shots)
    parser.add_argument("--calib-samples", type=int, default=d.calib_samples)
    parser.add_argument("--calib-seqlen", type=int, default=d.calib_seqlen)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--damp-g", type=float, default=d.damp_g, help="damping of G, relative to its mean diagonal")
    parser.add_argument("--damp-a", type=float, default=d.damp_a, help="damping of A, relative to its mean diagonal")
    parser.add_argument("--fisher", default=d.fisher, choices=["empirical", "true"])
    parser.add_argument("--magnitude-scope", default=d.magnitude_scope, choices=["global", "layer"])
    parser.add_argument("--update-iterations", type=int, default=d.update_iterations,
                        help="max PCG iterations of the correlated update per layer and shot")
    parser.add_argument("--update-tolerance", type=float, default=d.update_tolerance)
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="calibration windows per pass")
    parser.add_argument("--sparsegpt-damp", type=float, default=d.sparsegpt_damp,
                        help="SparseGPT dampening, fraction of the mean diagonal of X Xᵀ")
    parser.add_argument("--lora-rank", type=int, default=d.lora_rank,
                        help="rank of a low-rank correction trained on the calibration text after every shot "
                             "and absorbed with the masks kept (default 0: off)")
    parser.add_argument("--lora-lr", type=float, default=d.lora_lr, help="Adam learning rate of the correction")
    parser.add_argument("--lora-epochs", type=int, default=d.lora_epochs,
                        help="passes over the calibration windows per correction")


def _config_from_args(args: argparse.Namespace) -> PruneConfig:
    return PruneConfig(
        method=args.method, granularity=args.granularity, sparsity=args.sparsity, shots=args.shots,
        calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, seed=args.seed,
        damp_g=args.damp_g, damp_a=args.damp_a, fisher=args.fisher, magnitude_scope=args.magnitude_scope,
        update_iterations=args.update_iterations, update_tolerance=args.update_tolerance,
        batch_size=args.batch_size, sparsegpt_damp=args.sparsegpt_damp,
        lora_rank=args.lora_rank, lora_lr=args.lora_lr, lora_epochs=args.lora_epochs,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-surgeon",
        description="Prune Hugging Face causal LMs with LLM Surgeon and evaluate them under the standard protocol.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    prune = sub.add_parser("prune", help="prune a model and save it with a report.json")
    prune.add_argument("model", help="hub id, local folder, .gguf file, or the alias smollm2-135m")
    prune.add_argument("--out", required=True, help="output folder (a save_pretrained checkpoint + report.json)")
    _add_prune_flags(prune)
    prune.add_argument("--eval", action="store_true", help="evaluate WikiText-2 test perplexity after pruning")
    prune.add_argument("--eval-seqlen", type=int, default=2048)
    prune.add_argument("--eval-max-windows", type=int, default=None, help="evaluate only the first K windows")
    prune.add_argument("--overwrite", action="store_true", help="replace an output folder that holds another run")
    prune.add_argument(
        "--resume", action="store_true",
                       help="continue from the last complete checkpoint in --out (the same command again does too)",
    )
    prune.add_argument("--semi-structured-export", action="store_true",
                       help="with 2:4 on a CUDA GPU and fp16/bf16: evaluate with torch semi-structured sparse weights")
    _add_data_flags(prune)

    bench = sub.add_parser("bench", help="run a grid of methods x granularities x sparsities under one protocol")
    bench.add_argument("model", help="hub id, local folder, .gguf file, or the alias smollm2-135m")
    bench.add_argument("--out", required=True, help="folder for results.json, results.md, results.png and runs/")
    bench.add_argument("--methods", default="magnitude,wanda,sparsegpt,lobd,kobd,surgeon")
    bench.add_argument("--granularities", default="unstructured")
    bench.add_argument("--sparsities", default="0.5", help="comma-separated (unstructured runs)")
    bench.add_argument("--shots", type=int, default=PruneConfig().shots, help="shots of multi-shot methods")
    bench.add_argument("--calib-samples", type=int, default=PruneConfig().calib_samples)
    bench.add_argument("--calib-seqlen", type=int, default=PruneConfig().calib_seqlen)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--eval-seqlen", type=int, default=2048)
    bench.add_argument("--eval-max-windows", type=int, default=None)
    _add_data_flags(bench)

    ev = sub.add_parser("eval", help="WikiText-2 test perplexity of a model or pruned folder")
    ev.add_argument("model", help="hub id, local folder, .gguf file, or the alias smollm2-135m")
    ev.add_argument("--dataset", default="wikitext2", choices=["wikitext2"])
    ev.add_argument("--seqlen", type=int, default=2048)
    ev.add_argument("--max-windows", type=int, default=None)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    _add_data_flags(ev)
    return parser


def _run(args: argparse.Namespace) -> int:
    from llm_surgeon import api

    if args.command == "prune":
        options = api.RunOptions(
            out=args.out, data_dir=args.data_dir, eval=args.eval, eval_seqlen=args.eval_seqlen,
            eval_max_windows=args.eval_max_windows, device=args.device, dtype=args.dtype,
            overwrite=args.overwrite, progress=not args.no_progress,
            semi_structured_export=args.semi_structured_export, resume=args.resume,
        )
        report = api.run_prune(args.model, _config_from_args(args), options)
        summary = {k: report[k] for k in ("method", "granularity", "target_sparsity", "achieved_sparsity", "seconds")}
        if report["ppl"]:
            summary["ppl"] = report["ppl"]["wikitext2"]
        print(json.dumps(summary))
        print(f"saved pruned model and report.json to {args.out}", file=sys.stderr)
        return 0
    if args.command == "bench":
        return _run_bench(args)
    result = api.run_eval(args.model, args.data_dir, args.seqlen, args.max_windows, args.device, args.dtype,
                          progress=not args.no_progress)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.dataset} perplexity {result['ppl']:.4f} ({result['windows']} windows of {result['seqlen']})")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm_surgeon import bench

    protocol = bench.Protocol(
        model=args.model, data_dir=args.data_dir, calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen,
        seed=args.seed, eval_seqlen=args.eval_seqlen, eval_max_windows=args.eval_max_windows, shots=args.shots,
        device=args.device, dtype=args.dtype,
    )
    try:
        sparsities = [float(s) for s in args.sparsities.split(",")]
    except ValueError as exc:
        raise ConfigError(f"--sparsities must be comma-separated numbers, got {args.sparsities!r}") from exc
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    specs = bench.grid(args.methods.split(","), args.granularities.split(","), sparsities, log=log)
    out = Path(args.out)
    results = bench.run_bench(protocol, specs, out, log=log)
    bench.write_outputs(results, out)
    print(bench.render_markdown(results))
    failed = sum(key not in results["runs"] for key in [bench.DENSE, *(spec.key for spec in specs)])
    if failed:
        print(f"llm-surgeon: error: {failed} run(s) failed; see the logs in {out / 'runs'}", file=sys.stderr)
        return 2
    return 0


def _interrupted_message(args: argparse.Namespace) -> str:
    if args.command != "prune":
        return "llm-surgeon: interrupted"
    from pathlib import Path

    from llm_surgeon.checkpoint import list_checkpoints

    try:
        checkpoints = list_checkpoints(Path(args.out))
    except LLMSurgeonError:
        checkpoints = []
    if not checkpoints:
        return "llm-surgeon: interrupted before the first shot finished; nothing to resume, run the command again"
    return (f"llm-surgeon: interrupted; last complete checkpoint: {checkpoints[-1].path} "
            f"(shot {checkpoints[-1].shot}); run the same command again (or add --resume) to continue")


def _terminate_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        return _run(args)
    except LLMSurgeonError as exc:
        print(f"llm-surgeon: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted_message(args), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
