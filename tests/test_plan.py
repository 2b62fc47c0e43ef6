"""The plan: predicted from a config alone, its factor bytes equal to what the curvature pass allocates."""

from __future__ import annotations

import json

import pytest
import torch

from llm_surgeon.models.adapters import get_adapter
from llm_surgeon.planning.fit import SAFETY_MARGIN
from llm_surgeon.planning.memory import raw_factor_bytes
from tests.conftest import collect_factors, run_cli, tiny_llama, tiny_opt


@pytest.mark.parametrize("make", [tiny_llama, tiny_opt], ids=["llama", "opt"])
def test_planned_factor_bytes_equal_the_collected_factors(make, calibration):
    model = make()
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    factors = collect_factors(model, linears, calibration, packed=True)
    storages = {}
    for f in factors.values():
        for t in (f.A, f.G):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    assert raw_factor_bytes(linears, adapter.distinct_input_widths(model)) == sum(storages.values())
    assert raw_factor_bytes(linears) > sum(storages.values())  # counting A per layer overstates shared inputs


def _config_file(tmp_path, **overrides):
    config = tiny_llama(**overrides).config.to_dict()
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_plan_from_a_config_file_alone(tmp_path):
    path = _config_file(tmp_path)
    plan = json.loads(run_cli("plan", str(path), "--json", "--tflops", "1", "--calib-samples", "16",
                              "--calib-seqlen", "32", "--device-memory", "1").stdout)
    assert plan["peak_bytes"] > plan["weights_bytes"] > 0 and plan["seconds_per_shot"] > 0
    assert plan["fits"] is True and plan["model_type"] == "llama"
    bigger = json.loads(run_cli("plan", str(path), "--json", "--tflops", "1", "--calib-samples", "16",
                                "--calib-seqlen", "32", "--batch-size", "16").stdout)
    assert bigger["activations_bytes"] == pytest.approx(2 * plan["activations_bytes"], rel=1e-6)
    assert bigger["factors_bytes"] == plan["factors_bytes"]
    beyond = json.loads(run_cli("plan", str(path), "--json", "--tflops", "1", "--calib-samples", "16",
                                "--calib-seqlen", "32", "--batch-size", "64").stdout)
    assert beyond["batch_size"] == 16 and beyond["activations_bytes"] == bigger["activations_bytes"]  # 16 windows


def test_plan_says_when_it_does_not_fit_and_refuses_bad_input(tmp_path):
    path = _config_file(tmp_path)
    text = run_cli("plan", str(path), "--tflops", "1", "--device-memory", "0.000001").stdout
    assert "does NOT fit" in text and "time per shot" in text
    missing = run_cli("plan", str(tmp_path / "nope.json"), check=False)
    assert missing.returncode == 2 and "config file not found" in missing.stderr


def test_plan_chooses_the_fewest_block_groups_and_then_a_smaller_batch(tmp_path):
    path = _config_file(tmp_path, num_hidden_layers=4, hidden_size=64, intermediate_size=256)
    base = ["plan", str(path), "--json", "--tflops", "1", "--calib-samples", "8", "--calib-seqlen", "32"]
    unbounded = json.loads(run_cli(*base).stdout)
    assert unbounded["block_groups"] == 1 and unbounded["batch_size"] == 8
    # A budget just under the one-pass peak and its margin needs groups; the predicted peak then fits under it.
    budget = int(unbounded["peak_bytes"] / (1 - SAFETY_MARGIN)) - 100
    split = json.loads(run_cli(*base, "--max-memory", str(budget)).stdout)
    assert split["fits"] and split["block_groups"] > 1 and split["peak_bytes"] <= budget - split["margin_bytes"]
    assert split["factors_bytes"] < unbounded["factors_bytes"]
    assert split["seconds_per_shot"] > unbounded["seconds_per_shot"]  # more passes
    # Under what four groups can save, the batch shrinks instead.
    lean = json.loads(run_cli(*base, "--max-memory", str(budget - unbounded["activations_bytes"] // 2)).stdout)
    assert lean["fits"] and lean["batch_size"] < 8
    hopeless = json.loads(run_cli(*base, "--max-memory", "1MB").stdout)
    assert hopeless["fits"] is False and hopeless["block_groups"] == 4 and hopeless["batch_size"] == 1


def test_plan_for_several_devices_divides_what_each_holds(tmp_path):
    path = _config_file(tmp_path, num_hidden_layers=4)
    base = ["plan", str(path), "--json", "--tflops", "1", "--calib-samples", "4", "--calib-seqlen", "32"]
    one = json.loads(run_cli(*base).stdout)
    four = json.loads(run_cli(*base, "--devices", "4").stdout)
    assert four["devices"] == 4 and four["peak_bytes"] < one["peak_bytes"]
    assert four["activations_bytes"] == pytest.approx(one["activations_bytes"] / 4, rel=1e-6)
    assert four["logits_bytes"] == one["logits_bytes"]
    refused = run_cli(*base, "--devices", "0", check=False)
    assert refused.returncode == 2 and "--devices must be at least 1" in refused.stderr


def test_communication_per_rank_counts_boundaries_sums_and_weights():
    from llm_surgeon import PruneConfig
    from llm_surgeon.planning.plan import communication_bytes

    model = tiny_llama()
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    widths = adapter.distinct_input_widths(model)
    config = PruneConfig(calib_samples=8, calib_seqlen=16)
    alone = communication_bytes(model, linears, linears, widths, config, "float32", devices=1, ranks=1, passes=1)
    assert alone == {"device_boundaries": 0, "factor_reduce": 0, "weight_broadcast": 0, "cost_inputs": 0}
    split = communication_bytes(model, linears, linears, widths, config, "bfloat16", devices=3, ranks=1, passes=2)
    # hidden states forward and their gradients backward, over 2 boundaries, twice, 2 bytes each
    assert split["device_boundaries"] == 2 * (8 * 16) * 32 * 2 * 2 * 2
    ranks = communication_bytes(model, linears, linears, widths, config, "float32", devices=1, ranks=4, passes=1)
    weights = sum(lin.weight.numel() for lin in linears.values())
    assert ranks["factor_reduce"] == int(raw_factor_bytes(linears, widths) * 3 / 4)
    assert ranks["weight_broadcast"] == int(4 * weights * 3 / 4)
    assert ranks["cost_inputs"] == int(8 * sum(lin.out_features + lin.in_features for lin in linears.values()) * 3 / 4)


def test_plan_over_ranks_shares_the_time_and_says_what_moves(tmp_path):
    path = _config_file(tmp_path)
    flags = ("plan", str(path), "--json", "--tflops", "1", "--calib-samples", "4", "--calib-seqlen", "32")
    one = json.loads(run_cli(*flags).stdout)
    four = json.loads(run_cli(*flags, "--ranks", "4").stdout)
    assert four["ranks"] == 4 and four["peak_bytes"] == one["peak_bytes"]
    assert four["seconds_per_shot"] == pytest.approx(one["seconds_per_shot"] / 4)
    assert four["communication_bytes"]["factor_reduce"] > 0 == one["communication_bytes"]["factor_reduce"]


@pytest.mark.parametrize("make", [tiny_llama, tiny_opt], ids=["llama", "opt"])
def test_planned_reconstruction_bytes_equal_what_the_refit_holds(make, calibration, monkeypatch):
    """The dense copy, the block states and the largest stage's sums of the plan are what ``reconstruct``
    allocates (its sums recorded stage by stage here)."""
    from llm_surgeon.engine import reconstruction
    from llm_surgeon.planning.memory import reconstruction_bytes

    model = make()
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    seen = []
    collect = reconstruction._collect

    def recording(*args, **kwargs):
        out = collect(*args, **kwargs)
        seen.append(sum(t.nbytes for s in out[0].values() for t in (s.H, s.D, s.s) if t is not None))
        return out

    monkeypatch.setattr(reconstruction, "_collect", recording)
    dense = reconstruction.snapshot_dense(linears)
    planned = reconstruction_bytes(model, adapter, linears, len(calibration), calibration.shape[1], 4)
    masks = {name: torch.zeros_like(lin.weight, dtype=torch.bool) for name, lin in linears.items()}
    reconstruction.reconstruct(model, adapter, masks, dense, calibration, batch_size=4, progress=False)
    assert planned["stage_sums"] == max(seen)
    assert planned["dense_copy"] == sum(w.nbytes + (0 if b is None else b.nbytes) for w, b in dense.values())
    assert planned["block_states"] == 4 * calibration.numel() * model.config.hidden_size * 4


def test_held_curvature_counts_shared_inputs_only_when_every_layer_is_held():
    """All layers: one ``A`` per distinct input; some layers (output-priced structures): one ``A`` each, the
    rule behind the memory, work and communication estimates alike."""
    from llm_surgeon import PruneConfig
    from llm_surgeon.planning.memory import held_curvature
    from llm_surgeon.planning.plan import communication_bytes, shot_flops

    model = tiny_llama()
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    widths = adapter.distinct_input_widths(model)
    assert held_curvature(linears, widths) == (linears, widths)
    assert held_curvature(linears, widths, dict(linears)) == (linears, widths)  # all layers, another dict
    assert held_curvature(linears)[1] == [lin.in_features for lin in linears.values()]
    outputs = {name: lin for name, lin in linears.items() if name.endswith(("o_proj", "down_proj"))}
    held, held_widths = held_curvature(linears, widths, outputs)
    assert held is outputs and held_widths == [lin.in_features for lin in outputs.values()]

    config = PruneConfig(calib_samples=8, calib_seqlen=16)
    moved = communication_bytes(model, linears, outputs, widths, config, "float32", devices=1, ranks=2, passes=1)
    assert moved["factor_reduce"] == raw_factor_bytes(held, held_widths) // 2
    lean, full = (shot_flops(model, adapter, linears, config, widths, curvature) for curvature in (outputs, None))
    tokens = 8 * 16
    assert lean["statistics"] == 2 * tokens * sum(lin.in_features**2 + lin.out_features**2 for lin in outputs.values())
    assert lean["statistics"] < full["statistics"] and lean["update"] == full["update"]


def test_planned_correction_bytes_equal_what_the_correction_allocates(calibration, monkeypatch):
    """The keep masks and the low-rank factors (values, gradients, Adam's moments) of the plan are what
    ``correct_with_lora`` allocates; the built weights have the weights' bytes."""
    from llm_surgeon.engine import correction
    from llm_surgeon.planning.memory import correction_bytes

    model = tiny_llama()
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    attached, optimizers = [], []
    attach = correction.attach_deltas

    def recording_attach(*args, **kwargs):
        attached.append(attach(*args, **kwargs))
        return attached[-1]

    class RecordingAdam(torch.optim.Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(correction, "attach_deltas", recording_attach)
    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    masks = {name: torch.rand(lin.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
             for name, lin in linears.items()}
    correction.correct_with_lora(model, adapter, linears, masks, calibration, rank=3, lr=1e-3, epochs=1,
                                 batch_size=4, seed=0, progress=False)
    planned = correction_bytes(linears, len(adapter.blocks(model)), 4 * calibration.shape[1], 4, 3,
                               adapter.distinct_input_widths(model))
    deltas = list(attached[0].values())
    parameters = [p for d in deltas for p in d.parameters()]
    moments = [t for state in optimizers[0].state.values() for key, t in state.items() if key != "step"]
    assert planned["keep_masks"] == sum(d.keep.nbytes for d in deltas)
    assert planned["factors"] == sum(p.nbytes + p.grad.nbytes for p in parameters) + sum(t.nbytes for t in moments)
    assert planned["masks"] == sum(m.nbytes for m in masks.values())
    assert planned["built_weights"] == sum(lin.weight.nbytes for lin in linears.values())
    assert planned["layer_inputs"] == 4 * calibration.shape[1] * 4 * sum(adapter.distinct_input_widths(model))


def test_plan_prices_the_correction_after_the_shot_and_keeps_its_batch(tmp_path):
    """``--lora-rank``: the peak is the larger of the shot and the correction (which trains once the factors are
    freed), its work is in the time, and a budget under the correction's peak does not make the batch smaller:
    the correction takes an Adam step per batch, so a smaller one is another result; the plan says so."""
    path = _config_file(tmp_path, num_hidden_layers=4, hidden_size=64, intermediate_size=256)
    base = ["plan", str(path), "--json", "--tflops", "1", "--calib-samples", "8", "--calib-seqlen", "32"]
    plain = json.loads(run_cli(*base).stdout)
    corrected = json.loads(run_cli(*base, "--lora-rank", "16").stdout)
    shot = corrected["factors_bytes"] + corrected["activations_bytes"] + corrected["logits_bytes"]
    assert plain["correction_bytes"] == 0 and "correction" not in plain["flops"]
    assert corrected["correction_bytes"] > corrected["activations_bytes"] + corrected["logits_bytes"]
    assert corrected["peak_bytes"] == corrected["weights_bytes"] + max(shot, corrected["correction_bytes"])
    assert corrected["flops"]["correction"] == pytest.approx(1.5 * corrected["flops"]["pass"], rel=0.01)
    assert corrected["seconds_per_shot"] > plain["seconds_per_shot"]
    budget = str(int((corrected["weights_bytes"] + corrected["correction_bytes"]) / (1 - SAFETY_MARGIN)) - 1)
    kept = json.loads(run_cli(*base, "--lora-rank", "16", "--max-memory", budget).stdout)
    assert kept["fits"] is False and kept["batch_size"] == 8 and "--lora-rank" in kept["batch_fixed"]
    text = run_cli(*[a for a in base if a != "--json"], "--lora-rank", "16", "--max-memory", budget).stdout
    assert "does NOT fit" in text and "(kept: --lora-rank" in text
    text = run_cli(*base[:2], "--tflops", "1", "--lora-rank", "16").stdout
    assert "the correction after the shot" in text


def test_a_tied_output_head_counts_in_a_shots_passes_as_an_untied_one_does():
    """The head multiplies every token whether or not it shares the embedding's tensor (Gemma's 262k x 640
    head is most of its work; leaving it out made plan's time half of the measured shot)."""
    from llm_surgeon import PruneConfig
    from llm_surgeon.planning.plan import forward_params, shot_flops

    tied, untied = tiny_llama(), tiny_llama(tie_word_embeddings=False)
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    body = sum(p.numel() for n, p in untied.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    assert forward_params(tied) == forward_params(untied) == body + 128 * 32
    config = PruneConfig(calib_samples=8, calib_seqlen=16)
    passes = [shot_flops(m, get_adapter(m), get_adapter(m).prunable_linears(m), config,
                         get_adapter(m).distinct_input_widths(m))["pass"] for m in (tied, untied)]
    assert passes[0] == passes[1]


@pytest.mark.parametrize(("method", "granularity", "kind"), [
    ("surgeon", "unstructured", "pcg"), ("surgeon", "2:4", "pcg"), ("surgeon", "structured", "closed-form"),
    ("ziplm", "structured", "closed-form"), ("kobd", "unstructured", "none"), ("magnitude", "structured", "none"),
    ("flap", "structured", "none")])
def test_each_method_and_granularity_is_priced_by_the_update_it_runs(method, granularity, kind):
    """A structured shot removes whole columns or rows in closed form (no PCG steps); OBD and magnitude zero the
    removed weights and update nothing."""
    from llm_surgeon import PruneConfig
    from llm_surgeon.methods import get_method
    from llm_surgeon.planning.plan import shot_flops, update_kind

    assert update_kind(get_method(method), granularity) == kind
    model = tiny_llama()
    adapter = get_adapter(model)
    linears, widths = adapter.prunable_linears(model), adapter.distinct_input_widths(model)
    config = PruneConfig(sparsity=0.5, shots=5, calib_samples=8, calib_seqlen=16)
    update = shot_flops(model, adapter, linears, config, widths, update=kind)["update"]
    closed = sum(4 * lin.weight.numel() * min(lin.weight.shape) * 0.1 for lin in linears.values())
    assert update == {"pcg": pytest.approx(2 * (config.update_iterations + 1) * sum(
        2 * lin.weight.numel() * sum(lin.weight.shape) for lin in linears.values())),
        "closed-form": pytest.approx(closed), "none": 0.0}[kind]
