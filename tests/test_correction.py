"""The masked low-rank correction: its algebra, what it keeps, and that it lowers the loss it trains on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_surgeon import PruneConfig, prune
from llm_surgeon.engine.correction import MaskedLowRankDelta, attach_deltas, correct_with_lora, detach_deltas
from llm_surgeon.engine.pruner import sparsity_stats
from llm_surgeon.models.adapters import get_adapter
from tests.conftest import run_cli, tiny_llama, write_fake_wikitext, write_tiny_checkpoint


def _mean_nll(model, windows: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1]
        return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)))


def _random_removed(linears, fraction: float = 0.5, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    removed = {name: torch.rand(lin.weight.shape, generator=generator) < fraction for name, lin in linears.items()}
    with torch.no_grad():
        for name, lin in linears.items():
            lin.weight[removed[name]] = 0
    return removed


def test_delta_is_the_masked_product_and_starts_at_zero():
    keep = torch.rand(6, 5) > 0.4
    delta = MaskedLowRankDelta(keep.float(), rank=2, generator=torch.Generator().manual_seed(0))
    W = torch.randn(6, 5)
    assert torch.equal(delta(W), W)  # up starts at zero: the pruned model is the starting point
    with torch.no_grad():
        delta.up.normal_()
    explicit = W + keep.float() * (delta.up @ delta.down)
    assert torch.allclose(delta(W), explicit)
    assert torch.equal(delta(W)[~keep], W[~keep])
    full = MaskedLowRankDelta(torch.ones(6, 5), rank=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full.up.normal_()
    assert torch.linalg.matrix_rank(full(W) - W) == 2


def test_absorbing_keeps_the_forward_and_the_zeros():
    model = tiny_llama()
    linears = get_adapter(model).prunable_linears(model)
    removed = _random_removed(linears)
    attach_deltas(linears, removed, rank=3, seed=0)
    with torch.no_grad():
        for lin in linears.values():
            lin.parametrizations.weight[0].up.normal_(std=0.05)
    ids = torch.arange(12)[None]
    before = model(input_ids=ids).logits
    detach_deltas(linears, absorb=True)
    after = model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    for name, lin in linears.items():
        assert type(lin.weight) is torch.nn.Parameter
        assert torch.all(lin.weight[removed[name]] == 0)
        assert (lin.weight[~removed[name]] != 0).any()


def test_discarding_restores_the_weights():
    model = tiny_llama()
    linears = get_adapter(model).prunable_linears(model)
    removed = _random_removed(linears)
    saved = {name: lin.weight.detach().clone() for name, lin in linears.items()}
    attach_deltas(linears, removed, rank=3, seed=0)
    with torch.no_grad():
        for lin in linears.values():
            lin.parametrizations.weight[0].up.normal_()
    detach_deltas(linears, absorb=False)
    for name, lin in linears.items():
        assert torch.equal(lin.weight, saved[name])


def test_correction_lowers_the_training_loss_and_touches_nothing_else(calibration):
    model = tiny_llama()
    linears = get_adapter(model).prunable_linears(model)
    removed = _random_removed(linears, fraction=0.6)
    others = {n: p.detach().clone() for n, p in model.named_parameters() if not any(
        n == f"{name}.weight" for name in linears)}
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
    nll_before = _mean_nll(model, calibration)
    record = correct_with_lora(model, get_adapter(model), linears, removed, calibration, rank=4, lr=1e-2, epochs=5,
                               batch_size=2, seed=0, progress=False)
    nll_after = _mean_nll(model, calibration)
    assert nll_after < nll_before - 0.05
    assert record.steps == 5 * 4 and len(record.epoch_losses) == 5
    assert record.epoch_losses[-1] < record.epoch_losses[0]
    for name, lin in linears.items():
        assert torch.all(lin.weight[removed[name]] == 0)
    for n, p in model.named_parameters():
        assert p.requires_grad == grads_before[n]
        if n in others:
            assert torch.equal(p, others[n]), n


@pytest.mark.parametrize("granularity", ["unstructured", "2:4", "structured"])
def test_prune_with_correction_keeps_target_and_pattern(granularity, calibration):
    config = PruneConfig(method="surgeon", granularity=granularity, sparsity=0.4, shots=2, batch_size=4,
                         lora_rank=2, lora_lr=1e-2)
    plain = tiny_llama()
    corrected = tiny_llama()
    plain_result = prune(plain, calibration, PruneConfig(**{**config.to_dict(), "lora_rank": 0}), progress=False)
    result = prune(corrected, calibration, config, progress=False)
    linears = get_adapter(corrected).prunable_linears(corrected)
    achieved, _ = sparsity_stats(linears)
    plain_achieved, _ = sparsity_stats(get_adapter(plain).prunable_linears(plain))
    assert achieved == pytest.approx(plain_achieved, abs=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), corrected.parameters(), strict=True))
    for name, lin in linears.items():
        assert torch.all(lin.weight[result.masks[name]] == 0)
    assert all(len(s.correction_epoch_losses) == 1 and s.seconds_correction > 0 for s in result.shots)
    assert all(not s.correction_epoch_losses for s in plain_result.shots)
    assert result.seconds["correction"] > 0
    if granularity == "2:4":
        assert result.nm_validation["valid"]


def test_correction_needs_calibration():
    from llm_surgeon.errors import ConfigError

    with pytest.raises(ConfigError, match="needs calibration"):
        prune(tiny_llama(), None, PruneConfig(method="magnitude", lora_rank=2), progress=False)
    with pytest.raises(ConfigError, match="low-rank correction"):
        PruneConfig(lora_rank=-1).validate()


def test_cli_records_the_correction(tmp_path):
    import json


    model_dir = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    out = tmp_path / "out"
    run_cli("prune", str(model_dir), "--out", str(out), "--method", "magnitude", "--sparsity", "0.5",
            "--shots", "2", "--lora-rank", "2", "--lora-epochs", "2", "--calib-samples", "4",
            "--calib-seqlen", "32", "--data-dir", str(data), "--no-progress")
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["lora_rank"] == 2 and report["config"]["lora_epochs"] == 2
    assert report["calibration"]["samples"] == 4  # magnitude reads calibration text only for the correction
    assert [len(s["correction_epoch_losses"]) for s in report["shot_records"]] == [2, 2]
    assert report["seconds"]["correction"] > 0
    assert abs(report["achieved_sparsity"] - 0.5) <= 0.005
    estimate = report["memory_estimate"]  # magnitude runs no pass: the correction is the shot's whole need
    assert estimate["correction_mb"] > 0 and estimate["activations_mb"] == 0
    assert estimate["predicted_peak_mb"] == pytest.approx(estimate["loaded_mb"] + estimate["correction_mb"])


def test_resuming_after_a_shot_gives_the_uninterrupted_result(calibration):
    """Each correction starts fresh from seeds that depend only on the shot, so no optimizer state is lost."""
    import copy

    from llm_surgeon.engine.pruner import prune_model

    config = PruneConfig(method="surgeon", sparsity=0.5, shots=3, batch_size=4, lora_rank=2, lora_lr=1e-2)
    reference = tiny_llama()
    prune_model(reference, calibration, config, progress=False)

    class StopError(Exception):
        pass

    saved = {}

    def stop_after_first(shot, result):
        saved["result"] = copy.deepcopy(result)
        saved["state"] = copy.deepcopy(interrupted.state_dict())
        raise StopError

    interrupted = tiny_llama()
    with pytest.raises(StopError):
        prune_model(interrupted, calibration, config, progress=False, on_shot_end=stop_after_first)
    torch.manual_seed(123)  # the global RNG must not matter
    resumed = tiny_llama(seed=9)
    resumed.load_state_dict(saved["state"])
    prune_model(resumed, calibration, config, progress=False, start=saved["result"])
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_correction_that_cannot_fit_is_refused_up_front_even_when_its_shot_fits(monkeypatch):
    """The correction trains after the shot's factors are freed: its own peak, larger here than the shot's, is
    what must fit, and a budget between the two is refused before any work, naming the correction."""
    from dataclasses import replace

    from llm_surgeon import api
    from llm_surgeon.engine.pruner import setup
    from llm_surgeon.errors import LLMSurgeonError

    model = tiny_llama()
    adapter = get_adapter(model)
    config = PruneConfig(shots=1, calib_samples=4, calib_seqlen=32, lora_rank=16)
    needs = api._shot_needs(model, adapter, setup(model, config, adapter), config, groups=1)
    shot = needs.factors + needs.activations + needs.logits
    assert needs.correction > shot and needs.total == needs.correction
    monkeypatch.setattr(api, "available_bytes", lambda device: (shot + needs.correction) // 2)
    monkeypatch.setattr(api, "total_bytes", lambda device: 0)  # no margin: the two phases alone decide
    with pytest.raises(LLMSurgeonError, match="not enough memory .* the correction after it"):
        api.check_memory(model, adapter, setup(model, config, adapter), config, "cpu")
    plain = replace(config, lora_rank=0)
    estimate, _ = api.check_memory(model, adapter, setup(model, plain, adapter), plain, "cpu")
    assert estimate.correction == 0 and estimate.total == shot
