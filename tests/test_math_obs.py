"""Costs, Kronecker OBS update and global threshold against explicit dense references."""

import pytest
import torch

from llm_surgeon import PruneConfig, prune
from llm_surgeon.errors import ConfigError
from llm_surgeon.math.costs import element_costs, nm_group_costs, nm_group_element_mask
from llm_surgeon.math.obs import independent_obs_start, kronecker_obs_update, removed_set_obs_update
from llm_surgeon.math.selection import nm_violations, select_nm, select_unstructured
from llm_surgeon.math.threshold import linear_schedule, select_cheapest
from tests.conftest import damped_factors, dense_obs_minimiser, spd, tiny_llama


def test_kronecker_obs_update_equals_exact_dense_minimiser():
    torch.manual_seed(0)
    W = torch.randn(5, 7, dtype=torch.float64)
    G, A = spd(5, 1), spd(7, 2)
    f = damped_factors(G, A, 0.1, 0.1)
    remove = torch.rand(5, 7) < 0.4
    expected, loss = dense_obs_minimiser(W, remove, f.G, f.A)
    got, stats = kronecker_obs_update(W, remove, f.G, f.A, f.G_inv, f.A_inv, max_iterations=200, tolerance=1e-12)
    assert torch.allclose(got, expected, atol=1e-8)
    assert torch.all(got[remove] == 0)
    assert abs(stats.loss_after - float(loss)) < 1e-8
    assert stats.loss_after <= stats.loss_no_update


def test_single_element_update_matches_closed_form_cost():
    """Removing one weight: loss increase equals ½ w²/([G⁻¹]_ii [A⁻¹]_jj), the element cost."""
    W = torch.randn(4, 6, dtype=torch.float64)
    f = damped_factors(spd(4, 3), spd(6, 4), 0.1, 0.1)
    remove = torch.zeros(4, 6, dtype=torch.bool)
    remove[2, 3] = True
    _, stats = kronecker_obs_update(W, remove, f.G, f.A, f.G_inv, f.A_inv, max_iterations=100, tolerance=1e-14)
    cost = element_costs(W, f.G_inv.diagonal(), f.A_inv.diagonal())[2, 3]
    assert abs(stats.loss_after - float(cost)) < 1e-9 * max(1.0, float(cost))


def test_truncated_update_is_feasible_and_never_worse_than_no_update():
    W = torch.randn(16, 24)
    f = damped_factors(spd(16, 5).float(), spd(24, 6).float(), 0.01, 0.01)
    remove = torch.rand(16, 24) < 0.5
    prev = None
    for iters in (0, 1, 3, 10):
        new, stats = kronecker_obs_update(W, remove, f.G, f.A, f.G_inv, f.A_inv, max_iterations=iters, tolerance=0)
        assert torch.all(new[remove] == 0)
        assert stats.loss_after <= stats.loss_no_update * (1 + 1e-5)
        if prev is not None:
            assert stats.loss_after <= prev * (1 + 1e-5)
        prev = stats.loss_after


def test_global_threshold_selects_exact_count_with_ties():
    costs = [torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 5.0]]), torch.zeros(2, 2), torch.tensor([float("-inf"), 3.0])]
    for k in range(0, 13):
        masks = select_cheapest(costs, k)
        assert sum(int(m.sum()) for m in masks) == k
        if k >= 1:
            assert masks[2][0]  # already removed (-inf) always selected first


def test_global_threshold_picks_cheapest_across_layers():
    a = torch.tensor([[0.1, 0.9], [0.8, 0.7]])
    b = torch.tensor([[0.2, 0.3, 0.05]])
    ma, mb = select_cheapest([a, b], 3)
    assert ma.tolist() == [[True, False], [False, False]]
    assert mb.tolist() == [[True, False, True]]


def test_masks_persist_across_shots():
    torch.manual_seed(0)
    costs = {"a": torch.rand(8, 8), "b": torch.rand(4, 16)}
    removed = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in costs.items()}
    for fraction in linear_schedule(0.6, 4):
        new_costs = {k: torch.rand_like(v) for k, v in costs.items()}  # curvature changes every shot
        masks = select_unstructured(new_costs, removed, fraction)
        for k in masks:
            assert torch.all(masks[k][removed[k]])
        assert sum(int(m.sum()) for m in masks.values()) == round(fraction * 128)
        removed = masks


def test_per_layer_scope_gives_each_layer_the_target():
    costs = {"a": torch.rand(8, 8), "b": torch.rand(4, 16) * 100}
    removed = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in costs.items()}
    masks = select_unstructured(costs, removed, 0.25, scope="layer")
    assert int(masks["a"].sum()) == 16 and int(masks["b"].sum()) == 16


def test_linear_schedule():
    schedule = linear_schedule(0.5, 5)
    assert len(schedule) == 5 and schedule[-1] == 0.5
    assert all(abs(s - 0.1 * (t + 1)) < 1e-12 for t, s in enumerate(schedule))


def test_nm_group_costs_and_masks_stay_within_rows():
    costs = torch.tensor([[4.0, 1.0, 3.0, 2.0, 9.0, 8.0, 0.0, 1.0]])
    assert nm_group_costs(costs, 2, 4).tolist() == [[3.0, 1.0]]
    assert nm_group_element_mask(costs, 2, 4).tolist() == [[False, True, False, True, False, False, True, True]]


def test_nm_selection_grows_and_finishes_in_pattern():
    torch.manual_seed(0)
    shape = {"a": (6, 8), "b": (3, 16)}
    removed = {k: torch.zeros(s, dtype=torch.bool) for k, s in shape.items()}
    for fraction in linear_schedule(1.0, 3):
        costs = {k: torch.rand(s) for k, s in shape.items()}
        masks = select_nm(costs, removed, 2, 4, fraction)
        for k in masks:
            assert torch.all(masks[k][removed[k]])
        removed = masks
    for k, m in removed.items():
        W = torch.ones(shape[k]).masked_fill(m, 0)
        assert nm_violations(W, 2, 4) == 0
        assert float(m.float().mean()) == 0.5


def test_warm_started_update_reaches_the_same_minimiser_and_is_exact_at_once_for_one_weight():
    """From the independent single-weight updates PCG still ends at the dense KKT minimiser; for one removed
    weight that start is the optimum already (0 steps: the loss is the element cost ½ w²/([G⁻¹]_ii [A⁻¹]_jj))."""
    torch.manual_seed(3)
    W = torch.randn(5, 7, dtype=torch.float64)
    f = damped_factors(spd(5, 7), spd(7, 8), 0.1, 0.1)
    remove = torch.rand(5, 7) < 0.4
    expected, loss = dense_obs_minimiser(W, remove, f.G, f.A)
    seen = []
    got, stats = kronecker_obs_update(W, remove, f.G, f.A, f.G_inv, f.A_inv, max_iterations=200, tolerance=1e-12,
                                      warm_start=True, on_iteration=lambda k, delta, rel: seen.append((k, rel)))
    assert torch.allclose(got, expected, atol=1e-8) and torch.all(got[remove] == 0)
    assert abs(stats.loss_after - float(loss)) < 1e-8
    assert [k for k, _ in seen] == list(range(1, stats.iterations + 1)) and seen[-1][1] == stats.relative_residual
    one = torch.zeros(5, 7, dtype=torch.bool)
    one[1, 4] = True
    start = W + independent_obs_start(W, one, f.G_inv, f.A_inv)
    exact, _ = dense_obs_minimiser(W, one, f.G, f.A)
    assert torch.allclose(start, exact, atol=1e-10)
    _, stats = kronecker_obs_update(W, one, f.G, f.A, f.G_inv, f.A_inv, max_iterations=0, warm_start=True)
    cost = element_costs(W, f.G_inv.diagonal(), f.A_inv.diagonal())[1, 4]
    assert abs(stats.loss_after - float(cost)) < 1e-9 * max(1.0, float(cost))


def test_update_start_reaches_the_run_and_is_refused_where_it_does_nothing(calibration):
    """The same masks either way (the start changes the update, not the selection); on this tiny model the
    independent start leaves less of the quadratic loss after the same PCG steps. Other methods and
    structured pruning have no such update: the flag is refused there in one line."""
    results = {}
    for start in ("zeroed", "independent"):
        config = PruneConfig(sparsity=0.5, shots=1, update_iterations=3, update_tolerance=0.0, update_start=start)
        results[start] = prune(tiny_llama(seed=4), calibration, config, progress=False)
    assert all(torch.equal(results["zeroed"].masks[n], m) for n, m in results["independent"].masks.items())
    reductions = {start: r.shots[0].update_loss_reduction for start, r in results.items()}
    assert reductions["independent"] > reductions["zeroed"] > 0
    for bad in (PruneConfig(method="sparsegpt", update_start="zeroed"),
                PruneConfig(granularity="structured", update_start="zeroed"), PruneConfig(update_start="x")):
        with pytest.raises(ConfigError, match="update start|--update-start"):
            bad.validate()


def test_cg_on_the_removed_set_reaches_the_same_minimiser_and_starts_at_the_independent_updates():
    """CG on the removed weights' multipliers ends at the dense KKT minimiser, as the kept-set PCG does; with no
    step it is the independent single-weight start, and every iterate is feasible (exact zeros removed)."""
    torch.manual_seed(5)
    W = torch.randn(6, 8, dtype=torch.float64)
    f = damped_factors(spd(6, 9), spd(8, 10), 0.1, 0.1)
    remove = torch.rand(6, 8) < 0.5
    expected, loss = dense_obs_minimiser(W, remove, f.G, f.A)
    seen = []
    got, stats = removed_set_obs_update(W, remove, f.G, f.A, f.G_inv, f.A_inv, max_iterations=200,
                                        tolerance=1e-12, on_iteration=lambda k, delta, rel: seen.append(delta))
    assert torch.allclose(got, expected, atol=1e-8) and torch.all(got[remove] == 0)
    assert abs(stats.loss_after - float(loss)) < 1e-8 and 0 < stats.iterations <= int(remove.sum())
    assert all(torch.equal(delta[remove], -W[remove]) for delta in seen)
    start, zero_steps = removed_set_obs_update(W, remove, f.G, f.A, f.G_inv, f.A_inv, max_iterations=0)
    assert torch.allclose(start, W + independent_obs_start(W, remove, f.G_inv, f.A_inv), atol=1e-12)
    assert zero_steps.iterations == 0 and zero_steps.loss_no_update == pytest.approx(stats.loss_no_update)


def test_update_solver_reaches_the_run_and_is_refused_where_it_does_nothing(calibration):
    """The same masks with either solver (the solver changes the update, not the selection); each records its
    own update; the removed-set solver is refused with the zeroed start and outside unstructured / N:M surgeon."""
    results = {}
    for solver in ("kept", "removed"):
        config = PruneConfig(sparsity=0.5, shots=1, update_iterations=3, update_tolerance=0.0, update_solver=solver)
        results[solver] = prune(tiny_llama(seed=4), calibration, config, progress=False)
    assert all(torch.equal(results["kept"].masks[n], m) for n, m in results["removed"].masks.items())
    reductions = {solver: r.shots[0].update_loss_reduction for solver, r in results.items()}
    assert reductions["removed"] != reductions["kept"] and min(reductions.values()) > 0
    for bad in (PruneConfig(method="sparsegpt", update_solver="removed"),
                PruneConfig(granularity="structured", update_solver="removed"),
                PruneConfig(update_solver="removed", update_start="zeroed"), PruneConfig(update_solver="x")):
        with pytest.raises(ConfigError, match="update solver|--update-solver"):
            bad.validate()
