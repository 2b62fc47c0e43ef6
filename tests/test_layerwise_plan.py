"""The plan prices a layer-by-layer method's block (SparseGPT, Wanda), which it used to leave at zero."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llm_surgeon import PruneConfig
from llm_surgeon.engine.pruner import setup
from llm_surgeon.models.adapters import get_adapter
from llm_surgeon.planning.fit import shot_needs
from llm_surgeon.planning.memory import layerwise_bytes
from tests.conftest import tiny_llama


def test_layerwise_bytes_counts_block_states_the_blocks_hessians_and_the_widest_solve():
    model = tiny_llama()  # hidden 32 (q/k/v/o/gate/up read 32 wide), down_proj reads 64
    states = 2 * 8 * 16 * 32 * 4
    hessians = 6 * 32 * 32 * 4 + 64 * 64 * 4
    solve = 3 * 64 * 64 * 8
    assert layerwise_bytes(model, get_adapter(model), 8, 16, 4) == states + hessians + solve


@pytest.mark.parametrize(("method", "priced"), [("sparsegpt", True), ("wanda", True), ("surgeon", False)])
def test_the_shot_estimate_holds_the_layerwise_block_only_for_layerwise_methods(method, priced):
    model = tiny_llama()
    adapter = get_adapter(model)
    config = PruneConfig(method=method, sparsity=0.5, calib_samples=8, calib_seqlen=16)
    memory = shot_needs(model, adapter, setup(model, config, adapter), config, 4, 1, 8)
    expected = layerwise_bytes(model, adapter, 8, 16, 4) if priced else 0
    assert memory.layerwise == expected
    assert memory.total >= expected and (memory.factors == 0 if priced else memory.factors > 0)


def _sweep_flops_by_steps(rows: int, cols: int, block: int) -> int:
    """SparseGPT's column sweep counted step by step as :func:`sparsegpt_prune` runs it: each column's update of
    the rest of its block, then each block's error times the trailing rows of the inverse (2 flops a product)."""
    flops = 0
    for start in range(0, cols, block):
        end = min(start + block, cols)
        flops += sum(2 * rows * (end - start - i) for i in range(end - start))
        flops += 2 * rows * (end - start) * (cols - end)
    return flops


@pytest.mark.parametrize(("rows", "cols", "block"), [(5, 12, 4), (7, 32, 8), (3, 16, 16)])
def test_sparsegpt_flops_are_the_sweep_step_by_step_and_the_factorizations(rows, cols, block):
    from llm_surgeon.math.sparsegpt import sparsegpt_flops

    factorizations = 4 * cols**3 / 3  # Cholesky n³/3, the inverse from it 2n³/3, the inverse's Cholesky n³/3
    assert sparsegpt_flops(rows, cols) == pytest.approx(_sweep_flops_by_steps(rows, cols, block) + factorizations)


def test_layerwise_passes_and_statistics_are_the_counted_work_of_a_real_layerwise_pass():
    """The plan's pass and statistics against PyTorch's own count of the matmuls that ``prune_layerwise`` runs
    (Wanda: its solve has none), attention included (eager)."""
    from torch.utils.flop_counter import FlopCounterMode

    from llm_surgeon.engine.layerwise import prune_layerwise
    from llm_surgeon.methods import get_method
    from llm_surgeon.planning.plan import layerwise_flops

    model = tiny_llama(attn_implementation="eager")
    adapter = get_adapter(model)
    config = PruneConfig(method="wanda", sparsity=0.5, calib_samples=4, calib_seqlen=16)
    wanda = get_method("wanda")
    windows = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        prune_layerwise(model, adapter, windows, lambda W, H: wanda.prune_layer(W, H, 0.5, None), batch_size=2,
                        progress=False)
    planned = layerwise_flops(model, adapter, adapter.prunable_linears(model), config, wanda)
    norms = 2 * 2 * 2 * 32 * 4 * 16 * 2  # the plan counts the blocks' norm weights as matmul work; they are not
    assert planned["pass"] + planned["statistics"] - norms == counter.get_total_flops()
    linears = adapter.prunable_linears(model).values()
    assert planned["solve"] == sum(3 * lin.out_features * lin.in_features for lin in linears)  # no matmul


def _write_config(model, folder: Path) -> Path:
    path = folder / "config.json"
    path.write_text(json.dumps(model.config.to_dict()))
    return path


def test_plan_prices_a_layerwise_method_by_its_own_work_not_an_llm_surgeon_shot(tmp_path):
    from llm_surgeon.planning.plan import plan_shot

    path = _write_config(tiny_llama(), tmp_path)
    plans = {m: plan_shot(str(path), PruneConfig(method=m, sparsity=0.5, calib_samples=8, calib_seqlen=16),
                          tflops=1.0) for m in ("sparsegpt", "wanda", "surgeon")}
    for method in ("sparsegpt", "wanda"):
        assert set(plans[method].flops) == {"pass", "statistics", "solve"}
        assert plans[method].seconds_per_shot == pytest.approx(sum(plans[method].flops.values()) / 1e12)
        assert plans[method].seconds_total == plans[method].seconds_per_shot  # one shot
    assert plans["sparsegpt"].flops["solve"] > plans["wanda"].flops["solve"]
    assert plans["wanda"].flops["pass"] < plans["surgeon"].flops["pass"]  # no head, no backward


def test_more_ranks_do_not_shorten_a_layerwise_pass_every_rank_runs_whole(tmp_path):
    from llm_surgeon.planning.plan import plan_shot

    path = _write_config(tiny_llama(), tmp_path)
    config = PruneConfig(method="sparsegpt", sparsity=0.5, calib_samples=8, calib_seqlen=16)
    one, two = (plan_shot(str(path), config, tflops=1.0, ranks=r) for r in (1, 2))
    assert two.seconds_per_shot == one.seconds_per_shot
    surgeon = PruneConfig(method="surgeon", sparsity=0.5, calib_samples=8, calib_seqlen=16)
    assert plan_shot(str(path), surgeon, tflops=1.0, ranks=2).seconds_per_shot < \
        plan_shot(str(path), surgeon, tflops=1.0, ranks=1).seconds_per_shot


def test_a_forward_only_shot_is_priced_as_the_counted_work_of_its_collection_pass(tmp_path):
    """ZipLM's shot collects input statistics only: the plan's pass and statistics are PyTorch's own count of
    the matmuls its collection runs (the blocks forward, no head, ``aᵀa`` of the curvature layers' inputs), far
    below an LLM Surgeon shot's forward and backward through the head."""
    from torch.utils.flop_counter import FlopCounterMode

    from llm_surgeon.curvature.collectors import CurvatureRequest, LocalCollector
    from llm_surgeon.planning.fit import collects_gradients
    from llm_surgeon.planning.plan import _meta_run, shot_flops

    model = tiny_llama(attn_implementation="eager")
    adapter = get_adapter(model)
    config = PruneConfig(method="ziplm", granularity="structured", sparsity=0.2, calib_samples=4, calib_seqlen=16)
    parts = _meta_run(str(_write_config(model, tmp_path)), config)[3]
    assert not collects_gradients(parts.method)
    linears = adapter.prunable_linears(model)
    curvature = {name: linears[name] for name in parts.selector.curvature_layers(parts.method)}
    windows = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        LocalCollector(batch_size=2, progress=False).collect(model, adapter, curvature, windows,
                                                             CurvatureRequest(with_gradients=False), seed=0)
    widths = adapter.distinct_input_widths(model)
    planned = shot_flops(model, adapter, linears, config, widths, curvature, backward=False)
    norms = 2 * 2 * 32 * 4 * 16 * 2  # the blocks' norm weights, counted by the plan as matmul work; they are not
    assert planned["pass"] + planned["statistics"] - norms == counter.get_total_flops()
    assert planned["pass"] < shot_flops(model, adapter, linears, config, widths, curvature)["pass"] / 2


def test_a_forward_only_shot_moves_hidden_states_across_devices_one_way(tmp_path):
    """Blocks split over two devices: LLM Surgeon's pass sends hidden states forward and gradients back,
    ZipLM's forward-only pass only the states, half the bytes for the same tokens."""
    from llm_surgeon.planning.plan import plan_shot

    path = str(_write_config(tiny_llama(), tmp_path))
    moved = {m: plan_shot(path, PruneConfig(method=m, granularity="structured", sparsity=0.2, calib_samples=8,
                                            calib_seqlen=16), tflops=1.0, devices=2).communication_bytes
             for m in ("surgeon", "ziplm")}
    assert moved["surgeon"]["device_boundaries"] > 0
    assert moved["ziplm"]["device_boundaries"] * 2 == moved["surgeon"]["device_boundaries"]
