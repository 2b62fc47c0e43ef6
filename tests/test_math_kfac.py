"""KFAC factors and damping against explicit sums."""

import torch
from torch import nn

from llm_surgeon.math.kfac import damp, spd_inverse
from llm_surgeon.models.adapters import get_adapter
from tests.conftest import collect_factors, damped_factors, tiny_llama


def test_damping_is_relative_to_each_factors_mean_diagonal():
    M = torch.diag(torch.tensor([1.0, 3.0]))
    out = damp(M, 0.5)
    assert torch.allclose(out, torch.diag(torch.tensor([2.0, 4.0])))
    assert torch.allclose(damp(100 * M, 0.5), 100 * out)


def test_spd_inverse_matches_linalg_inverse():
    X = torch.randn(10, 6)
    M = X.T @ X + 0.1 * torch.eye(6)
    assert torch.allclose(spd_inverse(M) @ M, torch.eye(6), atol=1e-4)


def test_prepare_factors_damps_g_and_a_separately():
    G, A = torch.eye(3) * 2, torch.eye(4) * 10
    f = damped_factors(G, A, damp_g=0.5, damp_a=0.1)
    assert torch.allclose(f.G, torch.eye(3) * 3)
    assert torch.allclose(f.A, torch.eye(4) * 11)
    assert torch.allclose(f.G_inv, torch.eye(3) / 3)


def _explicit_factors(model, linear: nn.Linear, windows, fisher_labels=None):
    """A and G from per-token activations and output gradients captured one by one."""
    acts, grads = [], []

    def fwd(module, inputs, output):
        acts.append(inputs[0].detach().reshape(-1, inputs[0].shape[-1]))
        output.register_hook(lambda g: grads.append(g.detach().reshape(-1, g.shape[-1])))

    handle = linear.register_forward_hook(fwd)
    for window in windows:
        ids = window[None]
        logits = model(input_ids=ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                 reduction="sum")
        model.zero_grad()
        loss.backward()
    handle.remove()
    a = torch.cat(acts)
    g = torch.cat(grads)
    A = sum(torch.outer(x, x) for x in a) / a.shape[0]
    G = sum(torch.outer(x, x) for x in g) / g.shape[0]
    return A, G


def test_kfac_factors_equal_explicit_sums(calibration):
    model = tiny_llama()
    linears = get_adapter(model).prunable_linears(model)
    factors = collect_factors(model, linears, calibration, batch_size=3)
    # Only activation gradients were computed, and parameters keep their requires_grad.
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    for name in ["model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]:
        A, G = _explicit_factors(model, linears[name], calibration)
        assert torch.allclose(factors[name].A, A, rtol=1e-4, atol=1e-6), name
        assert torch.allclose(factors[name].G, G, rtol=1e-3, atol=1e-9), name


def test_true_fisher_differs_from_empirical_and_is_seeded(calibration):
    model = tiny_llama()
    linears = get_adapter(model).prunable_linears(model)
    name = "model.layers.0.mlp.up_proj"
    emp = collect_factors(model, linears, calibration, fisher="empirical")[name]
    t1 = collect_factors(model, linears, calibration, fisher="true", seed=3)[name]
    t2 = collect_factors(model, linears, calibration, fisher="true", seed=3)[name]
    assert torch.allclose(emp.A, t1.A)  # inputs do not depend on the labels
    assert not torch.allclose(emp.G, t1.G)
    assert torch.equal(t1.G, t2.G)


def test_indefinite_curvature_gets_more_damping_once_then_a_clear_error():
    import pytest

    from llm_surgeon.curvature.factors import damped_or_raise as _damped
    from llm_surgeon.errors import LLMSurgeonError

    indefinite = torch.diag(torch.tensor([1.0, 1.0, -0.25]))  # PD only with 10x the relative damping
    with pytest.warns(UserWarning, match="retrying with 10x damping"):
        damped, inverse = _damped("layer.x", indefinite, 0.1)
    assert torch.allclose(damped @ inverse, torch.eye(3), atol=1e-5)
    with pytest.raises(LLMSurgeonError, match="layer.y"), pytest.warns(UserWarning):
        _damped("layer.y", torch.full((3, 3), float("nan")), 0.1)
