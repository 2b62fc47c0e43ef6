"""Joint N:M costs (``--nm-costs joint``): a group's weights priced together, against dense OBS references."""

from __future__ import annotations

import itertools

import pytest
import torch

from llm_surgeon import PruneConfig, prune
from llm_surgeon.errors import ConfigError
from llm_surgeon.math.costs import diagonal_blocks, element_costs, nm_joint_choice
from llm_surgeon.math.selection import nm_violations
from llm_surgeon.models.adapters import get_adapter
from tests.conftest import tiny_llama


def _spd(size: int, seed: int, correlated: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(size, 3 * size, generator=g, dtype=torch.float64)
    if correlated:
        X[1:] += 0.8 * X[:-1].clone()  # neighbouring inputs move together
    return X @ X.T / X.shape[1] + 0.1 * torch.eye(size, dtype=torch.float64)


def _dense_obs_cost(W, G, A, row: int, cols: list[int]) -> float:
    """Removing ``W[row, cols]`` with the best update of every other weight: min ½ δᵀFδ s.t. (W + δ)_S = 0,
    from the dense Fisher's inverse (vec row-major: index ``i * in + j``)."""
    F_inv = torch.linalg.inv(torch.kron(G, A))
    S = torch.tensor([row * W.shape[1] + c for c in cols])
    w = W.reshape(-1)[S]
    return float(0.5 * w @ torch.linalg.solve(F_inv[S][:, S], w))


def test_blocks_are_the_diagonal_blocks():
    A = torch.arange(64.0).reshape(8, 8)
    blocks = diagonal_blocks(A, 4)
    assert torch.equal(blocks[0], A[:4, :4]) and torch.equal(blocks[1], A[4:, 4:])


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (3, 4)])
def test_joint_costs_and_choice_equal_the_dense_obs_minimum(n, m):
    rows, cols = 3, 8
    G, A = _spd(rows, 0), _spd(cols, 1)
    W = torch.randn(rows, cols, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    costs, mask = nm_joint_choice(W, torch.linalg.inv(G).diagonal(), diagonal_blocks(torch.linalg.inv(A), m),
                                  torch.zeros_like(W, dtype=torch.bool), n, m)
    for i, g in itertools.product(range(rows), range(cols // m)):
        options = {S: _dense_obs_cost(W, G, A, i, [g * m + s for s in S]) for S in itertools.combinations(range(m), n)}
        best = min(options, key=options.get)
        assert costs[i, g].item() == pytest.approx(options[best], rel=1e-9)
        assert mask[i, g * m:(g + 1) * m].nonzero().squeeze(1).tolist() == list(best)


def test_uncorrelated_inputs_give_the_summed_single_costs():
    G, A = _spd(4, 3), torch.diag(torch.rand(8, dtype=torch.float64) + 0.5)
    W = torch.randn(4, 8, dtype=torch.float64)
    G_inv, A_inv = torch.linalg.inv(G), torch.linalg.inv(A)
    costs, mask = nm_joint_choice(W, G_inv.diagonal(), diagonal_blocks(A_inv, 4), torch.zeros_like(W, dtype=torch.bool),
                                  2, 4)
    single = element_costs(W, G_inv.diagonal(), A_inv.diagonal()).reshape(4, 2, 4)
    assert torch.allclose(costs, single.topk(2, dim=-1, largest=False).values.sum(-1))
    assert torch.equal(mask.reshape(4, 2, 4), single <= single.topk(2, dim=-1, largest=False).values[..., -1:])


def test_groups_with_removed_weights_keep_them_and_come_first():
    W = torch.randn(2, 8, dtype=torch.float64)
    removed = torch.zeros_like(W, dtype=torch.bool)
    removed[0, 1] = True  # one removed: the group adds its cheapest partner
    removed[1, 4:7] = True  # more than n removed: exactly those
    blocks = diagonal_blocks(torch.linalg.inv(_spd(8, 4)), 4)
    costs, mask = nm_joint_choice(W, torch.ones(2, dtype=torch.float64), blocks, removed, 2, 4)
    assert costs[0, 0] == float("-inf") and costs[1, 1] == float("-inf") and torch.isfinite(costs[0, 1])
    assert mask[0, 1] and int(mask[0, :4].sum()) == 2
    assert torch.equal(mask[1, 4:], removed[1, 4:])


def test_chunked_rows_give_the_same_choice_as_one_chunk():
    W = torch.randn(7, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    removed = torch.zeros_like(W, dtype=torch.bool)
    removed[2, 5] = removed[6, 12] = True
    G_inv_diag = torch.rand(7, dtype=torch.float64) + 0.5
    blocks = diagonal_blocks(torch.linalg.inv(_spd(16, 6)), 8)
    whole = nm_joint_choice(W, G_inv_diag, blocks, removed, 4, 8)
    row_by_row = nm_joint_choice(W, G_inv_diag, blocks, removed, 4, 8, chunk_elements=1)  # 4:8, one row a chunk
    assert torch.equal(whole[0], row_by_row[0]) and torch.equal(whole[1], row_by_row[1])


def test_joint_costs_are_the_nm_default():
    assert PruneConfig().nm_costs == "joint"
    PruneConfig(method="sparsegpt", granularity="2:4").validate()  # other methods ignore the default


def test_a_joint_run_meets_the_pattern_and_the_cheaper_quadratic(calibration):
    model = tiny_llama()
    prune(model, calibration, PruneConfig(method="surgeon", granularity="2:4", shots=2, nm_costs="joint"),
          progress=False)
    for lin in get_adapter(model).prunable_linears(model).values():
        assert nm_violations(lin.weight, 2, 4) == 0
        assert int((lin.weight == 0).sum()) == lin.weight.numel() // 2


@pytest.mark.parametrize("overrides", [dict(nm_costs="independent"),
                                       dict(nm_costs="independent", granularity="2:4", method="kobd"),
                                       dict(nm_costs="pairs", granularity="2:4")])
def test_nm_costs_outside_nm_surgeon_are_refused(overrides):
    with pytest.raises(ConfigError, match="N:M"):
        PruneConfig(**overrides).validate()
