"""``sparsity.png``: where a prune took its weights, per decoder block and matrix, at a glance.

One heat map of the fraction of zeros of every prunable matrix (rows: blocks, columns: the block's
matrices; a mixture of experts' per-expert slices are averaged into one column per part), and for a
structured prune a second one of the fraction of FFN neurons and heads each block kept. Drawn from the
report alone, so an old ``report.json`` can be drawn again. Needs matplotlib (``llm-surgeon[plot]``).
"""

from __future__ import annotations

import re
from pathlib import Path

SPARSITY_PLOT = "sparsity.png"
_BLOCK = re.compile(r"^(?P<prefix>.*?)\.(?P<block>\d+)\.(?P<rel>.+)$")
_EXPERT = re.compile(r"^(?P<part>.+)\.(?P<expert>\d+)$")


def sparsity_grid(per_layer: dict[str, float]) -> tuple[list[str], list[list[float | None]]]:
    """Columns (matrix names within a block, in first-seen order) and one row per block of their sparsity;
    the slices of fused experts (``...experts.gate_up.3``) are averaged per part."""
    cells: dict[int, dict[str, list[float]]] = {}
    columns: list[str] = []
    for name, value in per_layer.items():
        match = _BLOCK.match(name)
        if match is None:
            continue
        rel = match["rel"]
        expert = _EXPERT.match(rel)
        column = f"{expert['part']} (experts)" if expert and "experts" in rel else rel
        if column not in columns:
            columns.append(column)
        cells.setdefault(int(match["block"]), {}).setdefault(column, []).append(value)
    rows = []
    for block in range(max(cells, default=-1) + 1):
        values = cells.get(block, {})
        rows.append([sum(values[c]) / len(values[c]) if c in values else None for c in columns])
    return columns, rows


def kept_grid(structure: dict) -> tuple[list[str], list[list[float]]]:
    """Per block the fraction of FFN neurons and of heads kept (structured prunes)."""
    rows = [[layer["ffn_width_kept"] / layer["ffn_width_before"], layer["heads_kept"] / layer["heads_before"]]
            for layer in structure["layers"]]
    return ["FFN neurons kept", "heads kept"], rows


def render_sparsity_heatmap(report: dict, path: Path) -> bool:
    """Draw ``report``'s per-matrix sparsity (and kept widths) into ``path``; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np

    columns, rows = sparsity_grid(report.get("per_layer_sparsity") or {})
    if not rows:
        return False
    panels = [("fraction of zeros", columns, rows)]
    if report.get("structure"):
        panels.append(("fraction kept", *kept_grid(report["structure"])))
    widths = [max(len(cols), 2) for _, cols, _ in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + 0.75 * sum(widths), 1.5 + 0.28 * len(rows)),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, (label, cols, grid) in zip(axes[0], panels, strict=True):
        data = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
        image = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(cols)), [c.split(".")[-1] if "experts" not in c else c for c in cols],
                      rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(grid)), [str(b) for b in range(len(grid))], fontsize=7)
        ax.set_ylabel("decoder block")
        fig.colorbar(image, ax=ax, label=label, fraction=0.08)
    fig.suptitle(_title(report), fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return True


def _title(report: dict) -> str:
    achieved = report.get("achieved_sparsity")
    parts = [str(report.get("model", "")), str(report.get("method", "")), str(report.get("granularity", ""))]
    if achieved is not None:
        parts.append(f"{achieved:.1%} zeros")
    return ", ".join(p for p in parts if p)
