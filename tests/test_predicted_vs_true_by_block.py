"""``benchmarks/predicted_vs_true_by_block.py``'s parts on a tiny model, so the diagnostic cannot rot unseen."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from llm_surgeon import PruneConfig, prune
from llm_surgeon.engine.structures import masks_from_state, structure_costs
from tests.conftest import REPO, tiny_llama

_spec = importlib.util.spec_from_file_location(
    "predicted_vs_true", REPO / "benchmarks" / "predicted_vs_true_by_block.py")
diagnostic = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = diagnostic  # its dataclass looks its module up
_spec.loader.exec_module(diagnostic)

CONFIG = PruneConfig(method="surgeon", granularity="structured", sparsity=0.4, shots=2, seed=0)


def _block0_only(selector, neurons: list[int]) -> dict[str, torch.Tensor]:
    """Masks removing the given FFN neurons of block 0 and nothing else."""
    state = [torch.zeros(len(u.parts), u.layout.ffn_width, dtype=torch.bool) for u in selector.units]
    state[0][0, neurons] = True
    groups = [torch.zeros(u.layout.kv_heads, dtype=torch.bool) for u in selector.units]
    return masks_from_state(selector.units, selector.name_of, state, groups)


def test_first_shot_selects_the_first_shots_share_and_leaves_the_weights_alone(calibration):
    model = tiny_llama(num_hidden_layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method, selector, factors, masks, empty = diagnostic.first_shot(model, calibration, CONFIG)
    removed = sum(int(m.sum()) for m in masks.values())
    assert removed > 0 and not any(bool(m.any()) for m in empty.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # selected, not applied


def test_one_neuron_s_joint_cost_is_its_single_cost_and_untouched_blocks_cost_nothing(calibration):
    model = tiny_llama(num_hidden_layers=3)
    method, selector, factors, _, empty = diagnostic.first_shot(model, calibration, CONFIG)
    predicted = diagnostic.predicted_by_block(method, selector, factors, _block0_only(selector, [5]))
    single = structure_costs(selector.units[0], method, selector._factors_of(factors, 0, torch.float64))[0][0, 5]
    assert predicted[0][0] == pytest.approx(float(single), rel=1e-9)
    assert predicted[0][1] == pytest.approx(float(single), rel=1e-6)
    assert predicted[1:] == [(0.0, 0.0), (0.0, 0.0)]
    two = diagnostic.predicted_by_block(method, selector, factors, _block0_only(selector, [5, 9]))[0]
    assert two[0] > predicted[0][0] and two[1] > 0  # the sum and the joint cost both see the second neuron


def test_true_losses_prune_one_block_at_a_time_and_restore_the_dense_model(calibration):
    model = tiny_llama(num_hidden_layers=3)
    method, selector, factors, _, empty = diagnostic.first_shot(model, calibration, CONFIG)
    masks = _block0_only(selector, [1, 2, 3, 4])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense_loss, true = diagnostic.true_by_block(model, method, selector, factors, masks, empty, calibration)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert dense_loss == pytest.approx(diagnostic.mean_nll(model, calibration))
    assert true[1] == (0.0, 1.0) and true[2] == (0.0, 1.0)  # nothing removed there: no change at all
    selector.apply(method, factors, masks, "all", False)  # the same removal through the run's own path
    assert true[0][0] == pytest.approx(diagnostic.mean_nll(model, calibration) - dense_loss, rel=1e-6, abs=1e-9)
    assert true[0][0] != 0.0 and true[0][1] != 1.0


def test_the_shot_trace_is_the_run_itself_and_prices_only_each_shots_new_removals(calibration):
    model, reference = tiny_llama(num_hidden_layers=3), tiny_llama(num_hidden_layers=3)
    trace = diagnostic.trace_shots(model, calibration, CONFIG, calibration[:4])
    assert len(trace.predicted) == 2 and len(trace.losses) == 3 and len(trace.shares) == 2
    assert all(b >= a for a, b in zip(trace.shares[0], trace.shares[1], strict=True)) and max(trace.shares[1]) > 0
    result = prune(reference, calibration, CONFIG, progress=False)  # the same run, unwatched: the same model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(),
                                                 strict=True))
    assert trace.losses[-1] == pytest.approx(diagnostic.mean_nll(reference, calibration[:4]))
    # after the run its removed structures are exact zeros: priced again on the pruned model they cost nothing
    method, selector, factors, _, _ = diagnostic.first_shot(reference, calibration, CONFIG)
    again = diagnostic.predicted_by_block(method, selector, factors, result.masks)
    assert any(int(m.sum()) for m in result.masks.values())
    assert all(summed == pytest.approx(0.0, abs=1e-12) and joint == pytest.approx(0.0, abs=1e-12)
               for summed, joint in again)


def test_new_removals_by_block_are_the_true_losses_of_the_touched_blocks_alone(calibration):
    model = tiny_llama(num_hidden_layers=3)
    method, selector, factors, _, empty = diagnostic.first_shot(model, calibration, CONFIG)
    masks = _block0_only(selector, [1, 2, 3, 4])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = diagnostic.new_removals_by_block(model, method, selector, factors, empty, masks, calibration)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    _, true = diagnostic.true_by_block(model, method, selector, factors, masks, empty, calibration)
    assert new[1:] == [None, None]  # nothing new there: not measured
    assert new[0] == pytest.approx(true[0][0], rel=1e-9) and new[0] != 0.0


def test_the_by_block_trace_leaves_the_run_as_it_is_and_measures_every_block_a_shot_removes_from(calibration):
    model, reference = tiny_llama(num_hidden_layers=3), tiny_llama(num_hidden_layers=3)
    trace = diagnostic.trace_shots(model, calibration, CONFIG, calibration[:4], by_block=True)
    prune(reference, calibration, CONFIG, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(),
                                                 strict=True))
    assert len(trace.true_by_block) == 2
    for k, by_block in enumerate(trace.true_by_block):
        before = trace.shares[k - 1] if k else [0.0] * len(by_block)
        for b, loss in enumerate(by_block):
            if trace.shares[k][b] > before[b]:  # the shot took FFN neurons from this block: measured
                assert loss is not None and loss == loss
            if loss is None:
                assert trace.predicted[k][b][1] == pytest.approx(0.0, abs=1e-12)  # nothing new: priced 0
    assert any(loss is not None for loss in trace.true_by_block[0])
