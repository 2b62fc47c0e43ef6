"""sparsity.png: the grid behind the heat map, and the picture a prune leaves in its folder."""

from __future__ import annotations

import json

import pytest

from llm_surgeon.artifacts.heatmap import kept_grid, render_sparsity_heatmap, sparsity_grid


def test_grid_has_a_row_per_block_and_a_column_per_matrix_with_experts_averaged():
    per_layer = {
        "model.layers.0.self_attn.q_proj": 0.5, "model.layers.0.mlp.experts.gate_up.0": 0.2,
        "model.layers.0.mlp.experts.gate_up.1": 0.4, "model.layers.1.self_attn.q_proj": 0.7,
        "model.layers.1.mlp.experts.gate_up.0": 0.9, "lm_head": 0.0,
    }
    columns, rows = sparsity_grid(per_layer)
    assert columns == ["self_attn.q_proj", "mlp.experts.gate_up (experts)"]
    assert rows == [[0.5, pytest.approx(0.3)], [0.7, 0.9]]
    columns, rows = sparsity_grid({"model.layers.2.fc1": 0.1})
    assert rows == [[None], [None], [0.1]]  # blocks without a prunable matrix stay empty, not shifted


def test_kept_grid_reads_the_structure_summary():
    structure = {"layers": [{"ffn_width_kept": 48, "ffn_width_before": 64, "heads_kept": 2, "heads_before": 4}]}
    assert kept_grid(structure) == (["FFN neurons kept", "heads kept"], [[0.75, 0.5]])


def test_render_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    report = {"model": "m", "method": "surgeon", "granularity": "structured", "achieved_sparsity": 0.3,
              "per_layer_sparsity": {f"model.layers.{b}.mlp.down_proj": b / 4 for b in range(4)},
              "structure": {"layers": [{"ffn_width_kept": 48, "ffn_width_before": 64, "heads_kept": 2,
                                        "heads_before": 4}] * 4}}
    assert render_sparsity_heatmap(report, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert not render_sparsity_heatmap({"per_layer_sparsity": {}}, tmp_path / "empty.png")


def test_a_prune_leaves_its_heat_map(tmp_path):
    pytest.importorskip("matplotlib")
    from tests.conftest import run_cli, write_fake_wikitext, write_tiny_checkpoint

    model = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    out = tmp_path / "out"
    run_cli("prune", str(model), "--out", str(out), "--method", "magnitude", "--sparsity", "0.5",
            "--data-dir", str(data), "--no-progress")
    report = json.loads((out / "report.json").read_text())
    assert report["sparsity_plot"] == "sparsity.png"
    assert (out / "sparsity.png").read_bytes()[:4] == b"\x89PNG"
