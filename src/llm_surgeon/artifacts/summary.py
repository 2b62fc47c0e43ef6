"""The few lines a person reads at the end of a prune (``--json`` prints the machine form instead)."""

from __future__ import annotations

from llm_surgeon.data.textsets import label
from llm_surgeon.evaluation.zeroshot import headline


def _ppl_line(ppl: dict) -> list[str]:
    """One line per evaluation set (the report keeps ``name``, ``name_detail`` and ``dense_name`` per set)."""
    lines = []
    for name in [k for k in ppl if not k.endswith("_detail") and not k.startswith("dense_")]:
        detail = ppl.get(f"{name}_detail") or {}
        windows = f"{detail.get('windows', '?')} windows of {detail.get('seqlen', '?')} tokens"
        scored = f"{detail.get('tokens', 0):,} tokens scored"
        dense = ppl.get(f"dense_{name}")
        if dense and dense.get("windows") == detail.get("windows") and dense.get("seqlen") == detail.get("seqlen"):
            versus = f"dense {dense['ppl']:.2f} on the same windows"
        else:
            versus = "dense not measured on these windows (add --eval-dense, or run llm-surgeon eval on the model once)"
        where = "WikiText-2 test" if name == "wikitext2" else label(name)
        lines.append(f"  perplexity   {ppl[name]:.2f} on {where} ({windows}, {scored}); {versus}")
    return lines


def _planned_time(estimate: dict | None) -> str:
    """The plan's time per shot beside the measured mean, when the run made a plan."""
    if not estimate or estimate.get("measured_seconds_per_shot") is None:
        return ""
    return (f"; {estimate['measured_seconds_per_shot']:.0f} s a shot (plan predicted "
            f"{estimate['plan_seconds_per_shot']:.0f} s at {estimate['tflops']:.2f} TFLOP/s)")


def _memory_line(report: dict) -> str:
    """The measured peak, with the prediction and where the curvature was kept when those are known."""
    line = f"  peak memory  {report['peak_memory_mb'] / 1024:.2f} GiB"
    estimate = report.get("memory_estimate") or {}
    if estimate.get("predicted_peak_mb"):
        line += f" (predicted {estimate['predicted_peak_mb'] / 1024:.2f} GiB"
        groups = estimate.get("block_groups") or 1
        if groups > 1:
            line += f"; factors collected in {groups} block groups"
        if estimate.get("factor_device"):
            line += f"; factor sums on {estimate['factor_device']}"
        line += ")"
    return line


def human_summary(report: dict, out: str) -> str:
    """Model, method, sparsity reached, perplexity beside the dense one, time, peak memory, where it was saved."""
    s = report["seconds"]
    lines = [
        f"llm-surgeon: pruned {report['model']} with {report['method']} ({report['granularity']}, "
        f"target {report['target_sparsity']:.1%}, {report['shots']} shot(s))",
        *([f"  model        {report['model_loaded_as']}"] if report.get("model_loaded_as") else []),
        f"  sparsity     {report['achieved_sparsity']:.2%} of the prunable weights are exact zeros",
    ]
    if report.get("ppl"):
        lines += _ppl_line(report["ppl"])
    for task, metrics in ((report.get("zero_shot") or {}).get("tasks") or {}).items():
        shown = headline(metrics)
        if shown:
            lines.append(f"  zero-shot    {task} {shown[0]} {shown[1]:.4f} ({metrics.get('samples', '?')} documents)")
    lines += _heal_lines(report.get("heal"))
    parts = ", ".join(f"{k} {s[k]:.1f}" for k in ("curvature", "costs", "update", "reconstruction", "correction")
                      if s.get(k))
    resumed = report.get("resumed_from_shot")
    this_run = (f" ({s['wall_this_run']:.1f} s in this run, resumed after shot {resumed})"
                if resumed and "wall_this_run" in s else "")
    lines.append(f"  time         {s['total']:.1f} s pruning ({parts or 'no curvature'}); "
                 f"{s.get('wall', s['total']):.1f} s in all{this_run}{_planned_time(report.get('time_estimate'))}")
    lines.append(_memory_line(report))
    structure = report.get("structure")
    if structure:
        lines.append(f"  parameters   {structure['prunable_params_after']:,} of {structure['prunable_params_before']:,}"
                     " prunable parameters kept (physically smaller model)")
        lines += _footprint_lines(report.get("footprint") or {})
    lines.append(_saved_line(report, out))
    return "\n".join(lines)


def _heal_lines(heal: dict | None) -> list[str]:
    """What healing did: its KL to the dense model on held-out text, and the perplexity it started from."""
    if not heal:
        return []
    kind = f"a rank-{heal['rank']} correction" if heal["rank"] else "every kept weight"
    rate = f"lr {heal['lr']:g}" + (" x each layer's weight RMS" if heal.get("lr_scale") == "weight-rms" else "")
    seconds = heal.get("seconds_all_shots", heal["seconds"]) + heal["seconds_teacher"]
    kl = (f"KL to the dense model {heal['kl_before']:.4f} -> {heal['kl_after']:.4f} on "
          f"{heal['held_out_tokens']:,} held-out tokens")
    if heal.get("block_error_before") is not None:
        kl += (f", outputs of blocks {','.join(map(str, heal['blocks']))} (weight {heal['block_weight']:g}) "
               f"{heal['block_error_before']:.4f} -> {heal['block_error_after']:.4f}")
    if heal.get("each_shot"):
        line = (f"  healed       after each shot, {heal['tokens_all_shots']:,} tokens in all ({kind}, {rate}) in "
                f"{seconds:.0f} s; the last {heal['tokens']:,} tokens, {heal['steps']} steps: {kl}")
    else:
        line = (f"  healed       {heal['tokens']:,} tokens, {heal['steps']} steps ({kind}, {rate}) in "
                f"{seconds:.0f} s: {kl}")
    before = heal.get("ppl_before") or {}
    shown = ", ".join(f"{'WikiText-2' if k == 'wikitext2' else label(k)} {v:.2f}" for k, v in before.items())
    return [line] + ([f"  before heal  perplexity {shown}"] if shown else [])


def _footprint_lines(footprint: dict) -> list[str]:
    """The compact model's forward cost beside the dense model's, measured in the same process."""
    dense, pruned = footprint.get("dense"), footprint.get("pruned")
    if not dense or not pruned:
        return []
    return [f"  compact      forward of {pruned.get('tokens', dense.get('tokens', '?'))} tokens: "
            f"{pruned['latency_ms_median']:.0f} ms (dense {dense['latency_ms_median']:.0f} ms), peak "
            f"{pruned['forward_peak_mb']:.0f} MB (dense {dense['forward_peak_mb']:.0f} MB); "
            f"{pruned['parameters']:,} parameters (dense {dense['parameters']:,})"]


def _saved_line(report: dict, out: str) -> str:
    """Where, how large and in which dtype the model was saved (and that it was evaluated before casting)."""
    files = report.get("files") or {}
    plot = f", {report['sparsity_plot']}" if report.get("sparsity_plot") else ""
    if "weights_bytes" not in files:
        return f"  saved to     {out} (model + report.json{plot})"
    dtype = files.get("save_dtype")
    evaluated = files.get("evaluated_in")
    note = f"; evaluated in {evaluated} before saving" if dtype and evaluated and dtype != evaluated else ""
    in_dtype = f" in {dtype}" if dtype else ""
    return (f"  saved to     {out} ({files['weights_bytes'] / 2**20:,.0f} MB{in_dtype}, "
            f"{files.get('save_format', 'dense')} format{note}; report.json{plot})")
