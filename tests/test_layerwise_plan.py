"""The plan prices a layer-by-layer method's block (SparseGPT, Wanda), which it used to leave at zero."""

from __future__ import annotations

import pytest

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
