"""FLAP: its fluctuation metric, standardisation and bias compensation against explicit references, the
collector's mean inputs, and a structured prune whose compensated model saves and reloads unchanged."""

from __future__ import annotations

import pytest
import torch

from llm_surgeon import PruneConfig, load_pruned, prune
from llm_surgeon.artifacts.compaction import compact
from llm_surgeon.curvature.collectors import CurvatureRequest, LocalCollector
from llm_surgeon.errors import ConfigError
from llm_surgeon.math import flap
from llm_surgeon.math.structured import select_structures
from llm_surgeon.models.adapters import get_adapter
from tests.conftest import tiny_llama, write_fake_wikitext


def _samples(n: int = 200, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * torch.arange(1, d + 1) + torch.arange(d)


def test_fluctuation_and_scores_are_the_variance_times_column_energy():
    X = _samples()
    W = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    variance = flap.fluctuation(X.pow(2).mean(0), X.mean(0))
    torch.testing.assert_close(variance, X.var(0, unbiased=False))
    expected = torch.tensor([float(X[:, j].var(unbiased=False) * (W[:, j] ** 2).sum()) for j in range(6)],
                            dtype=torch.float64)
    torch.testing.assert_close(flap.column_scores(W, variance), expected)


def test_bias_shift_keeps_the_mean_output_and_leaves_only_the_fluctuation():
    """Removing columns C and adding W_C E[x_C] to the bias: the mean output is unchanged, and the squared
    error left is the fluctuation part ‖W_C (x_C − E x_C)‖², the least any bias can leave."""
    X = _samples(seed=2)
    W = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cols = torch.tensor([0, 3, 5])
    shift = flap.bias_shift(W, cols, X.mean(0))
    W_new = W.clone()
    W_new[:, cols] = 0
    before, after = X @ W.T, X @ W_new.T + shift
    torch.testing.assert_close(after.mean(0), before.mean(0))
    error = (after - before).pow(2).sum(1).mean()
    centred = X[:, cols] - X[:, cols].mean(0)
    torch.testing.assert_close(error, (centred @ W[:, cols].T).pow(2).sum(1).mean())
    for other in (shift + 0.1, shift * 0.9, torch.zeros_like(shift)):  # any other bias leaves more
        assert float((X @ W_new.T + other - before).pow(2).sum(1).mean()) > float(error)


def test_standardized_over_the_structures_still_present():
    scores = torch.tensor([1.0, 4.0, 2.0, 9.0, 5.0], dtype=torch.float64)
    removed = torch.tensor([False, False, True, False, False])
    out = flap.standardized(scores, removed)
    present = scores[~removed]
    torch.testing.assert_close(out[~removed], (present - present.mean()) / present.std())
    assert float(out[2]) == 2.0
    assert torch.equal(flap.standardized(torch.full((3,), 7.0)), torch.zeros(3))
    assert torch.equal(flap.standardized(torch.tensor([3.0])), torch.zeros(1))


def test_select_structures_ranks_raw_scores_when_not_per_parameter():
    costs = [torch.tensor([1.0, 3.0, 5.0]), torch.tensor([2.0, 30.0])]
    params = [torch.full((3,), 1.0), torch.full((2,), 10.0)]
    removed = [torch.zeros(3, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)]
    # As raw scores 1.0 is the cheapest; per parameter the 10-parameter structure (2.0 / 10) is.
    chosen = select_structures(costs, params, removed, target_params=1, per_parameter=False)
    assert chosen[0].tolist() == [True, False, False] and not chosen[1].any()
    chosen = select_structures(costs, params, removed, target_params=1, per_parameter=True)
    assert chosen[1].tolist() == [True, False] and not chosen[0].any()


def _inputs_seen(model, linears: dict, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every token row of input each layer saw in one forward of ``ids`` (a reference for the collector)."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [lin.register_forward_hook(lambda m, i, o, n=name: seen.setdefault(n, []).append(i[0].detach()))
               for name, lin in linears.items()]
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()
    return {name: torch.cat(xs).reshape(-1, linears[name].in_features) for name, xs in seen.items()}


def test_collector_means_are_the_layers_mean_inputs(calibration):
    model = tiny_llama(seed=4)
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    seen = _inputs_seen(model, linears, calibration)
    factors = LocalCollector(batch_size=3, progress=False).collect(
        model, adapter, linears, calibration, CurvatureRequest(with_gradients=False, diagonal_only=True,
                                                               input_means=True), 0)
    for name, f in factors.items():
        x = seen[name]
        torch.testing.assert_close(f.mean, x.mean(0), rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(f.A, x.pow(2).mean(0), rtol=1e-5, atol=1e-6, msg=name)


def test_prepared_biases_are_zero_on_every_projection_and_change_nothing(calibration):
    from llm_surgeon.models.biases import prepare_output_biases

    model = tiny_llama(seed=5)
    with torch.no_grad():
        before = model(input_ids=calibration).logits
    assert prepare_output_biases(model, get_adapter(model)) == {"attention_bias": True, "mlp_bias": True}
    for name, lin in get_adapter(model).prunable_linears(model).items():
        assert lin.bias is not None and not lin.bias.detach().any(), name
    with torch.no_grad():
        assert torch.equal(model(input_ids=calibration).logits, before)


def test_flap_prune_compensates_with_biases_that_save_and_reload(tmp_path, calibration):
    model = tiny_llama(seed=5)
    result = prune(model, calibration, PruneConfig(method="flap", granularity="structured", sparsity=0.3),
                   progress=False)
    assert result.structure["removed_fraction"] >= 0.3
    assert model.config.attention_bias and model.config.mlp_bias
    adapter = get_adapter(model)
    for name, lin in adapter.prunable_linears(model).items():
        assert lin.bias is not None, name
        if name.endswith(("o_proj", "down_proj")) and result.masks[name].any():
            assert lin.bias.abs().sum() > 0, name  # the removed columns' mean output
        elif not name.endswith(("o_proj", "down_proj")):
            assert not lin.bias.detach().any(), name  # zero biases, there only for the config
    ids = calibration[:2]
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    shapes = compact(model, result.masks)
    model.save_pretrained(tmp_path)
    shapes.write(tmp_path)
    with torch.no_grad():
        reloaded = load_pruned(tmp_path)(input_ids=ids).logits
    torch.testing.assert_close(reloaded, expected, rtol=1e-4, atol=1e-5)


def test_flap_biases_are_the_dense_mean_outputs_of_the_removed_columns(calibration):
    """One shot on the dense model: every output projection's bias is W_C E[x_C] with W and E[x] those of
    the dense model (inputs captured by hooks), C the columns removed there."""
    model = tiny_llama(seed=6)
    adapter = get_adapter(model)
    outputs = {n: lin for n, lin in adapter.prunable_linears(model).items() if n.endswith(("o_proj", "down_proj"))}
    dense = {n: lin.weight.detach().clone() for n, lin in outputs.items()}
    seen = _inputs_seen(model, outputs, calibration)
    result = prune(model, calibration, PruneConfig(method="flap", granularity="structured", sparsity=0.5,
                                                   batch_size=3), progress=False)
    assert len(result.shots) == 1  # FLAP is one shot whatever --shots says
    for kind in ("o_proj", "down_proj"):  # both kinds of structure removed, both compensated
        assert any(result.masks[n].any() for n in outputs if n.endswith(kind)), kind
    for name, lin in outputs.items():
        cols = result.masks[name].all(0).nonzero().squeeze(1)
        mean = seen[name].mean(0)
        torch.testing.assert_close(lin.bias.detach(), dense[name][:, cols] @ mean[cols], rtol=1e-4, atol=1e-6,
                                   msg=name)


def test_flap_refuses_what_it_cannot_do(calibration):
    from transformers import MistralConfig, MistralForCausalLM

    with pytest.raises(Exception, match="supports the"):
        prune(tiny_llama(), calibration, PruneConfig(method="flap", sparsity=0.5), progress=False)
    mistral = MistralForCausalLM(MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ConfigError, match="cannot give .* a bias"):
        prune(mistral, calibration, PruneConfig(method="flap", granularity="structured", sparsity=0.3),
              progress=False)


def test_flap_on_a_model_without_bias_flags_is_refused_before_its_weights_load(tmp_path, monkeypatch):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    import llm_surgeon.api as api
    from llm_surgeon.api import RunOptions, prune_job

    folder = tmp_path / "gemma3"
    config = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=8)
    Gemma3ForCausalLM(config).save_pretrained(folder)

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(api, "load_model_and_tokenizer", never)
    with pytest.raises(ConfigError, match="gemma3_text config cannot give .* a bias"):
        prune_job(str(folder), PruneConfig(method="flap", granularity="structured", sparsity=0.2),
                  RunOptions(out=str(tmp_path / "out"), data_dir=str(write_fake_wikitext(tmp_path / "data")),
                             progress=False))
    assert not (tmp_path / "out").exists()  # nothing left behind


def test_cli_flap_folder_reloads_with_its_biases_and_the_same_perplexity(tmp_path):
    import json

    from tests.conftest import run_cli, write_fake_wikitext, write_tiny_checkpoint

    model_dir = write_tiny_checkpoint(tmp_path / "model", "llama")
    data = write_fake_wikitext(tmp_path / "data")
    out = tmp_path / "out"
    run_cli("prune", str(model_dir), "--out", str(out), "--method", "flap", "--granularity", "structured",
            "--sparsity", "0.3", "--calib-samples", "4", "--calib-seqlen", "32", "--data-dir", str(data), "--eval",
            "--eval-seqlen", "32", "--eval-max-windows", "2", "--no-progress")
    report = json.loads((out / "report.json").read_text())
    saved = json.loads((out / "config.json").read_text())
    assert saved["attention_bias"] and saved["mlp_bias"]
    assert len(report["shot_records"]) == 1 and report["structure"]["removed_fraction"] >= 0.3
    evaluated = json.loads(run_cli("eval", str(out), "--data-dir", str(data), "--seqlen", "32", "--max-windows", "2",
                                   "--json", "--no-progress").stdout)
    assert abs(evaluated["ppl"] - report["ppl"]["wikitext2"]) < 1e-3 * evaluated["ppl"]


def test_a_run_prepares_the_model_for_its_method_once(tmp_path, monkeypatch):
    """The run builds the method, layers and selector while checking its input and hands them to the shots,
    so FLAP's model preparation (zero biases) and the selector are made once, not again in the shot loop."""
    from llm_surgeon import api
    from llm_surgeon.engine import pruner
    from llm_surgeon.methods.flap import FLAPPruning
    from tests.conftest import write_fake_wikitext, write_tiny_checkpoint

    prepared, checked, built = [], [], []
    original_prepare, original_setup = FLAPPruning.prepare_model, pruner.setup

    def counted(self, model, adapter):  # the check before loading runs on the meta model: counted apart
        (checked if next(model.parameters()).is_meta else prepared).append(1)
        return original_prepare(self, model, adapter)

    monkeypatch.setattr(FLAPPruning, "prepare_model", counted)
    monkeypatch.setattr(api, "setup", lambda *a, **k: built.append(1) or original_setup(*a, **k))
    monkeypatch.setattr(pruner, "setup", lambda *a, **k: built.append(1) or original_setup(*a, **k))
    model_dir = write_tiny_checkpoint(tmp_path / "model", "llama")
    options = api.RunOptions(out=str(tmp_path / "out"), data_dir=str(write_fake_wikitext(tmp_path / "data")),
                             progress=False)
    config = PruneConfig(method="flap", granularity="structured", sparsity=0.3, calib_samples=4, calib_seqlen=32)
    report = api.run_prune(str(model_dir), config, options)
    assert report["structure"]["removed_fraction"] >= 0.3
    assert prepared == [1] and checked == [1] and built == [1]
