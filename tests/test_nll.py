"""The chunked next-token NLL gives every layer the gradients of the whole-batch loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_surgeon.models.adapters import get_adapter
from llm_surgeon.models.nll import backward_next_token_nll
from tests.conftest import tiny_llama


def _output_gradients(model, run) -> tuple[float, dict[str, torch.Tensor]]:
    grads: dict[str, torch.Tensor] = {}
    handles = []
    for name, lin in get_adapter(model).prunable_linears(model).items():
        def hook(module, inputs, output, name=name):
            output.register_hook(lambda g: grads.__setitem__(name, g.detach().clone()))
        handles.append(lin.register_forward_hook(hook))
    try:
        loss = run()
    finally:
        for h in handles:
            h.remove()
    return loss, grads


def _whole_batch(model, ids, mean: bool) -> float:
    logits = model(input_ids=ids).logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                           reduction="mean" if mean else "sum")
    loss.backward()
    return float(loss.detach())


@pytest.mark.parametrize("mean", [False, True])
def test_chunked_loss_and_gradients_equal_the_whole_batch(tiny_model, calibration, mean):
    ids = calibration[:3]
    ref_loss, ref = _output_gradients(tiny_model, lambda: _whole_batch(tiny_model, ids, mean))
    tiny_model.zero_grad(set_to_none=True)
    adapter = get_adapter(tiny_model)
    loss, got = _output_gradients(tiny_model,
                                  lambda: backward_next_token_nll(tiny_model, adapter, ids, mean, chunk_tokens=7))
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert set(got) == set(ref) and len(got) > 0
    for name in ref:
        assert torch.allclose(got[name], ref[name], rtol=1e-4, atol=1e-6), name  # float32 sums of ~1 (CPU-dependent)


def test_sampled_labels_are_seeded(calibration):
    model = tiny_llama()
    runs = []
    for seed in (3, 3, 4):
        model.zero_grad(set_to_none=True)
        loss = backward_next_token_nll(model, get_adapter(model), calibration[:2], mean=False,
                                       sample_labels=torch.Generator().manual_seed(seed), chunk_tokens=5)
        runs.append(loss)
    assert runs[0] == runs[1] != runs[2]
