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
        f"  sparsity     {report['achieved_sparsity']:.2%} of the prunable weights are exact zeros",
    ]
    if report.get("ppl"):
        lines += _ppl_line(report["ppl"])
    for task, metrics in ((report.get("zero_shot") or {}).get("tasks") or {}).items():
        shown = headline(metrics)
        if shown:
            lines.append(f"  zero-shot    {task} {shown[0]} {shown[1]:.4f} ({metrics.get('samples', '?')} documents)")
    parts = ", ".join(f"{k} {s[k]:.1f}" for k in ("curvature", "costs", "update", "reconstruction", "correction")
                      if s.get(k))
    lines.append(f"  time         {s['total']:.1f} s pruning ({parts or 'no curvature'}); "
                 f"{s.get('wall', s['total']):.1f} s in all")
    lines.append(_memory_line(report))
    structure = report.get("structure")
    if structure:
        lines.append(f"  parameters   {structure['prunable_params_after']:,} of {structure['prunable_params_before']:,}"
                     " prunable parameters kept (physically smaller model)")
    plot = f", {report['sparsity_plot']}" if report.get("sparsity_plot") else ""
    lines.append(f"  saved to     {out} (model + report.json{plot})")
    return "\n".join(lines)
