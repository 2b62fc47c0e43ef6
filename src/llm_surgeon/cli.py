"""``llm-surgeon``: a thin command line over :mod:`llm_surgeon.api`.

Every flag has a one-line help with its default; method and family lists come from the
registries. Mistakes are one ``llm-surgeon: error: ...`` line and exit code 2, never a usage
block or a traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from llm_surgeon.artifacts.formats import save_format_names
from llm_surgeon.config import PruneConfig
from llm_surgeon.errors import ConfigError, LLMSurgeonError
from llm_surgeon.methods import NM_COSTS, STRUCTURE_COSTS, UPDATE_SOLVERS, UPDATE_STARTS, method_names, methods_help
from llm_surgeon.models.adapters import supported_model_types
from llm_surgeon.runtime.allocator import release_freed_memory

DTYPE_CHOICES = ["float32", "bfloat16", "float16"]


class DefaultsFormatter(argparse.HelpFormatter):
    """Every optional flag's help ends with its default; required ones and positionals need none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.option_strings and not action.required and action.default is not argparse.SUPPRESS:
            help_text += " (default: %(default)s)"
        return help_text


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (with a pointer to ``--help``) instead of the usage block."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"llm-surgeon: error: {message} (see '{self.prog} --help')\n")


def _model_help() -> str:
    return ("hub id, local folder, .gguf file, or the alias smollm2-135m; families: "
            + ", ".join(supported_model_types()))


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="folder holding the named text sets: wikitext-2-raw/, ptb/, c4/ "
                             "(None: $LLM_SURGEON_DATA, else WikiText-2 from the Hugging Face hub)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES, help="weights' dtype while pruning")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_method_flags(parser: argparse.ArgumentParser) -> None:
    d = PruneConfig()
    parser.add_argument("--method", default=d.method, choices=method_names(), metavar="METHOD",
                        help=f"pruning method, one of: {methods_help()}")
    parser.add_argument("--granularity", default=d.granularity, help="unstructured, structured, or N:M such as 2:4")
    parser.add_argument("--sparsity", type=float, default=d.sparsity,
                        help="target fraction of zeros (unstructured) or of prunable parameters removed (structured)")
    parser.add_argument("--shots", type=int, default=d.shots, help="shots over which the sparsity rises")
    parser.add_argument("--damp-g", type=float, default=d.damp_g, help="damping of G, relative to its mean diagonal")
    parser.add_argument("--damp-a", type=float, default=d.damp_a, help="damping of A, relative to its mean diagonal")
    parser.add_argument("--fisher", default=d.fisher, choices=["empirical", "true"],
                        help="labels of the curvature pass: the data's (empirical) or sampled from the model (true)")
    parser.add_argument("--magnitude-scope", default=d.magnitude_scope, choices=["global", "layer"],
                        help="magnitude: one threshold across layers, or the same fraction in every layer")
    parser.add_argument("--update-iterations", type=int, default=d.update_iterations,
                        help="max PCG iterations of the correlated update per layer and shot")
    parser.add_argument("--update-tolerance", type=float, default=d.update_tolerance,
                        help="PCG stops when the preconditioned residual falls below this fraction of its start")
    parser.add_argument("--update-start", default=d.update_start, choices=UPDATE_STARTS,
                        help="where the correlated update starts: the sum of the removed weights' single-weight OBS "
                             "updates (independent), or the removed weights zeroed")
    parser.add_argument("--update-solver", default=d.update_solver, choices=UPDATE_SOLVERS,
                        help="how the correlated update is solved: PCG on the kept weights (4 matmuls a step), or CG "
                             "on the removed weights' multipliers (2 matmuls a step; a research option, worse in a "
                             "real run)")
    parser.add_argument("--nm-costs", default=d.nm_costs, choices=NM_COSTS,
                        help="N:M surgeon: price a group by the N weights' joint OBS cost, their inputs' correlation "
                             "counted (joint, the default), or by its N cheapest single-weight costs summed "
                             "(independent, the paper's)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="calibration windows per forward/backward pass (sets the activation memory)")
    parser.add_argument("--sparsegpt-damp", type=float, default=d.sparsegpt_damp,
                        help="SparseGPT dampening, fraction of the mean diagonal of X Xᵀ")
    parser.add_argument("--lora-rank", type=int, default=d.lora_rank,
                        help="rank of a low-rank correction trained on the calibration text after every shot "
                             "and absorbed with the masks kept (0: off)")
    parser.add_argument("--lora-lr", type=float, default=d.lora_lr, help="Adam learning rate of the correction")
    parser.add_argument("--lora-epochs", type=int, default=d.lora_epochs,
                        help="passes over the calibration windows per correction")
    parser.add_argument("--reconstruct", action="store_true",
                        help="after every shot, re-fit each pruned layer's kept weights to the dense model's outputs "
                             "(layer-wise least squares on the calibration windows, masks kept)")
    parser.add_argument("--reconstruct-iterations", type=int, default=d.reconstruct_iterations,
                        help="conjugate-gradient steps of each layer's reconstruction")
    parser.add_argument("--structure-costs", default=d.structure_costs, choices=STRUCTURE_COSTS,
                        help="structured surgeon: price and update only the output projection's columns, the rows "
                             "that fed them zeroed (outputs), or every member of a structure (all, the paper's)")
    parser.add_argument("--width-multiple", type=int, default=d.width_multiple, metavar="K",
                        help="structured: every block keeps a multiple of K FFN neurons (e.g. 64 for GEMM-friendly "
                             "shapes), chosen inside the global selection (1: widths as the costs fall)")
    parser.add_argument("--max-layer-sparsity", type=float, default=d.max_layer_sparsity, metavar="FRACTION",
                        help="unstructured, global threshold: no layer loses more than this fraction of its weights "
                             "(1.0: no cap, the paper's allocation)")
    parser.add_argument("--prune-unrouted", action="store_true",
                        help="mixture of experts: prune experts that received no calibration token by magnitude "
                             "(default: leave them dense; N:M then refuses)")


def _add_calibration_flags(parser: argparse.ArgumentParser, samples: int, seqlen: int) -> None:
    parser.add_argument("--calib-samples", type=int, default=samples, help="calibration windows")
    parser.add_argument("--calib-seqlen", type=int, default=seqlen, help="tokens per calibration window")
    parser.add_argument("--seed", type=int, default=PruneConfig().seed,
                        help="seed of the calibration draw and of sampled labels")
    parser.add_argument("--calib-data", default=PruneConfig().calib_data, metavar="SET_OR_FILE",
                        help="calibration text: wikitext2, ptb or c4 in --data-dir (train split, else valid), or a "
                             ".txt/.jsonl/.json/.parquet file (optionally .gz)")
    parser.add_argument("--text-field", default=PruneConfig().text_field,
                        help="field of JSON-lines/Parquet records that holds the text")


def _add_eval_flags(parser: argparse.ArgumentParser, prefix: str) -> None:
    parser.add_argument(f"--{prefix}seqlen", type=int, default=2048, help="tokens per evaluation window")
    parser.add_argument(f"--{prefix}max-windows", type=int, default=None,
                        help="evaluate only the first K windows (None: all; c4 scores at most 256)")
    if prefix:
        parser.add_argument(f"--{prefix}datasets", default="wikitext2", metavar="SETS",
                            help="comma-separated evaluation sets: wikitext2, ptb, c4 in --data-dir, or text, "
                                 "JSON-lines or Parquet files (records' --text-field)")


def _add_task_flags(parser: argparse.ArgumentParser, flag: str) -> None:
    parser.add_argument(flag, default="", metavar="TASKS",
                        help="comma-separated lm-evaluation-harness tasks for zero-shot accuracy, e.g. "
                             "piqa,arc_easy (needs pip install 'llm-surgeon[eval]'; empty: none)")
    parser.add_argument("--tasks-dir", default=None,
                        help="folder of lm-eval task YAML files added to the harness's own (e.g. local data)")
    parser.add_argument("--tasks-limit", type=int, default=None,
                        help="score only the first N documents of each task (None: all)")


def _config_from_args(args: argparse.Namespace) -> PruneConfig:
    return PruneConfig(
        method=args.method, granularity=args.granularity, sparsity=args.sparsity, shots=args.shots,
        calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, seed=args.seed,
        calib_data=args.calib_data, text_field=args.text_field,
        damp_g=args.damp_g, damp_a=args.damp_a, fisher=args.fisher, magnitude_scope=args.magnitude_scope,
        update_iterations=args.update_iterations, update_tolerance=args.update_tolerance,
        update_start=args.update_start, update_solver=args.update_solver, nm_costs=args.nm_costs,
        batch_size=args.batch_size, sparsegpt_damp=args.sparsegpt_damp,
        lora_rank=args.lora_rank, lora_lr=args.lora_lr, lora_epochs=args.lora_epochs,
        prune_unrouted=args.prune_unrouted, max_layer_sparsity=args.max_layer_sparsity,
        width_multiple=args.width_multiple, reconstruct=args.reconstruct,
        reconstruct_iterations=args.reconstruct_iterations, structure_costs=args.structure_costs,
    )


def _prune_parser(sub) -> None:
    d = PruneConfig()
    prune = sub.add_parser("prune", help="prune a model and save it with a report.json")
    prune.add_argument("model", help=_model_help())
    prune.add_argument("--out", required=True, help="output folder (a save_pretrained checkpoint + report.json)")
    _add_method_flags(prune)
    _add_calibration_flags(prune, d.calib_samples, d.calib_seqlen)
    prune.add_argument("--eval", action="store_true", help="evaluate perplexity on --eval-datasets after pruning")
    prune.add_argument("--eval-dense", action="store_true",
                       help="with --eval: also evaluate the dense model on the same windows before pruning")
    _add_eval_flags(prune, "eval-")
    _add_task_flags(prune, "--eval-tasks")
    prune.add_argument("--overwrite", action="store_true", help="replace an output folder that holds another run")
    prune.add_argument("--resume", action="store_true",
                       help="continue from the last complete checkpoint in --out (the same command again does too)")
    prune.add_argument("--semi-structured-export", action="store_true",
                       help="with 2:4 on a CUDA GPU and fp16/bf16: evaluate with torch semi-structured sparse weights")
    prune.add_argument("--save-format", default="dense", choices=save_format_names(),
                       help="dense: safetensors with the zeros; compressed: pruned matrices as bitmask + nonzero "
                            "values (compressed-tensors' sparse-bitmask layout; loads with trust_remote_code=True)")
    prune.add_argument("--json", action="store_true", help="print one JSON summary instead of the human one")
    _add_memory_flags(prune)
    _add_common_flags(prune)


def _add_memory_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-memory", default=None, metavar="SIZE",
                        help="memory budget such as 20GiB: the blocks are split into groups whose curvature is "
                             "collected in separate passes so that a shot fits (None: the device's free memory)")
    parser.add_argument("--factor-device", default=None,
                        help="where the curvature sums accumulate, e.g. cpu for host memory (None: beside each layer)")
    parser.add_argument("--device-map", default=None, choices=["auto", "balanced", "sequential"],
                        help="spread the blocks over the visible GPUs with accelerate (one process); each layer's "
                             "factors and update stay on its GPU. Not with torchrun (each rank holds a whole model)")


def _bench_parser(sub) -> None:
    d = PruneConfig()
    bench = sub.add_parser("bench", help="run a grid of methods x granularities x sparsities under one protocol")
    bench.add_argument("model", help=_model_help())
    bench.add_argument("--out", required=True, help="folder for results.json, results.md, results.png and runs/")
    bench.add_argument("--methods", default=",".join(method_names()), help="comma-separated methods")
    bench.add_argument("--granularities", default="unstructured",
                       help="comma-separated: unstructured, structured, N:M patterns")
    bench.add_argument("--sparsities", default="0.5", help="comma-separated (unstructured and structured runs)")
    bench.add_argument("--shots", type=int, default=d.shots, help="shots of multi-shot methods")
    _add_calibration_flags(bench, d.calib_samples, d.calib_seqlen)
    _add_eval_flags(bench, "eval-")
    _add_task_flags(bench, "--eval-tasks")
    _add_common_flags(bench)


def _plan_parser(sub) -> None:
    d = PruneConfig()
    plan = sub.add_parser("plan", help="predict a shot's peak memory and time from the model's config alone")
    plan.add_argument("model", help=_model_help() + "; or a config.json")
    _add_method_flags(plan)
    _add_calibration_flags(plan, d.calib_samples, d.calib_seqlen)
    plan.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES, help="weights' dtype while pruning")
    plan.add_argument("--max-memory", default=None, metavar="SIZE",
                      help="memory of each device to plan for, such as 80GiB; the block groups (and if need be the "
                           "batch size) are chosen to fit it, as prune --max-memory does (None: nothing about fitting)")
    plan.add_argument("--device-memory", type=float, default=None, help="the same in GiB, as a number")
    plan.add_argument("--devices", type=int, default=1,
                      help="devices the blocks are split over evenly (as device_map='auto' does)")
    plan.add_argument("--ranks", type=int, default=1,
                      help="torchrun processes sharing the windows, each holding the model on --devices devices")
    plan.add_argument("--tflops", type=float, default=None,
                      help="throughput to plan with (None: measure this machine's matmul for a second)")
    plan.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="llm-surgeon",
        description="Prune Hugging Face causal LMs with LLM Surgeon and evaluate them under the standard protocol.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _prune_parser(sub)
    _plan_parser(sub)
    _bench_parser(sub)
    ev = sub.add_parser("eval", help="perplexity of a model or pruned folder on one or more text sets")
    ev.add_argument("model", help=_model_help() + "; or a folder written by prune")
    ev.add_argument("--dataset", default="wikitext2", metavar="SETS",
                    help="comma-separated evaluation sets: wikitext2, ptb, c4 in --data-dir, or text, JSON-lines "
                         "or Parquet files")
    ev.add_argument("--text-field", default="text", help="field of JSON-lines/Parquet records that holds the text")
    _add_task_flags(ev, "--tasks")
    _add_eval_flags(ev, "")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    _add_common_flags(ev)
    return parser


def _run_prune(args: argparse.Namespace) -> int:
    from llm_surgeon import api
    from llm_surgeon.artifacts.summary import human_summary

    options = api.RunOptions(
        out=args.out, data_dir=args.data_dir, eval=args.eval, eval_seqlen=args.eval_seqlen,
        eval_max_windows=args.eval_max_windows, eval_datasets=tuple(args.eval_datasets.split(",")),
        text_field=args.text_field, eval_tasks=tuple(filter(None, args.eval_tasks.split(","))),
        tasks_dir=args.tasks_dir, tasks_limit=args.tasks_limit, save_format=args.save_format,
        device=args.device, dtype=args.dtype,
        overwrite=args.overwrite, progress=not args.no_progress, eval_dense=args.eval_dense,
        semi_structured_export=args.semi_structured_export, resume=args.resume,
        max_memory=args.max_memory, factor_device=args.factor_device, device_map=args.device_map,
    )
    outcome = api.prune_job(args.model, _config_from_args(args), options)
    if outcome.already_finished:
        print(f"llm-surgeon: {args.out} is already finished, nothing to do (use --overwrite to run it again)",
              file=sys.stderr)
        return 0
    report = outcome.report
    if not report:  # a rank other than 0 of a torchrun job: rank 0 reports
        return 0
    if args.json:
        keys = ("model", "method", "granularity", "target_sparsity", "achieved_sparsity", "seconds", "ppl",
                "peak_memory_mb")
        print(json.dumps({k: report.get(k) for k in keys}))
    else:
        print(human_summary(report, args.out))
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from llm_surgeon import api
    from llm_surgeon.evaluation.zeroshot import headline

    results = api.run_eval(args.model, args.data_dir, args.seqlen, args.max_windows, args.device, args.dtype,
                           progress=not args.no_progress, datasets=args.dataset.split(","),
                           text_field=args.text_field, tasks=args.tasks.split(","), tasks_dir=args.tasks_dir,
                           tasks_limit=args.tasks_limit)
    zero_shot = results.pop("zero_shot", None)
    if args.json:  # the first set's fields at the top (as with one set), every set under "datasets"
        print(json.dumps({**next(iter(results.values())), "datasets": results, "zero_shot": zero_shot}))
        return 0
    for name, result in results.items():
        print(f"{name} perplexity {result['ppl']:.4f} ({result['windows']} windows of {result['seqlen']}, "
              f"{result['tokens']:,} tokens scored)")
    for task, metrics in (zero_shot or {}).get("tasks", {}).items():
        shown = headline(metrics)
        print(f"{task} {shown[0]} {shown[1]:.4f} ({metrics['samples']} documents)" if shown else f"{task} {metrics}")
    return 0


def _run_plan(args: argparse.Namespace) -> int:
    from llm_surgeon.planning.memory import parse_bytes
    from llm_surgeon.planning.plan import describe, plan_shot

    device_bytes = int(args.device_memory * 2**30) if args.device_memory else None
    if args.max_memory is not None:
        try:
            device_bytes = parse_bytes(args.max_memory)
        except ValueError as exc:
            raise ConfigError(f"--max-memory: {exc}") from exc
    plan = plan_shot(args.model, _config_from_args(args), args.dtype, device_bytes, args.tflops, args.devices,
                     args.ranks)
    print(json.dumps(plan.to_dict()) if args.json else describe(plan))
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm_surgeon import bench

    protocol = bench.Protocol(
        model=args.model, data_dir=args.data_dir, calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen,
        seed=args.seed, eval_seqlen=args.eval_seqlen, eval_max_windows=args.eval_max_windows, shots=args.shots,
        device=args.device, dtype=args.dtype, calib_data=args.calib_data, text_field=args.text_field,
        eval_datasets=args.eval_datasets, eval_tasks=args.eval_tasks, tasks_dir=args.tasks_dir,
        tasks_limit=args.tasks_limit,
    )
    try:
        sparsities = [float(s) for s in args.sparsities.split(",")]
    except ValueError as exc:
        raise ConfigError(f"--sparsities must be comma-separated numbers, got {args.sparsities!r}") from exc
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    specs = bench.grid(args.methods.split(","), args.granularities.split(","), sparsities, log=log)
    out = Path(args.out)
    results = bench.run_bench(protocol, specs, out, log=log)
    bench.write_outputs(results, out, log=log)
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

    from llm_surgeon.artifacts.checkpoints import list_checkpoints

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


COMMANDS = {"prune": _run_prune, "plan": _run_plan, "eval": _run_eval, "bench": _run_bench}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    release_freed_memory()
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        return COMMANDS[args.command](args)
    except LLMSurgeonError as exc:
        print(f"llm-surgeon: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted_message(args), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
