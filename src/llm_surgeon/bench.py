"""``llm-surgeon bench``: a grid of methods x granularities x sparsities under one pinned protocol.

Every run is a fresh ``llm-surgeon prune ... --eval`` process, so each run's peak memory is
its own (``wait4`` rusage of the child). The dense reference is evaluated once. Results are
written after every run to ``results.json`` (a run whose record exists is not repeated),
then rendered to ``results.md`` and ``results.png``. A run that was stopped part-way goes on
from its last per-shot checkpoint (or picks up its finished report) instead of starting over:
on a CPU one run can take most of an hour.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from llm_surgeon.artifacts.checkpoints import list_checkpoints
from llm_surgeon.config import PruneConfig, parse_nm
from llm_surgeon.data.textsets import label, parse_text_set, parse_text_sets
from llm_surgeon.errors import ConfigError
from llm_surgeon.evaluation.zeroshot import headline
from llm_surgeon.methods import STRUCTURED, method_class, method_names
from llm_surgeon.runtime.devices import check_device, check_positive
from llm_surgeon.runtime.files import REPORT_NAME, atomic_write_json, atomic_write_text

DENSE = "dense"


@dataclass
class Protocol:
    """What every run of a bench shares; recorded in results.json."""

    model: str
    data_dir: str | None
    calib_samples: int
    calib_seqlen: int
    seed: int
    eval_seqlen: int
    eval_max_windows: int | None
    shots: int
    device: str = "cpu"
    dtype: str = "float32"
    calib_data: str = "wikitext2"
    text_field: str = "text"
    eval_datasets: str = "wikitext2"
    """Comma-separated; the first one fills the paper-shaped tables, every one the per-set table."""
    eval_tasks: str = ""
    """Comma-separated lm-eval tasks scored for every run (zero-shot accuracy table); empty: none."""
    tasks_dir: str | None = None
    tasks_limit: int | None = None

    @property
    def eval_names(self) -> list[str]:
        return [s.name for s in parse_text_sets(self.eval_datasets, self.text_field)]


@dataclass(frozen=True)
class RunSpec:
    method: str
    granularity: str
    sparsity: float

    @property
    def key(self) -> str:
        return f"{self.method}|{self.granularity}|{self.sparsity:g}"

    @property
    def folder(self) -> str:
        return self.key.replace("|", "_").replace(":", "-")


def grid(methods: list[str], granularities: list[str], sparsities: list[float], log=print) -> list[RunSpec]:
    """All runs; an N:M granularity takes its sparsity from the pattern, so it runs once per method.

    A method that does not support a granularity (e.g. Wanda with ``structured``) is left out
    with a note; any other invalid setting is an error before anything runs.
    """
    specs = []
    for granularity in granularities:
        nm = parse_nm(granularity)
        levels = [nm[0] / nm[1]] if nm else sparsities
        for method in methods:
            if granularity == STRUCTURED and not method_class(method).supports(STRUCTURED):
                log(f"[note] {method} has no structured variant; left out of the {granularity} table")
                continue
            for sparsity in levels:
                PruneConfig(method=method, granularity=granularity, sparsity=sparsity).validate()
                specs.append(RunSpec(method, granularity, sparsity))
    return specs


def run_child(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """Run ``cmd`` with output to ``log``; return exit code, wall seconds and the child's own peak RSS (MB)."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - start, usage.ru_maxrss / 1024


def _common_flags(p: Protocol) -> list[str]:
    flags = ["--device", p.device, "--dtype", p.dtype, "--no-progress", "--text-field", p.text_field]
    flags += ["--tasks-dir", p.tasks_dir] if p.tasks_dir else []
    flags += ["--tasks-limit", str(p.tasks_limit)] if p.tasks_limit else []
    return flags + (["--data-dir", p.data_dir] if p.data_dir else [])


def dense_command(p: Protocol) -> list[str]:
    cmd = [sys.executable, "-m", "llm_surgeon.cli", "eval", p.model, "--seqlen", str(p.eval_seqlen), "--json",
           "--dataset", p.eval_datasets] + (["--tasks", p.eval_tasks] if p.eval_tasks else [])
    if p.eval_max_windows:
        cmd += ["--max-windows", str(p.eval_max_windows)]
    return cmd + _common_flags(p)


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` has a finished report or a per-shot checkpoint that ``prune`` can continue."""
    return (folder / REPORT_NAME).is_file() or bool(list_checkpoints(folder))


def prune_command(p: Protocol, spec: RunSpec, out: Path) -> list[str]:
    """The child command; it clears leftovers but keeps a run it can continue (the protocol is already
    checked against results.json, so a checkpoint in the run's own folder belongs to this run;
    ``prune`` still refuses one whose config differs)."""
    keep = ["--overwrite"] if not holds_run(out) else []
    cmd = [sys.executable, "-m", "llm_surgeon.cli", "prune", p.model, "--out", str(out), *keep,
           "--method", spec.method, "--granularity", spec.granularity, "--sparsity", f"{spec.sparsity:g}",
           "--shots", str(p.shots), "--calib-samples", str(p.calib_samples), "--calib-seqlen", str(p.calib_seqlen),
           "--seed", str(p.seed), "--calib-data", p.calib_data, "--eval", "--eval-seqlen", str(p.eval_seqlen),
           "--eval-datasets", p.eval_datasets] + (["--eval-tasks", p.eval_tasks] if p.eval_tasks else [])
    if p.eval_max_windows:
        cmd += ["--eval-max-windows", str(p.eval_max_windows)]
    return cmd + _common_flags(p)


def _record_from_report(report: dict, names: list[str]) -> dict:
    return {
        "method": report["method"],
        "granularity": report["granularity"],
        "target_sparsity": report["target_sparsity"],
        "achieved_sparsity": report["achieved_sparsity"],
        "shots": report["shots"],
        "ppl": report["ppl"][names[0]],
        "ppl_by_dataset": {name: report["ppl"][name] for name in names},
        "zero_shot": (report.get("zero_shot") or {}).get("tasks"),
        "prune_seconds": report["seconds"]["total"],
        "seconds": report["seconds"],
        "shot_records": report["shot_records"],
        "nm_validation": report["nm_validation"],
        "footprint": report.get("footprint"),
        "resumed_from_shot": report.get("resumed_from_shot"),
    }


def run_bench(protocol: Protocol, specs: list[RunSpec], out: Path, log=print) -> dict:
    """Run what is missing from ``out/results.json``; return all results."""
    check_device(protocol.device)
    check_positive("--eval-seqlen", protocol.eval_seqlen, 2)
    check_positive("--eval-max-windows", protocol.eval_max_windows)
    protocol.eval_names  # noqa: B018 (an unknown set or missing file is refused before any run)
    parse_text_set(protocol.calib_data, protocol.text_field)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": {}}
    recorded = results.get("protocol")
    defaults = {f.name: f.default for f in fields(Protocol) if f.default is not MISSING}
    differing = sorted(k for k, v in asdict(protocol).items() if recorded and recorded.get(k, defaults.get(k)) != v)
    if differing:
        raise ConfigError(f"{results_path} was measured under another protocol (differs in: {', '.join(differing)})")
    results["protocol"] = asdict(protocol)
    results["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count()}
    todo = [None, *specs]
    for spec in todo:
        key = DENSE if spec is None else spec.key
        if key in results["runs"]:
            log(f"[skip] {key}: already measured")
            continue
        folder = out / "runs" / (DENSE if spec is None else spec.folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        cmd = dense_command(protocol) if spec is None else prune_command(protocol, spec, folder)
        log(f"[run] {key}: {shlex.join(cmd)}")
        log_path = folder.parent / f"{folder.name}.log"  # not with_suffix: "0.3" is not a suffix
        code, wall, peak_mb = run_child(cmd, log_path)
        if code != 0:
            log(f"[fail] {key}: exit code {code}, see {log_path}")
            continue
        if spec is None:
            last = json.loads(log_path.read_text().strip().splitlines()[-1])
            record = {"method": DENSE, "granularity": "dense", "target_sparsity": 0.0, "achieved_sparsity": 0.0,
                      "ppl": last["ppl"], "prune_seconds": 0.0,
                      "ppl_by_dataset": {name: r["ppl"] for name, r in last["datasets"].items()},
                      "zero_shot": (last.get("zero_shot") or {}).get("tasks")}
        else:
            record = _record_from_report(json.loads((folder / REPORT_NAME).read_text()), protocol.eval_names)
        record.update({"command": shlex.join(cmd), "wall_seconds": wall, "peak_rss_mb": peak_mb})
        results["runs"][key] = record
        atomic_write_json(results_path, results)
    atomic_write_json(results_path, results)
    return results


SPEED_ENGINES = ("none", "llama.cpp", "transformers")


def speed_command(model: str, folder: Path, engine: str, prompt: int = 512, generate: int = 128) -> list[str]:
    """``llm-surgeon speed`` of a structured run's folder against the dense model, in ``engine``."""
    return [sys.executable, "-m", "llm_surgeon.cli", "speed", str(folder), "--against", model, "--engine", engine,
            "--prompt", str(prompt), "--generate", str(generate), "--json", "--no-progress"]


def measure_speeds(results: dict, out: Path, engine: str, log=print, prompt: int = 512,
                   generate: int = 128) -> dict:
    """Prompt and decode speed of every structured run against dense (``llm-surgeon speed``, each its own
    process after the runs, so no pruning shares the machine); kept in ``results.json`` per run, so a
    rerun measures only what is missing or was measured in another engine."""
    if engine == "none":
        return results
    if engine not in SPEED_ENGINES:
        raise ConfigError(f"--speed must be one of {', '.join(SPEED_ENGINES)}, got {engine!r}")
    for key, record in results["runs"].items():
        if record["granularity"] != STRUCTURED or (record.get("speed") or {}).get("engine") == engine:
            continue
        folder = out / "runs" / RunSpec(record["method"], STRUCTURED, record["target_sparsity"]).folder
        cmd = speed_command(results["protocol"]["model"], folder, engine, prompt, generate)
        log(f"[speed] {key}: {shlex.join(cmd)}")
        log_path = folder.parent / f"{folder.name}.speed.log"
        code, _, _ = run_child(cmd, log_path)
        if code != 0:
            log(f"[fail] speed of {key}: exit code {code}, see {log_path}")
            continue
        record["speed"] = _speed_record(json.loads(log_path.read_text().strip().splitlines()[-1]))
        atomic_write_json(out / "results.json", results)
    return results


def _speed_record(measured: dict) -> dict:
    a, b = measured["a"], measured["b"]
    return {"engine": measured["engine"], "threads": measured["threads"], "machine": measured["machine"],
            "prompt_tokens": measured["prompt_tokens"], "new_tokens": measured["new_tokens"],
            "rounds": measured["rounds"], "prompt_ratio": measured["prompt_ratio"],
            "decode_ratio": measured["decode_ratio"], "prompt_tokens_per_s": a["prompt_tokens_per_s"],
            "decode_tokens_per_s": a["decode_tokens_per_s"], "dense_prompt_tokens_per_s": b["prompt_tokens_per_s"],
            "dense_decode_tokens_per_s": b["decode_tokens_per_s"]}


def _method_rank(method: str) -> int:
    """Rows of the tables in registry order: ours first, then the baselines from the paper's strongest to weakest."""
    order = method_names()
    return order.index(method) if method in order else len(order)


def render_markdown(results: dict) -> str:
    """Paper-shaped tables (rows = methods, columns = size kept) per granularity, then the cost of each run."""
    runs = results["runs"]
    p = results["protocol"]
    dense = runs.get(DENSE)
    sets = p.get("eval_datasets", "wikitext2").split(",")
    lines = [
        f"Model `{p['model']}`, {p['dtype']} on {p['device']}. Calibration: {p.get('calib_data', 'wikitext2')} "
        f"({p['calib_samples']} x {p['calib_seqlen']} tokens, seed {p['seed']}); shots {p['shots']} "
        f"for multi-shot methods. Evaluation: {', '.join(map(label, sets))}, seqlen {p['eval_seqlen']}, "
        + (f"first {p['eval_max_windows']} windows." if p["eval_max_windows"] else "all windows."),
        "",
    ]
    pruned = [r for k, r in runs.items() if k != DENSE]
    for granularity in dict.fromkeys(r["granularity"] for r in pruned):
        rows = [r for r in pruned if r["granularity"] == granularity]
        kept = sorted({round(1 - r["target_sparsity"], 4) for r in rows}, reverse=True)
        lines += [f"### {granularity}: {label(sets[0])} perplexity by size kept", "",
                  "| method | " + " | ".join(f"{k:.0%}" for k in kept) + " |",
                  "|---" * (len(kept) + 1) + "|"]
        if dense:
            lines.append("| dense | " + " | ".join(f"{dense['ppl']:.2f}" for _ in kept) + " |")
        for method in sorted(dict.fromkeys(r["method"] for r in rows), key=_method_rank):
            cells = []
            for k in kept:
                match = [r for r in rows if r["method"] == method and round(1 - r["target_sparsity"], 4) == k]
                cells.append(f"{match[0]['ppl']:.2f}" if match else "–")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _footprint_table(pruned)
    lines += _per_set_table(runs, sets)
    lines += _zero_shot_table(runs)
    lines += ["### Cost of each run", "",
              "| method | granularity | target | achieved | ppl | shots | curvature s | update s | prune s | "
              "peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    granularities = list(dict.fromkeys(r["granularity"] for r in runs.values()))
    ordered = sorted(runs.values(), key=lambda r: (granularities.index(r["granularity"]), _method_rank(r["method"]),
                                                   r["target_sparsity"]))
    for r in ordered:
        s = r.get("seconds", {})
        lines.append(
            f"| {r['method']} | {r['granularity']} | {r['target_sparsity']:.3f} | {r['achieved_sparsity']:.4f} | "
            f"{r['ppl']:.2f} | {r.get('shots', '–')} | {s.get('curvature', 0):.1f} | {s.get('update', 0):.1f} | "
            f"{r['prune_seconds']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _per_set_table(runs: dict, sets: list[str]) -> list[str]:
    """Every run's perplexity on every evaluation set (only when there is more than one set)."""
    if len(sets) < 2:
        return []
    lines = ["### Perplexity on each evaluation set", "",
             "| method | granularity | kept | " + " | ".join(map(label, sets)) + " |", "|---" * (len(sets) + 3) + "|"]
    for r in runs.values():
        by_set = r.get("ppl_by_dataset", {})
        cells = [f"{by_set[name]:.2f}" if name in by_set else "–" for name in sets]
        lines.append(f"| {r['method']} | {r['granularity']} | {1 - r['target_sparsity']:.0%} | " + " | ".join(cells)
                     + " |")
    return [*lines, ""]


def _zero_shot_table(runs: dict) -> list[str]:
    """Every run's headline metric (normalised accuracy where the task has it) on every lm-eval task."""
    tasks = list(dict.fromkeys(t for r in runs.values() for t in (r.get("zero_shot") or {})))
    if not tasks:
        return []
    lines = ["### Zero-shot accuracy (lm-evaluation-harness)", "",
             "| method | granularity | kept | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 3) + "|"]
    for r in runs.values():
        cells = []
        for task in tasks:
            shown = headline((r.get("zero_shot") or {}).get(task, {}))
            cells.append(f"{shown[1]:.3f} ({shown[0]})" if shown else "–")
        lines.append(f"| {r['method']} | {r['granularity']} | {1 - r['target_sparsity']:.0%} | " + " | ".join(cells)
                     + " |")
    return [*lines, ""]


def _footprint_table(pruned: list[dict]) -> list[str]:
    """What the compacted models cost to store and run, next to the dense model measured in the same process."""
    rows = [r for r in pruned if r.get("footprint")]
    if not rows:
        return []
    first = rows[0]["footprint"]["dense"]
    lines = [f"### Structured: size and speed of the compact model (forward of {first['tokens']} tokens)", "",
             "| method | kept | ppl | parameters | file MB | latency ms (dense) | forward peak MB (dense) |",
             "|---|---|---|---|---|---|---|",
             f"| dense | 100% | – | {first['parameters']:,} | – | {first['latency_ms_median']:.0f} | "
             f"{first['forward_peak_mb']:.0f} |"]
    timed = [r["speed"] for r in rows if r.get("speed")]
    if timed:
        lines[2] += " prompt tok/s (dense) | decode tok/s (dense) |"
        lines[3] += "---|---|"
        lines[4] += " – | – |"
    for r in sorted(rows, key=lambda r: (r["method"], r["target_sparsity"])):
        dense, pruned_fp = r["footprint"]["dense"], r["footprint"]["pruned"]
        lines.append(
            f"| {r['method']} | {1 - r['target_sparsity']:.0%} | {r['ppl']:.2f} | {pruned_fp['parameters']:,} | "
            f"{pruned_fp.get('file_bytes', 0) / 2**20:.0f} | {pruned_fp['latency_ms_median']:.0f} "
            f"({dense['latency_ms_median']:.0f}) | {pruned_fp['forward_peak_mb']:.0f} "
            f"({dense['forward_peak_mb']:.0f}) |" + (_speed_cells(r.get("speed")) if timed else "")
        )
    if timed:
        first_speed = timed[0]
        lines += ["", f"Speed: `llm-surgeon speed` in {first_speed['engine']}, {first_speed['threads']} threads on "
                      f"{first_speed['machine']}, a {first_speed['prompt_tokens']}-token prompt then "
                      f"{first_speed['new_tokens']} tokens generated, pruned and dense alternated over "
                      f"{first_speed['rounds']} rounds (medians; the ratio is pruned over dense)."]
    return [*lines, ""]


def _speed_cells(speed: dict | None) -> str:
    if not speed:
        return " – | – |"
    return (f" {speed['prompt_tokens_per_s']:.1f} ({speed['dense_prompt_tokens_per_s']:.1f}) "
            f"**{speed['prompt_ratio']:.2f}x** | {speed['decode_tokens_per_s']:.1f} "
            f"({speed['dense_decode_tokens_per_s']:.1f}) **{speed['decode_ratio']:.2f}x** |")


def render_plot(results: dict, path: Path) -> bool:
    """Perplexity against size kept, one line per method and granularity; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from matplotlib.lines import Line2D

    runs = results["runs"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    pruned = [r for k, r in runs.items() if k != DENSE]
    methods = sorted(dict.fromkeys(r["method"] for r in pruned), key=_method_rank)
    granularities = list(dict.fromkeys(r["granularity"] for r in pruned))
    color = {m: f"C{i}" for i, m in enumerate(methods)}
    marker = {g: {"unstructured": "o", "structured": "^"}.get(g, "s") for g in granularities}
    for method, granularity in dict.fromkeys((r["method"], r["granularity"]) for r in pruned):
        rows = sorted((r for r in pruned if r["method"] == method and r["granularity"] == granularity),
                      key=lambda r: r["target_sparsity"])
        # Methods measured at the same size would hide each other: spread them a little sideways.
        shift = (methods.index(method) - (len(methods) - 1) / 2) * 0.004
        ax.plot([1 - r["target_sparsity"] + shift for r in rows], [r["ppl"] for r in rows], color=color[method],
                marker=marker[granularity], linestyle="-" if len(rows) > 1 else "none")
    handles = [Line2D([], [], color=color[m], marker="o", linestyle="-", label=m) for m in methods]
    handles += [Line2D([], [], color="gray", marker=marker[g], linestyle="none", label=g) for g in granularities]
    if DENSE in runs:
        ax.axhline(runs[DENSE]["ppl"], color="black", linestyle="--")
        handles.append(Line2D([], [], color="black", linestyle="--", label="dense"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlabel("fraction of prunable weights kept (methods spread slightly sideways)")
    ax.set_ylabel(f"{label(results['protocol'].get('eval_datasets', 'wikitext2').split(',')[0])} perplexity")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return True


def reproduce_commands(results: dict, out: str = "runs/bench") -> list[str]:
    """``llm-surgeon bench`` commands, one per granularity, that re-measure every run in ``results``.

    One per granularity because a single grid would cross every method with every sparsity of
    every granularity, which is more than was measured when the granularities had different levels.
    """
    p = results["protocol"]
    protocol = ["--shots", str(p["shots"]), "--calib-samples", str(p["calib_samples"]), "--calib-seqlen",
                str(p["calib_seqlen"]), "--seed", str(p["seed"]), "--eval-seqlen", str(p["eval_seqlen"])]
    if p["eval_max_windows"]:
        protocol += ["--eval-max-windows", str(p["eval_max_windows"])]
    protocol += ["--device", p["device"], "--dtype", p["dtype"]]
    optional = (("--calib-data", "calib_data"), ("--text-field", "text_field"), ("--eval-datasets", "eval_datasets"))
    for flag, key in optional:
        if p.get(key, getattr(Protocol, key)) != getattr(Protocol, key):
            protocol += [flag, p[key]]
    pruned = [r for k, r in results["runs"].items() if k != DENSE]
    commands = []
    for granularity in dict.fromkeys(r["granularity"] for r in pruned):
        rows = [r for r in pruned if r["granularity"] == granularity]
        parts = ["llm-surgeon", "bench", p["model"], "--out", out,
                 "--methods", ",".join(dict.fromkeys(r["method"] for r in rows)), "--granularities", granularity]
        if parse_nm(granularity) is None:
            parts += ["--sparsities", ",".join(dict.fromkeys(f"{r['target_sparsity']:g}" for r in rows))]
        commands.append(shlex.join(parts + protocol))
    return commands


def write_outputs(results: dict, out: Path, log=print) -> None:
    atomic_write_text(out / "results.md", render_markdown(results))
    if not render_plot(results, out / "results.png"):
        log("[note] results.png not written: matplotlib is not installed (pip install 'llm-surgeon[plot]')")
