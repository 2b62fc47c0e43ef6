"""Baselines against explicit references, and every method's target and pattern on tiny models."""

from __future__ import annotations

import pytest
import torch

from llm_surgeon import PruneConfig, prune
from llm_surgeon.engine.pruner import sparsity_stats, validate_nm
from llm_surgeon.math.sparsegpt import sparsegpt_prune
from llm_surgeon.math.wanda import per_row_mask, wanda_scores
from llm_surgeon.methods import UNSTRUCTURED, method_class, method_names
from llm_surgeon.methods.obd import KroneckerOBD, LayerOBD
from llm_surgeon.models.adapters import get_adapter
from tests.conftest import collect_factors, tiny_llama


def _hessian(c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4 * c, c, generator=g, dtype=torch.float64)
    return X.T @ X


def _sequential_obs_row(w: torch.Tensor, H: torch.Tensor, remove: torch.Tensor) -> torch.Tensor:
    """OBS in column order for one row: remove column j (if masked) using the inverse Hessian of
    the columns not yet fixed (j..c-1), updating only those; explicit inverses, no Cholesky tricks."""
    w = w.clone()
    for j in range(w.numel()):
        if remove[j]:
            inv = torch.linalg.inv(H[j:, j:])
            w[j:] -= w[j] / inv[0, 0] * inv[0, :]
            w[j] = 0.0
    return w


def test_sparsegpt_single_block_equals_sequential_obs_row_by_row():
    torch.manual_seed(0)
    W = torch.randn(6, 12, dtype=torch.float64)
    H = _hessian(12, 1)
    pruned, mask = sparsegpt_prune(W, H, sparsity=0.5, block_size=12, damp=0.01)
    H_damped = H + 0.01 * H.diagonal().mean() * torch.eye(12, dtype=torch.float64)
    for r in range(6):
        expected = _sequential_obs_row(W[r], H_damped, mask[r])
        assert torch.allclose(pruned[r], expected, atol=1e-9)
    # The mask is the adaptive one: lowest w² / [H_{j:,j:}⁻¹]_00 over the block.
    d = torch.stack([torch.linalg.inv(H_damped[j:, j:])[0, 0] for j in range(12)])
    scores = W.pow(2) / d[None, :]
    assert torch.equal(mask.reshape(-1), scores.reshape(-1) <= scores.reshape(-1).kthvalue(36).values)
    assert int(mask.sum()) == 36 and torch.all(pruned[mask] == 0)


def test_sparsegpt_nm_and_lazy_blocks():
    torch.manual_seed(1)
    W = torch.randn(8, 16, dtype=torch.float64)
    H = _hessian(16, 2)
    single, mask_single = sparsegpt_prune(W, H, nm=(2, 4), block_size=16)
    blocked, mask_blocked = sparsegpt_prune(W, H, nm=(2, 4), block_size=4)
    assert torch.equal(mask_single, mask_blocked)  # N:M masks are chosen per group, so block size cannot matter
    assert torch.allclose(single, blocked, atol=1e-9)  # lazy batched updates are exact
    assert torch.all((blocked.reshape(8, 4, 4) == 0).sum(-1) >= 2)


def test_wanda_mask_matches_explicit_per_row_scores():
    torch.manual_seed(2)
    W = torch.randn(5, 10)
    X = torch.randn(64, 10) * torch.linspace(0.1, 3, 10)
    H = X.T @ X
    mask = per_row_mask(wanda_scores(W, H.diagonal()), 0.4)
    norms = X.norm(dim=0)
    for r in range(5):
        metric = [abs(float(W[r, j])) * float(norms[j]) for j in range(10)]
        expected = sorted(range(10), key=lambda j: metric[j])[:4]
        assert sorted(mask[r].nonzero().squeeze(1).tolist()) == sorted(expected)


def test_obd_costs_are_the_diagonal_formulas(calibration):

    model = tiny_llama()
    linears = get_adapter(model).prunable_linears(model)
    name = "model.layers.0.mlp.up_proj"
    f = collect_factors(model, linears, calibration)[name]
    W = linears[name].weight.detach()
    kobd = KroneckerOBD().element_costs(W, f)
    lobd = LayerOBD().element_costs(W, f)
    i, j = 3, 5
    assert torch.isclose(kobd[i, j], 0.5 * W[i, j] ** 2 * f.G[i, i] * f.A[j, j])
    assert torch.isclose(lobd[i, j], 0.5 * W[i, j] ** 2 * f.A[j, j])


def test_diagonal_only_curvature_equals_the_diagonals_of_the_full_factors(calibration):
    """K-OBD and L-OBD collect only diagonals; their costs must not change because of it."""

    model = tiny_llama()
    linears = get_adapter(model).prunable_linears(model)
    full = collect_factors(model, linears, calibration, batch_size=3)
    diagonal = collect_factors(model, linears, calibration, batch_size=3,
                                         diagonal_only=True)
    inputs_only = collect_factors(model, linears, calibration, batch_size=3,
                                            with_gradients=False, diagonal_only=True)
    assert KroneckerOBD.diagonal_only and LayerOBD.diagonal_only
    for name, lin in linears.items():
        d = diagonal[name]
        assert d.A.shape == (lin.in_features,) and d.G.shape == (lin.out_features,)
        assert torch.allclose(d.A, full[name].A.diagonal(), rtol=1e-4, atol=1e-7)
        assert torch.allclose(d.G, full[name].G.diagonal(), rtol=1e-4, atol=1e-9)
        assert torch.allclose(inputs_only[name].A, d.A, rtol=1e-5) and inputs_only[name].G is None
        W = lin.weight.detach()
        assert torch.allclose(KroneckerOBD().element_costs(W, d), KroneckerOBD().element_costs(W, full[name]),
                              rtol=1e-3, atol=1e-12)
        assert torch.allclose(LayerOBD().element_costs(W, d), LayerOBD().element_costs(W, full[name]), rtol=1e-4)


@pytest.mark.parametrize("method", [m for m in method_names() if method_class(m).supports(UNSTRUCTURED)])
@pytest.mark.parametrize("granularity", ["unstructured", "2:4"])
def test_each_method_reaches_target_and_pattern(tiny_model, calibration, method, granularity):
    result = prune(tiny_model, calibration, PruneConfig(method=method, granularity=granularity, sparsity=0.5,
                                                        shots=2))
    linears = get_adapter(tiny_model).prunable_linears(tiny_model)
    achieved, _ = sparsity_stats(linears)
    assert abs(achieved - 0.5) <= 0.005
    if granularity == "2:4":
        assert validate_nm(linears, 2, 4)["valid"]
    if method == "wanda" and granularity == "unstructured":
        assert all(abs(v - 0.5) < 1e-9 for v in sparsity_stats(linears)[1].values())  # per-row comparison
    assert len(result.shots) == (1 if method in ("wanda", "sparsegpt") else 2)


def test_sparsegpt_beats_magnitude_on_calibration_loss(calibration):

    losses = {}
    for method in ("magnitude", "sparsegpt"):
        model = tiny_llama(seed=3)
        prune(model, calibration, PruneConfig(method=method, sparsity=0.6, shots=1))
        with torch.no_grad():
            losses[method] = float(model(input_ids=calibration, labels=calibration).loss)
    assert losses["sparsegpt"] < losses["magnitude"]


def test_ziplm_column_costs_and_update_are_the_layerwise_obs_minimiser():
    """G = I: removing columns C of W costs the least ½ tr(ΔW A ΔWᵀ) with W_C + ΔW_C = 0 (a dense KKT
    solve), and the update is that minimiser; rows cost nothing (they feed only the removed columns)."""
    from llm_surgeon.curvature.collectors import KroneckerFactors
    from llm_surgeon.methods.ziplm import ZipLMPruning
    from tests.conftest import dense_obs_minimiser, spd

    A = spd(6, seed=5)
    W = torch.randn(4, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    method, factors = ZipLMPruning(), KroneckerFactors(A=A, G=None, tokens=10)
    A_damped = A + 0.01 * A.diagonal().mean() * torch.eye(6, dtype=torch.float64)
    cols = torch.tensor([1, 4])
    remove = torch.zeros(4, 6, dtype=torch.bool)
    remove[:, cols] = True
    expected_W, expected_cost = dense_obs_minimiser(W, remove, torch.eye(4, dtype=torch.float64), A_damped)
    assert float(method.column_set_cost(W, cols, factors)) == pytest.approx(float(expected_cost), rel=1e-9)
    torch.testing.assert_close(method.remove_columns(W, cols, factors), expected_W, rtol=1e-9, atol=1e-12)
    for j in range(6):
        single = method.column_costs(W, factors)[j]
        assert float(single) == pytest.approx(float(method.column_set_cost(W, torch.tensor([j]), factors)), rel=1e-9)
    assert float(method.row_set_cost(W, torch.tensor([0]), factors)) == 0.0


def test_ziplm_structured_run_compensates_the_output_projections_only(calibration):
    model = tiny_llama(seed=5)
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = prune(model, calibration, PruneConfig(method="ziplm", granularity="structured", sparsity=0.3, shots=2),
                   progress=False)
    assert result.structure["removed_fraction"] >= 0.3
    linears = get_adapter(model).prunable_linears(model)
    for name, lin in linears.items():
        removed = result.masks[name]
        kept = lin.weight.detach()[~removed]
        if name.endswith(("o_proj", "down_proj")):
            if removed.any():  # the correlated update moved the kept columns
                assert not torch.equal(kept, dense[f"{name}.weight"][~removed])
        else:  # q/k/v and gate/up lose rows, nothing else
            assert torch.equal(kept, dense[f"{name}.weight"][~removed])
    with pytest.raises(Exception, match="supports the"):
        prune(tiny_llama(), calibration, PruneConfig(method="ziplm", sparsity=0.5), progress=False)
