"""Structured pruning on tiny Llama (GQA) and OPT: compaction is exact, smaller, reloadable."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from llm_surgeon import PruneConfig, load_pruned, prune
from llm_surgeon.artifacts.compaction import compact
from llm_surgeon.curvature.collectors import LocalCollector
from llm_surgeon.engine.pruner import prune_model
from llm_surgeon.engine.selectors import StructureSelector
from llm_surgeon.math.structured import select_structures
from llm_surgeon.models.adapters import get_adapter
from llm_surgeon.planning.plan import plan_shot
from tests.conftest import run_cli, tiny_llama, tiny_opt, write_fake_wikitext, write_tiny_checkpoint


def _models():
    return {
        "llama-gqa": lambda: tiny_llama(seed=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64),
        "opt": lambda: tiny_opt(seed=4),
    }


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _zero_line_params(model) -> int:
    """Parameters in all-zero rows (with their bias) of the input-side projections and all-zero columns of
    the output projections, read from the masked weights."""
    total = 0
    for name, lin in get_adapter(model).prunable_linears(model).items():
        W = lin.weight.detach()
        if name.endswith(("o_proj", "out_proj", "down_proj", "fc2")):
            total += int((W == 0).all(0).sum()) * W.shape[0]
        else:
            rows = (W == 0).all(1) & ((lin.bias.detach() == 0) if lin.bias is not None else True)
            total += int(rows.sum()) * (W.shape[1] + (1 if lin.bias is not None else 0))
    return total


@pytest.mark.parametrize("family", ["llama-gqa", "opt"])
@pytest.mark.parametrize("method", ["surgeon", "magnitude"])
def test_compact_model_equals_masked_model_and_is_smaller(family, method, calibration):
    model = _models()[family]()
    result = prune(model, calibration, PruneConfig(method=method, granularity="structured", sparsity=0.4,
                                                   shots=2), progress=False)
    ids = calibration[:2]
    with torch.no_grad():
        masked_logits = model(input_ids=ids).logits
    before = _params(model)
    zero_lines = _zero_line_params(model)
    shapes = compact(model, result.masks)
    with torch.no_grad():
        compact_logits = model(input_ids=ids).logits
    assert torch.allclose(masked_logits, compact_logits, atol=1e-5, rtol=1e-4)
    summary = result.structure
    # Counted from the weights themselves, not from the selection's own bookkeeping.
    assert before - _params(model) == zero_lines == summary["prunable_params_before"] - summary["prunable_params_after"]
    assert 0.4 <= summary["removed_fraction"] < 0.55  # reaches the target with whole structures
    assert any(s.ffn_width < 64 for s in shapes.blocks)
    assert all(s.heads >= 1 and s.ffn_width >= 1 for s in shapes.blocks)
    widths = {s.ffn_width for s in shapes.blocks} | {-s.heads for s in shapes.blocks}
    assert len(widths) > 2 or method == "magnitude"  # global threshold: layers differ


def test_gqa_units_keep_whole_kv_groups(calibration):
    model = _models()["llama-gqa"]()
    result = prune(model, calibration, PruneConfig(granularity="structured", sparsity=0.5, shots=1), progress=False)
    shapes = compact(model, result.masks)
    for shape in shapes.blocks:
        assert shape.heads == 2 * shape.kv_heads  # 4 query heads share 2 KV heads


def test_saved_compact_model_reloads_in_a_fresh_process_and_generates(tmp_path, calibration):
    model = _models()["llama-gqa"]()
    result = prune(model, calibration, PruneConfig(granularity="structured", sparsity=0.4, shots=2), progress=False)
    shapes = compact(model, result.masks)
    model.save_pretrained(tmp_path)
    shapes.write(tmp_path)
    ids = calibration[:1]
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    torch.save(ids, tmp_path / "ids.pt")
    torch.save(expected, tmp_path / "expected.pt")
    code = (
        "import sys, torch; from llm_surgeon import load_pruned;"
        "m = load_pruned(sys.argv[1]); ids = torch.load(sys.argv[1] + '/ids.pt');"
        "assert torch.allclose(m(input_ids=ids).logits, torch.load(sys.argv[1] + '/expected.pt'), atol=1e-5);"
        "out = m.generate(ids[:, :4], max_new_tokens=5, do_sample=False);"
        "print(out.shape[1], sum(p.numel() for p in m.parameters()))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    length, params = map(int, proc.stdout.split())
    assert length == 9 and params == _params(model)
    assert _params(load_pruned(tmp_path)) < _params(_models()["llama-gqa"]())


def test_select_structures_reaches_target_and_keeps_one_per_group():
    costs = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 9.0])]
    params = [torch.tensor([10.0, 10.0, 10.0]), torch.tensor([40.0, 40.0])]
    removed = [torch.zeros(3, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)]
    # cost per parameter: 0.1, 0.2, 0.3 | 0.0125, 0.225 -> order: g0, n0, n1, (g1 kept: most expensive of its group)
    chosen = select_structures(costs, params, removed, 45)
    assert chosen[1].tolist() == [True, False] and chosen[0].tolist() == [True, False, False]
    chosen = select_structures(costs, params, removed, 1000)
    assert chosen[0].tolist() == [True, True, False] and chosen[1].tolist() == [True, False]
    assert not any(c.any() for c in select_structures(costs, params, removed, 0))
    forced = select_structures(costs, params, [torch.tensor([False, False, True]), removed[1]], 0)
    assert forced[0].tolist() == [False, False, True]


def test_cli_structured_prune_writes_a_smaller_model_with_report(tmp_path):
    import json


    model_dir = write_tiny_checkpoint(tmp_path / "model", "opt")
    data = write_fake_wikitext(tmp_path / "data")
    out = tmp_path / "out"
    proc = run_cli("prune", str(model_dir), "--out", str(out), "--granularity", "structured", "--sparsity", "0.3",
                   "--shots", "2", "--calib-samples", "4", "--calib-seqlen", "32", "--data-dir", str(data), "--eval",
                   "--eval-seqlen", "32", "--eval-max-windows", "2", "--no-progress")
    assert "USDT" not in proc.stderr and "profiler_start" not in proc.stderr  # the footprint's profiler is quiet
    report = json.loads((out / "report.json").read_text())
    fp = report["footprint"]
    assert fp["pruned"]["parameters"] < fp["dense"]["parameters"]
    assert fp["dense"]["parameters"] - fp["pruned"]["parameters"] == (
        report["structure"]["prunable_params_before"] - report["structure"]["prunable_params_after"])
    assert fp["pruned"]["file_bytes"] > 0 and fp["pruned"]["latency_ms_median"] > 0
    assert 0 < fp["pruned"]["forward_peak_mb"] < fp["dense"]["forward_peak_mb"]
    assert all({"heads_kept", "ffn_width_kept", "params_before", "params_after"} <= set(layer)
               for layer in report["structure"]["layers"])
    evaluated = json.loads(run_cli("eval", str(out), "--data-dir", str(data), "--seqlen", "32", "--max-windows", "2",
                                   "--json", "--no-progress").stdout)
    assert abs(evaluated["ppl"] - report["ppl"]["wikitext2"]) < 1e-3 * evaluated["ppl"]


@pytest.mark.parametrize("family", ["llama-gqa", "opt"])
def test_width_multiple_rounds_every_blocks_ffn_width(family, calibration):
    plain = _models()[family]()
    prune(plain, calibration, PruneConfig(granularity="structured", sparsity=0.3, shots=2), progress=False)
    model = _models()[family]()
    result = prune(model, calibration, PruneConfig(granularity="structured", sparsity=0.3, shots=2, width_multiple=8),
                   progress=False)
    widths = [layer["ffn_width_kept"] for layer in result.structure["layers"]]
    assert all(w % 8 == 0 and w >= 8 for w in widths), widths
    shapes = compact(model, result.masks)
    assert [s.ffn_width for s in shapes.blocks] == widths
    assert 0.3 <= result.structure["removed_fraction"] < 0.3 + 0.1


def test_width_multiple_is_refused_outside_structured():
    from llm_surgeon.errors import ConfigError

    with pytest.raises(ConfigError, match="--width-multiple rounds the FFN widths of structured pruning"):
        PruneConfig(granularity="2:4", width_multiple=64).validate()
    with pytest.raises(ConfigError, match="width multiple must be at least 1"):
        PruneConfig(granularity="structured", width_multiple=0).validate()


def test_outputs_only_structure_costs_price_the_output_columns_and_leave_the_other_rows(calibration):
    """``--structure-costs outputs``: a structure costs its output-projection columns' OBS cost alone, the
    rows that fed them are zeroed and every other row keeps its dense value; the columns get the update."""
    from llm_surgeon.math import structured as rows_cols
    from llm_surgeon.math.kfac import DampedFactors
    from llm_surgeon.methods.surgeon import SurgeonPruning
    from tests.conftest import spd

    config = PruneConfig(granularity="structured", structure_costs="outputs")
    method = SurgeonPruning(config)
    W = torch.randn(5, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    G, A = spd(5, seed=3), spd(6, seed=4)
    f = DampedFactors(G=G, A=A, G_inv=torch.linalg.inv(G), A_inv=torch.linalg.inv(A))
    rows, cols = torch.tensor([1, 3]), torch.tensor([0, 4])
    assert float(method.row_set_cost(W, rows, f)) == 0.0 and not method.row_costs(W, None, f).any()
    assert float(method.column_set_cost(W, cols, f)) == float(rows_cols.column_set_cost(W, cols, G, f.A_inv))
    kept = torch.tensor([0, 2, 4])
    assert torch.equal(method.remove_rows(W, rows, f)[kept], W[kept])
    assert not method.remove_rows(W, rows, f)[rows].any()
    model = tiny_llama(seed=7)
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = prune(model, calibration, PruneConfig(granularity="structured", sparsity=0.3, shots=2,
                                                   structure_costs="outputs"), progress=False)
    assert result.structure["removed_fraction"] >= 0.3
    for name, lin in get_adapter(model).prunable_linears(model).items():
        if not name.endswith(("o_proj", "down_proj")):
            removed = result.masks[name]
            assert torch.equal(lin.weight.detach()[~removed], dense[f"{name}.weight"][~removed]), name
    with pytest.raises(Exception, match="structure-costs"):
        prune(tiny_llama(), calibration, PruneConfig(structure_costs="all"), progress=False)


class _RecordingCollector(LocalCollector):
    """The default collector, remembering which layers each shot asked it for."""

    def __init__(self):
        super().__init__(batch_size=4, progress=False)
        self.asked: list[set[str]] = []

    def collect(self, model, adapter, linears, windows, request, seed, label=""):
        self.asked.append(set(linears))
        return super().collect(model, adapter, linears, windows, request, seed, label)


@pytest.mark.parametrize("method", ["surgeon", "ziplm", "flap"])
def test_output_priced_structures_collect_only_the_output_projections_with_the_same_result(
        method, calibration, monkeypatch):
    """Priced by their output columns, structures read no q/k/v or gate/up curvature: the shot collects the
    o_proj/down_proj factors alone, and the pruned model equals the one from collecting every layer."""
    config = PruneConfig(granularity="structured", sparsity=0.3, shots=2, method=method)
    lean, lean_collector = tiny_llama(seed=5), _RecordingCollector()
    prune_model(lean, calibration, config, progress=False, collector=lean_collector)
    assert all(names and all(n.endswith(("o_proj", "down_proj")) for n in names) for names in lean_collector.asked)
    monkeypatch.setattr(StructureSelector, "curvature_layers", lambda self, method: self.linears)
    full, full_collector = tiny_llama(seed=5), _RecordingCollector()
    prune_model(full, calibration, config, progress=False, collector=full_collector)
    assert len(full_collector.asked[0]) > 2 * len(lean_collector.asked[0])
    for (name, p), q in zip(lean.named_parameters(), full.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_paper_style_structure_costs_collect_every_layer_and_plan_for_them(calibration, tmp_path):
    collector = _RecordingCollector()
    model = tiny_llama(seed=5)
    prune_model(model, calibration, PruneConfig(granularity="structured", sparsity=0.3, structure_costs="all"),
                progress=False, collector=collector)
    assert collector.asked[0] == set(get_adapter(model).prunable_linears(model))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_llama().config.to_dict()))
    plans = {costs: plan_shot(str(path), PruneConfig(granularity="structured", structure_costs=costs,
                                                     calib_samples=4, calib_seqlen=32), tflops=1.0)
             for costs in ("outputs", "all")}
    assert plans["outputs"].factors_bytes < plans["all"].factors_bytes
    assert plans["outputs"].flops["statistics"] < plans["all"].flops["statistics"]
