"""``llm-surgeon``: a thin command line over :mod:`llm_surgeon.api`.

Every flag has a one-line help with its default, in titled groups (the basics first, research settings
last); the settings' flags are generated from :class:`~llm_surgeon.config.PruneConfig`'s fields (each
method's options dataclass), and method and family lists come from the registries. Mistakes are one
``llm-surgeon: error: ...`` line and exit code 2 (with the nearest valid choice for a typo), never a usage
block or a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import warnings
from dataclasses import Field

from llm_surgeon._version import __version__
from llm_surgeon.artifacts.formats import save_format_names, save_formats_help
from llm_surgeon.bench import SPEED_ENGINES
from llm_surgeon.config import PruneConfig
from llm_surgeon.errors import ConfigError, LLMSurgeonError
from llm_surgeon.gguf.encode import OUT_TYPES as GGUF_TYPES
from llm_surgeon.methods import method_names, methods_help
from llm_surgeon.methods.options import GROUPS, flag_name, flag_spec, flagged_fields, nearest
from llm_surgeon.models.adapters import supported_model_types
from llm_surgeon.runtime.allocator import release_freed_memory

DTYPE_CHOICES = ["float32", "bfloat16", "float16"]


class DefaultsFormatter(argparse.HelpFormatter):
    """Every optional flag's help ends with its default, stated once: not for switches (off unless given),
    nor for an empty or ``None`` default (the help says what nothing means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        shown = not (action.default is None or action.default is False or action.default == ""
                     or action.default == argparse.SUPPRESS)
        if action.option_strings and not action.required and shown and "%(default)" not in help_text:
            help_text += " (default: %(default)s)"
        return help_text


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (with a pointer to ``--help``) instead of the usage block,
    with the nearest valid choice suggested for a typo."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        match = _INVALID_CHOICE.search(message)
        if match:
            message += nearest(match.group(1), re.findall(r"'([^']*)'", match.group(2)))
        self.exit(2, f"llm-surgeon: error: {message} (see '{self.prog} --help')\n")


class FlagGroups:
    """The argument groups of one subcommand, made in :data:`GROUPS` order the first time each is asked for."""

    def __init__(self, parser: argparse.ArgumentParser, basics: str | None = None):
        self.parser = parser
        self.titles = {**GROUPS, **({"basics": basics} if basics else {})}
        self._groups: dict[str, argparse._ArgumentGroup] = {}

    def __getitem__(self, name: str) -> argparse._ArgumentGroup:
        if name not in self._groups:
            self._groups[name] = self.parser.add_argument_group(self.titles[name])
        return self._groups[name]

    def open_all(self) -> None:
        for name in GROUPS:
            self[name]


def _model_help() -> str:
    return ("hub id, local folder, .gguf file, or an alias (smollm2-135m, gemma3-270m); families: "
            + ", ".join(supported_model_types()))


def _add_common_flags(groups: FlagGroups) -> None:
    memory = groups["memory"]
    memory.add_argument("--data-dir", default=None,
                        help="folder holding the named text sets: wikitext-2-raw/, ptb/, c4/ "
                             "(None: $LLM_SURGEON_DATA, else WikiText-2 from the Hugging Face hub)")
    memory.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    memory.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES, help="weights' dtype while pruning")
    groups["output"].add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_setting(groups: FlagGroups, f: Field) -> None:
    """One PruneConfig field as a flag: name, default, type, choices and help from the field itself."""
    spec = flag_spec(f)
    kwargs: dict = {"default": f.default, "help": spec.help}
    if isinstance(f.default, bool):
        kwargs["action"] = "store_true"
    else:
        kwargs["type"] = spec.type or type(f.default)
        if kwargs["type"] is str:
            del kwargs["type"]
    if spec.choices:
        kwargs["choices"] = list(spec.choices)
    if spec.metavar:
        kwargs["metavar"] = spec.metavar
    if f.name == "method":  # the registry's methods, each with its one-line summary
        kwargs.update(choices=method_names(), metavar="METHOD",
                      help=f"pruning method: {', '.join(method_names())} (each described at the end)")
    groups[spec.group].add_argument(flag_name(f.name), **kwargs)


def _add_settings(groups: FlagGroups, only: set[str] | None = None) -> None:
    """Every setting of :class:`PruneConfig` (or those named in ``only``) as generated flags."""
    for f in flagged_fields(PruneConfig):
        if only is None or f.name in only:
            _add_setting(groups, f)


def _add_eval_flags(groups: FlagGroups, prefix: str) -> None:
    evaluation = groups["evaluation"]
    evaluation.add_argument(f"--{prefix}seqlen", type=int, default=2048, help="tokens per evaluation window")
    evaluation.add_argument(f"--{prefix}max-windows", type=int, default=None,
                            help="evaluate only the first K windows (None: all; c4 scores at most 256)")
    if prefix:
        evaluation.add_argument(f"--{prefix}datasets", default="wikitext2", metavar="SETS",
                                help="comma-separated evaluation sets: wikitext2, ptb, c4 in --data-dir, or text, "
                                     "JSON-lines or Parquet files (records' --text-field)")


def _add_task_flags(groups: FlagGroups, flag: str) -> None:
    evaluation = groups["evaluation"]
    evaluation.add_argument(flag, default="", metavar="TASKS",
                            help="comma-separated lm-evaluation-harness tasks for zero-shot accuracy, e.g. "
                                 "piqa,arc_easy (needs pip install 'llm-surgeon[eval]'; empty: none)")
    evaluation.add_argument("--tasks-dir", default=None,
                            help="folder of lm-eval task YAML files added to the harness's own (e.g. local data)")
    evaluation.add_argument("--tasks-limit", type=int, default=None,
                            help="score only the first N documents of each task (None: all)")


def _config_from_args(args: argparse.Namespace) -> PruneConfig:
    return PruneConfig(**{f.name: getattr(args, f.name) for f in flagged_fields(PruneConfig)})


def _subcommand(sub, name: str, help: str, usage: str,  # noqa: A002
                basics: str | None = None) -> tuple[argparse.ArgumentParser, FlagGroups]:
    """A subcommand's parser and its flag groups (``basics``: the first group's title, when it is not about
    what to prune)."""
    parser = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                            usage=f"llm-surgeon {name} {usage}")
    groups = FlagGroups(parser, basics)
    groups.open_all()
    return parser, groups


def _prune_parser(sub) -> None:
    prune, groups = _subcommand(sub, "prune", "prune a model and save it with a report.json",
                                "MODEL --out DIR [--method M] [--granularity G] [--sparsity S] [options]")
    prune.epilog = f"methods: {methods_help()}"
    prune.add_argument("model", help=_model_help())
    groups["basics"].add_argument("--out", required=True,
                                  help="output folder (a save_pretrained checkpoint + report.json)")
    _add_settings(groups)
    evaluation = groups["evaluation"]
    evaluation.add_argument("--eval", action="store_true", help="evaluate perplexity on --eval-datasets after pruning")
    evaluation.add_argument("--eval-dense", action="store_true",
                            help="with --eval: also evaluate the dense model on the same windows before pruning")
    _add_eval_flags(groups, "eval-")
    _add_task_flags(groups, "--eval-tasks")
    _add_output_flags(groups["output"])
    _add_memory_flags(groups["memory"])
    _add_common_flags(groups)


def _add_output_flags(output: argparse._ArgumentGroup) -> None:
    output.add_argument("--overwrite", action="store_true", help="replace an output folder that holds another run")
    output.add_argument("--resume", action="store_true",
                        help="continue from the last complete checkpoint in --out (the same command again does too)")
    output.add_argument("--semi-structured-export", action="store_true",
                        help="with 2:4 on a CUDA GPU and fp16/bf16: evaluate with torch semi-structured sparse "
                             "weights")
    output.add_argument("--save-format", default="dense", choices=save_format_names(), help=save_formats_help())
    output.add_argument("--save-dtype", default="auto", choices=["auto", *DTYPE_CHOICES],
                        help="dtype of the saved weights; auto: the source model's own (a quantised GGUF's: "
                             "float16), whatever --dtype the pruning ran in")
    output.add_argument("--json", action="store_true", help="print one JSON summary instead of the human one")


def _add_memory_flags(memory: argparse._ArgumentGroup) -> None:
    memory.add_argument("--max-memory", default=None, metavar="SIZE",
                        help="memory budget such as 20GiB: the blocks are split into groups whose curvature is "
                             "collected in separate passes so that a shot fits (None: the device's free memory)")
    memory.add_argument("--factor-device", default=None,
                        help="where the curvature sums accumulate, e.g. cpu for host memory (None: beside each layer)")
    memory.add_argument("--device-map", default=None, choices=["auto", "balanced", "sequential"],
                        help="spread the blocks over the visible GPUs with accelerate (one process); each layer's "
                             "factors and update stay on its GPU. Not with torchrun (each rank holds a whole model)")


BENCH_SETTINGS = {"shots", "calib_samples", "calib_seqlen", "seed", "calib_data", "text_field"}
"""The settings a bench grid shares across its runs (the methods' own keep their defaults there)."""


def _bench_parser(sub) -> None:
    bench, groups = _subcommand(sub, "bench", "run a grid of methods x granularities x sparsities under one protocol",
                                "MODEL --out DIR [--methods M,..] [--granularities G,..] [--sparsities S,..] "
                                "[options]")
    bench.add_argument("model", help=_model_help())
    basics = groups["basics"]
    basics.add_argument("--out", required=True, help="folder for results.json, results.md, results.png and runs/")
    basics.add_argument("--methods", default=",".join(method_names()), help="comma-separated methods")
    basics.add_argument("--granularities", default="unstructured",
                        help="comma-separated: unstructured, structured, N:M patterns")
    basics.add_argument("--sparsities", default="0.5", help="comma-separated (unstructured and structured runs)")
    groups["evaluation"].add_argument(
        "--speed", default="none", choices=SPEED_ENGINES,
        help="after the runs, time each structured model against dense with llm-surgeon speed in this engine "
             "(llama.cpp needs pip install 'llm-surgeon[gguf]')")
    groups["evaluation"].add_argument("--speed-prompt", type=int, default=512, metavar="N",
                                      help="with --speed: prompt tokens processed at once")
    groups["evaluation"].add_argument("--speed-generate", type=int, default=128, metavar="N",
                                      help="with --speed: tokens generated greedily after the prompt")
    _add_settings(groups, BENCH_SETTINGS)
    _add_eval_flags(groups, "eval-")
    _add_task_flags(groups, "--eval-tasks")
    _add_common_flags(groups)


def _plan_parser(sub) -> None:
    plan, groups = _subcommand(sub, "plan", "predict a shot's peak memory and time from the model's config alone",
                               "MODEL_OR_CONFIG_JSON [the method and calibration flags of prune] [options]")
    plan.epilog = f"methods: {methods_help()}"
    plan.add_argument("model", help=_model_help() + "; or a config.json")
    _add_settings(groups)
    memory = groups["memory"]
    memory.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES, help="weights' dtype while pruning")
    memory.add_argument("--max-memory", default=None, metavar="SIZE",
                        help="memory of each device to plan for, such as 80GiB; the block groups (and if need be the "
                             "batch size) are chosen to fit it, as prune --max-memory does (None: nothing about "
                             "fitting)")
    memory.add_argument("--device-memory", type=float, default=None, help="the same in GiB, as a number")
    memory.add_argument("--devices", type=int, default=1,
                        help="devices the blocks are split over evenly (as device_map='auto' does)")
    memory.add_argument("--ranks", type=int, default=1,
                        help="torchrun processes sharing the windows, each holding the model on --devices devices")
    memory.add_argument("--tflops", type=float, default=None,
                        help="throughput to plan with (None: measure this machine's matmul for a second)")
    groups["output"].add_argument("--json", action="store_true", help="print one JSON object")


def _eval_parser(sub) -> None:
    ev, groups = _subcommand(sub, "eval", "perplexity of a model or pruned folder on one or more text sets",
                             "MODEL_OR_DIR [--dataset SETS] [--seqlen N] [--max-windows K] [options]")
    ev.add_argument("model", help=_model_help() + "; or a folder written by prune")
    evaluation = groups["evaluation"]
    evaluation.add_argument("--dataset", default="wikitext2", metavar="SETS",
                            help="comma-separated evaluation sets: wikitext2, ptb, c4 in --data-dir, or text, "
                                 "JSON-lines or Parquet files")
    evaluation.add_argument("--text-field", default="text",
                            help="field of JSON-lines/Parquet records that holds the text")
    _add_task_flags(groups, "--tasks")
    _add_eval_flags(groups, "")
    evaluation.add_argument("--engine", default="transformers", choices=["transformers", "llama.cpp"],
                            help="what computes the logits: transformers, or llama.cpp for a .gguf file (pip install "
                                 "'llm-surgeon[gguf]')")
    evaluation.add_argument("--tokenizer", default=None, metavar="MODEL",
                            help="with --engine llama.cpp: the model whose tokenizer makes the windows (None: the "
                                 "model the file was exported from, else the file's own)")
    groups["memory"].add_argument("--threads", type=int, default=None,
                                  help="with --engine llama.cpp: CPU threads (None: every core)")
    groups["output"].add_argument("--json", action="store_true", help="print one JSON object")
    _add_common_flags(groups)


def _export_parser(sub) -> None:
    export, groups = _subcommand(sub, "export", "write a model or pruned folder as a GGUF file for llama.cpp",
                                 "MODEL_OR_DIR --out FILE.gguf [--type f16] [options]", basics="what to write")
    export.add_argument("model", help=_model_help() + "; or a folder written by prune")
    basics = groups["basics"]
    basics.add_argument("--out", required=True, help="the .gguf file to write (atomically)")
    basics.add_argument("--format", default="gguf", choices=["gguf"], help="the file format")
    basics.add_argument("--type", default="f16", choices=list(GGUF_TYPES),
                        help="storage type of the weight matrices (norms and biases stay f32; rows that fill no "
                             "whole quantization block fall back to f16)")
    groups["output"].add_argument("--json", action="store_true", help="print one JSON object")
    groups["output"].add_argument("--no-progress", action="store_true", help="hide progress bars")


def _speed_parser(sub) -> None:
    speed, groups = _subcommand(sub, "speed", "prompt and decode speed of a model against another, alternated",
                                "MODEL_OR_FILE --against DENSE [--engine llama.cpp] [--prompt 512] [--generate 128] "
                                "[options]", basics="what to measure")
    speed.add_argument("model", help=_model_help() + "; a folder written by prune or a .gguf file")
    basics = groups["basics"]
    basics.add_argument("--against", required=True, metavar="DENSE",
                        help="the model to compare with (ratios are model / against)")
    basics.add_argument("--engine", default="llama.cpp", choices=["transformers", "llama.cpp"],
                        help="where both run: llama.cpp (models that are no .gguf are exported first, at --type) "
                             "or transformers (PyTorch)")
    basics.add_argument("--type", default="f16", choices=list(GGUF_TYPES), help="GGUF type of an export")
    basics.add_argument("--prompt", type=int, default=512, help="prompt tokens processed at once")
    basics.add_argument("--generate", type=int, default=128, help="tokens generated greedily after the prompt")
    basics.add_argument("--rounds", type=int, default=3, help="rounds, each running model and against once")
    groups["memory"].add_argument("--threads", type=int, default=None, help="CPU threads (None: every core)")
    groups["output"].add_argument("--json", action="store_true",
                                  help="print one JSON object (decode_ratio, prompt_ratio, medians, every round)")
    groups["output"].add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="llm-surgeon",
        description="Prune Hugging Face causal LMs with LLM Surgeon and evaluate them under the standard protocol.",
    )
    parser.add_argument("--version", action="version", version=f"llm-surgeon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _prune_parser(sub)
    _plan_parser(sub)
    _bench_parser(sub)
    _eval_parser(sub)
    _export_parser(sub)
    _speed_parser(sub)
    return parser


def _run_prune(args: argparse.Namespace) -> int:
    from llm_surgeon import api
    from llm_surgeon.artifacts.summary import human_summary

    options = api.RunOptions(
        out=args.out, data_dir=args.data_dir, eval=args.eval, eval_seqlen=args.eval_seqlen,
        eval_max_windows=args.eval_max_windows, eval_datasets=tuple(args.eval_datasets.split(",")),
        text_field=args.text_field, eval_tasks=tuple(filter(None, args.eval_tasks.split(","))),
        tasks_dir=args.tasks_dir, tasks_limit=args.tasks_limit, save_format=args.save_format,
        save_dtype=args.save_dtype, device=args.device, dtype=args.dtype,
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


def _run_llama_eval(args: argparse.Namespace) -> int:
    from llm_surgeon.deploy import run_llama_eval

    if args.tasks:
        raise ConfigError("--tasks runs in transformers; drop it with --engine llama.cpp")
    results = run_llama_eval(args.model, args.data_dir, args.seqlen, args.max_windows, args.dataset.split(","),
                             args.text_field, args.threads, args.tokenizer)
    if args.json:
        print(json.dumps({**next(iter(results.values())), "datasets": results}))
        return 0
    for name, result in results.items():
        print(f"{name} perplexity {result['ppl']:.4f} in llama.cpp ({result['windows']} windows of "
              f"{result['seqlen']}, {result['tokens']:,} tokens scored, {result['threads']} threads)")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from llm_surgeon.deploy import run_export

    report = run_export(args.model, args.out, args.type)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"wrote {report['path']}: llama.cpp architecture {report['architecture']}, {report['out_type']}, "
          f"{report['file_bytes'] / 2**20:.1f} MiB")
    for note in report["padded_layers"]:
        print(f"  note: {note}")
    if report["f16_fallback_tensors"]:
        print(f"  note: {len(report['f16_fallback_tensors'])} matrices whose rows fill no whole {args.type} block "
              "are stored as f16")
    return 0


def _run_speed(args: argparse.Namespace) -> int:
    from llm_surgeon.deploy import run_speed

    result = run_speed(args.model, args.against, args.engine, args.prompt, args.generate, args.threads,
                       args.rounds, args.type)
    if args.json:
        print(json.dumps(result))
        return 0
    a, b = result["a"], result["b"]
    print(f"{result['engine']} on {result['machine']}, {result['threads']} threads, {result['rounds']} rounds "
          f"alternated, medians; prompt {result['prompt_tokens']} tokens, {result['new_tokens']} generated")
    for label, row in (("model", a), ("against", b)):
        print(f"  {label:8s} prompt {row['prompt_tokens_per_s']:8.1f} tok/s  decode {row['decode_tokens_per_s']:7.1f} "
              f"tok/s  peak +{row['peak_rss_delta_bytes'] / 2**20:.0f} MiB  size {row['size_bytes'] / 2**20:.1f} MiB")
    print(f"  ratio    prompt {result['prompt_ratio']:.2f}x  decode {result['decode_ratio']:.2f}x  "
          f"size {result['ratios']['size_bytes']:.2f}x")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from llm_surgeon import api
    from llm_surgeon.evaluation.zeroshot import headline

    if args.engine == "llama.cpp":
        return _run_llama_eval(args)
    if args.tokenizer or args.threads:
        raise ConfigError("--tokenizer and --threads go with --engine llama.cpp")
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
    results = bench.measure_speeds(results, out, args.speed, log=log, prompt=args.speed_prompt,
                                   generate=args.speed_generate)
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


def _notices_once() -> None:
    """Warnings (a missing train split, a retried damping) as one ``llm-surgeon: note:`` line each, said once
    per run, instead of Python's two lines with a source line."""
    said: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if text not in said:
            said.add(text)
            print(f"llm-surgeon: note: {text}", file=sys.stderr, flush=True)

    warnings.showwarning = show


def _quiet_libraries(progress: bool) -> None:
    """With ``--no-progress`` the libraries' own bars go too (transformers' GGUF de-quantizing and shard
    writing, the hub's downloads), and torch's profiler keeps its kineto log lines to itself."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # kineto's levels end at USDT (5), its trace markers
    if progress:
        return
    from functools import partialmethod

    import tqdm
    from transformers.utils import logging as transformers_logging

    if not getattr(tqdm.std.tqdm, "_llm_surgeon_quiet", False):  # transformers' GGUF bar is a plain tqdm
        tqdm.std.tqdm.__init__ = partialmethod(tqdm.std.tqdm.__init__, disable=True)
        tqdm.std.tqdm._llm_surgeon_quiet = True

    transformers_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:  # pragma: no cover - transformers brings the hub
        return
    disable_progress_bars()


COMMANDS = {"prune": _run_prune, "plan": _run_plan, "eval": _run_eval, "bench": _run_bench, "export": _run_export,
            "speed": _run_speed}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    release_freed_memory()
    _notices_once()
    _quiet_libraries(not getattr(args, "no_progress", False))
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        return COMMANDS[args.command](args)
    except LLMSurgeonError as exc:
        print(f"llm-surgeon: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        newline = "\n" if sys.stderr.isatty() else ""  # off the progress bar's line
        print(newline + _interrupted_message(args), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
