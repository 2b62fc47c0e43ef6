"""``benchmarks/allocation_by_block.py``'s parts on a tiny model, so the diagnostic cannot rot unseen."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.conftest import REPO, tiny_llama

_spec = importlib.util.spec_from_file_location("allocation_by_block", REPO / "benchmarks" / "allocation_by_block.py")
allocation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(allocation)


def test_block_rms_is_that_of_the_models_own_hidden_states_and_layers_are_watched():
    model = tiny_llama(num_hidden_layers=3)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    rms = allocation.output_rms(model, ids)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    for i in range(2):  # the last entry of hidden_states is after the final norm: compare the others
        assert rms["block"][i] == pytest.approx(float(hidden[i + 1].double().pow(2).mean().sqrt()), rel=1e-5)
    assert set(rms) == {"q", "o", "down", "block"} and all(len(v) == 3 and min(v) > 0 for v in rms.values())
    assert rms["q"] != rms["o"] != rms["down"]  # each watched layer's own output, not one value copied


def test_removed_shares_are_read_from_both_kinds_of_report():
    structured = {"structure": {"layers": [{"ffn_width_kept": 48, "ffn_width_before": 64},
                                           {"ffn_width_kept": 16, "ffn_width_before": 64}]}}
    assert allocation.removed_by_block(structured, 2) == {"down": [0.25, 0.75]}
    per_layer = {f"model.layers.{i}.{path}": 0.1 * (i + 1) for i in range(2) for path in allocation.OUTPUTS.values()}
    unstructured = allocation.removed_by_block({"per_layer_sparsity": per_layer}, 2)
    assert unstructured["q"] == pytest.approx([0.1, 0.2]) and set(unstructured) == {"q", "o", "down"}
