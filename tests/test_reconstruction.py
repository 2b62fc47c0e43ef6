"""Reconstruction after a shot: each layer's fit equals an explicit least-squares solve on activations captured
here from the dense and the re-fitted model; the stages of a block follow its data flow; masks, N:M
patterns and removed structures are kept; block errors fall; a resumed reconstructing run needs the dense
weights."""

from __future__ import annotations

import copy

import pytest
import torch

from llm_surgeon import PruneConfig, prune
from llm_surgeon.engine.pruner import PruneResult, prune_model
from llm_surgeon.engine.reconstruction import reconstruct, snapshot_dense
from llm_surgeon.errors import ConfigError
from llm_surgeon.math.selection import nm_violations
from llm_surgeon.models.adapters import get_adapter
from tests.conftest import tiny_llama, tiny_opt

DAMP = 0.01


def _layer_inputs(model, name: str, windows: torch.Tensor) -> torch.Tensor:
    rows = []
    handle = model.get_submodule(name).register_forward_hook(
        lambda module, args, output: rows.append(args[0].detach().reshape(-1, args[0].shape[-1]).double()))
    with torch.no_grad():
        for batch in windows.split(4):
            model(input_ids=batch, use_cache=False)
    handle.remove()
    return torch.cat(rows)


def _explicit_fit(W_dense, b_dense, b_now, X, X_dense, keep) -> torch.Tensor:
    """Per row: the least squares of the dense outputs on the pruned inputs plus a ridge toward the dense
    weights, on the kept support."""
    H = X.T @ X
    ridge = DAMP * H.diagonal().mean()
    H = H + ridge * torch.eye(H.shape[0], dtype=H.dtype)
    targets = X_dense @ W_dense.double().T + (0 if b_dense is None else (b_dense - b_now).double())
    B = targets.T @ X + ridge * W_dense.double()
    W = torch.zeros_like(W_dense, dtype=torch.float64)
    for i in range(W.shape[0]):
        S = keep[i].nonzero().squeeze(1)
        if S.numel():
            W[i, S] = torch.linalg.solve(H[S][:, S], B[i, S])
    return W


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_each_layer_of_the_first_block_equals_an_explicit_least_squares_fit(family, calibration):
    model = tiny_llama(seed=2) if family == "llama" else tiny_opt(seed=2)
    dense_model = copy.deepcopy(model)
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    dense = snapshot_dense(linears)
    result = prune(model, calibration, PruneConfig(method="magnitude", sparsity=0.5, shots=1), progress=False)
    names = [name for name in linears if name.startswith(f"{adapter.blocks_path}.0.")]
    record = reconstruct(model, adapter, result.masks, dense, calibration, batch_size=4, iterations=300,
                         damp=DAMP, progress=False)
    for name in names:  # a layer's input depends only on the layers before it, already final
        X, X_dense = _layer_inputs(model, name, calibration), _layer_inputs(dense_model, name, calibration)
        bias = linears[name].bias
        expected = _explicit_fit(dense[name][0], dense[name][1], None if bias is None else bias.detach(), X, X_dense,
                                 ~result.masks[name])
        torch.testing.assert_close(linears[name].weight.detach().double(), expected, rtol=2e-3, atol=2e-5, msg=name)
    assert all(after < before for before, after in zip(record.block_error_before, record.block_error_after,
                                                       strict=True))


@pytest.mark.parametrize("granularity", ["unstructured", "2:4", "structured"])
def test_reconstructing_runs_keep_their_pattern_and_lower_every_blocks_error(granularity, calibration):
    model = tiny_llama(seed=3)
    config = PruneConfig(granularity=granularity, sparsity=0.3 if granularity == "structured" else 0.5, shots=2,
                         reconstruct=True)
    result = prune(model, calibration, config, progress=False)
    linears = get_adapter(model).prunable_linears(model)
    for name, lin in linears.items():
        assert bool((lin.weight[result.masks[name]] == 0).all()), name
        if granularity == "2:4":
            assert nm_violations(lin.weight.detach(), 2, 4) == 0
    for shot in result.shots:
        assert shot.seconds_reconstruction > 0 and shot.reconstruction_iterations_mean > 0
        assert 0 < shot.reconstruction_error_after < shot.reconstruction_error_before


def test_sparsegpt_then_reconstruction_and_resuming_without_the_dense_weights(calibration):
    model = tiny_llama(seed=4)
    result = prune(model, calibration, PruneConfig(method="sparsegpt", sparsity=0.5, reconstruct=True),
                   progress=False)
    assert result.shots[0].reconstruction_error_after < result.shots[0].reconstruction_error_before
    resumed = PruneResult(config=result.config, masks=result.masks, shots=result.shots[:1])
    with pytest.raises(ConfigError, match="needs the dense weights"):
        prune_model(tiny_llama(seed=4), calibration, PruneConfig(sparsity=0.5, shots=2, reconstruct=True),
                    progress=False, start=resumed)


def test_the_stages_of_a_block_follow_its_data_flow(calibration):
    from llm_surgeon.engine.layerwise import capture_block_inputs
    from llm_surgeon.engine.reconstruction import fit_stages

    model = tiny_llama()
    adapter = get_adapter(model)
    block = adapter.blocks(model)[0]
    probe = capture_block_inputs(model, adapter, calibration, 4)[0]
    assert fit_stages(block, adapter.block_linear_names(block), probe) == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]


def test_the_cli_reconstructs_and_reports_it_beside_its_memory_estimate(tmp_path):
    import json

    from tests.conftest import run_cli, write_fake_wikitext, write_tiny_checkpoint

    model = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    out = tmp_path / "out"
    proc = run_cli("prune", str(model), "--out", str(out), "--method", "sparsegpt", "--sparsity", "0.5",
                   "--calib-samples", "4", "--calib-seqlen", "32", "--data-dir", str(data), "--reconstruct",
                   "--reconstruct-iterations", "5", "--no-progress")
    report = json.loads((out / "report.json").read_text())
    shot = report["shot_records"][0]
    assert shot["seconds_reconstruction"] > 0 and 0 < shot["reconstruction_iterations_mean"] <= 5
    assert report["config"]["reconstruct"] and report["seconds"]["reconstruction"] > 0
    assert report["memory_estimate"]["reconstruction_mb"] > 0
    assert "reconstruction" in proc.stdout + proc.stderr


def test_experts_are_refitted_on_their_own_tokens_with_their_zeros_kept(calibration):
    from tests.test_experts import tiny_mixtral

    model = tiny_mixtral(seed=6)
    result = prune(model, calibration, PruneConfig(sparsity=0.5, shots=1, reconstruct=True), progress=False)
    linears = get_adapter(model).prunable_linears(model)
    experts = [name for name in linears if ".experts." in name]
    assert experts and all(bool((linears[n].weight[result.masks[n]] == 0).all()) for n in experts)
    shot = result.shots[0]
    assert 0 < shot.reconstruction_error_after < shot.reconstruction_error_before
