"""One memory fit for ``plan`` and ``prune`` (issue 34) and the plan's margin and whole-run time (issue 36).

``plan`` (a model on the meta device) and ``prune`` (the loaded model) must predict the same bytes and choose the
same block groups and batch for the same settings and room; a backward is counted exactly when the passes run
one; a smaller batch gives the same result, so ``prune`` lowers it instead of refusing.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from llm_surgeon import PruneConfig, api, prune
from llm_surgeon.curvature.collectors import CurvatureRequest, LocalCollector
from llm_surgeon.engine.pruner import setup
from llm_surgeon.errors import LLMSurgeonError
from llm_surgeon.methods import NM, STRUCTURED, UNSTRUCTURED, method_class, method_names
from llm_surgeon.models.adapters import get_adapter
from llm_surgeon.planning import throughput
from llm_surgeon.planning.fit import SAFETY_MARGIN, collects_gradients, fit_shot, margin_bytes
from llm_surgeon.planning.plan import describe, plan_shot
from tests.conftest import run_cli, tiny_llama, tiny_opt, write_fake_wikitext, write_tiny_checkpoint
from tests.test_pinned import CASES, _config, _key

FAMILIES = {"llama": tiny_llama, "opt": tiny_opt}
KINDS = {"unstructured": UNSTRUCTURED, "2:4": NM, "structured": STRUCTURED}
SETTINGS = [(family, method, granularity) for family in FAMILIES for method in method_names()
            for granularity in KINDS if method_class(method).supports(KINDS[granularity])]


def _settings_config(method: str, granularity: str, **extra) -> PruneConfig:
    sparsity = 0.3 if granularity == "structured" else 0.5
    return PruneConfig(method=method, granularity=granularity, sparsity=sparsity, shots=2, calib_samples=8,
                       calib_seqlen=16, **extra)


def _config_json(tmp_path, family: str):
    path = tmp_path / f"{family}.json"
    path.write_text(json.dumps(FAMILIES[family]().config.to_dict()))
    return path


def _plan_and_prune(tmp_path, monkeypatch, family: str, config: PruneConfig, budget: int | None):
    """The plan from the config file, and the fit ``prune`` makes on the loaded model for the same room (the
    budget less the plan's weights, which the process is made to hold)."""
    plan = plan_shot(str(_config_json(tmp_path, family)), config, "float32", budget, tflops=1.0)
    monkeypatch.setattr(api, "available_bytes", lambda device: None)
    monkeypatch.setattr(api, "in_use_bytes", lambda device: plan.weights_bytes)
    model = FAMILIES[family]()
    adapter = get_adapter(model)
    try:
        fit = api.memory_fit(model, adapter, setup(model, config, adapter), config, "cpu", budget)
    except LLMSurgeonError:
        fit = None
    return plan, fit


def _same(plan, fit) -> None:
    got = (fit.memory.factors, fit.memory.activations, fit.memory.logits, fit.memory.correction, fit.block_groups,
           fit.batch_size, fit.margin)
    assert got == (plan.factors_bytes, plan.activations_bytes, plan.logits_bytes, plan.correction_bytes,
                   plan.block_groups, plan.batch_size, plan.margin_bytes)


@pytest.mark.parametrize("setting", SETTINGS, ids=_key)
def test_plan_and_prune_estimate_the_same_bytes_for_every_method_and_granularity(setting, tmp_path, monkeypatch):
    family, method, granularity = setting
    config = _settings_config(method, granularity)
    plan, fit = _plan_and_prune(tmp_path, monkeypatch, family, config, None)
    _same(plan, fit)
    assert plan.backward == fit.backward == collects_gradients(method_class(method))
    if not plan.backward:  # forward-only passes keep no activations for a backward and make no logits
        assert plan.activations_bytes == plan.logits_bytes == 0


@pytest.mark.parametrize("extra", [{}, {"lora_rank": 2}, {"fisher": "true"}], ids=["plain", "lora", "true-fisher"])
def test_plan_and_prune_choose_the_same_settings_for_the_same_room(extra, tmp_path, monkeypatch):
    """Budgets from roomy to hopeless: the same groups, batch and bytes, and prune refuses exactly what the plan
    says does not fit."""
    config = _settings_config("surgeon", "unstructured", **extra)
    roomy, _ = _plan_and_prune(tmp_path, monkeypatch, "llama", config, None)
    shot = roomy.peak_bytes - roomy.weights_bytes
    seen = set()
    for share in (1.2, 0.97, 0.6, 0.3, 0.1, 0.01):
        budget = int((roomy.weights_bytes + share * shot) / (1 - SAFETY_MARGIN))
        plan, fit = _plan_and_prune(tmp_path, monkeypatch, "llama", config, budget)
        seen.add((plan.fits, plan.block_groups, plan.batch_size))
        if plan.fits:
            _same(plan, fit)
        else:
            assert fit is None
    assert any(not fits for fits, _, _ in seen)
    if not extra:  # groups first, then a smaller batch
        assert any(groups > 1 for _, groups, _ in seen) and any(batch < 8 for fits, _, batch in seen if fits)
    else:  # the correction's batch and true-Fisher labels keep the batch
        assert {batch for _, _, batch in seen} == {8}


@pytest.mark.parametrize("method", method_names())
def test_a_backward_is_counted_exactly_when_the_passes_run_one(method, calibration):
    """What the passes really do: a backward through the first block happens for the methods the fit counts one
    for, and for no other (the correction, which has its own term, is off)."""
    kind = next(k for k in KINDS if method_class(method).supports(KINDS[k]))
    model = tiny_llama()
    reached = []
    hook = get_adapter(model).blocks(model)[0].register_full_backward_hook(lambda *a: reached.append(1))
    prune(model, calibration, PruneConfig(method=method, granularity=kind, sparsity=0.3, shots=1), progress=False)
    hook.remove()
    assert bool(reached) == collects_gradients(method_class(method))


def _run(case, batch_size: int) -> dict[str, torch.Tensor]:
    """``test_pinned``'s run of ``case`` with micro-batches of ``batch_size`` windows."""
    family, method, granularity = case
    model = tiny_llama(seed=3) if family == "llama" else tiny_opt(seed=3)
    calibration = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    result = prune(model, calibration, replace(_config(method, granularity), batch_size=batch_size), progress=False)
    out = {}
    for name, lin in get_adapter(model).prunable_linears(model).items():
        out[f"weight:{name}"] = lin.weight.detach().clone()
        out[f"mask:{name}"] = result.masks[name].clone()
    return out


def assert_same_result(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], update: bool) -> None:
    """The same masks, and the same weights to float rounding. LLM Surgeon's correlated ``update`` solves with
    factors of 128 tokens on a tiny random model, which amplifies the sums' last-bit rounding about 10⁴ times:
    up to 0.9% of a layer's norm here, as much as the pinned reference made on another machine differs from
    this machine's batch of 8 (so each layer's relative error is bounded instead)."""
    for key, value in got.items():
        if key.startswith("mask:"):
            assert torch.equal(value, expected[key]), key
        elif update:
            assert float((value - expected[key]).norm()) <= 2e-2 * float(expected[key].norm()), key
        else:
            torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("make", [tiny_llama, tiny_opt], ids=["llama", "opt"])
@pytest.mark.parametrize("request_", [CurvatureRequest(), CurvatureRequest(diagonal_only=True),
                                      CurvatureRequest(with_gradients=False, input_means=True)],
                         ids=["kfac", "diagonal", "inputs"])
@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_the_curvature_sums_do_not_depend_on_the_batch(make, request_, fisher):
    """What a lowered batch rests on: the sums run over every window, so batches of 1, 3 or 8 windows give the
    same factors (true-Fisher labels included, on CPU) to float rounding."""
    model = make()
    adapter = get_adapter(model)
    linears = adapter.prunable_linears(model)
    windows = torch.randint(0, 128, (8, 40), generator=torch.Generator().manual_seed(2))
    sums = {b: LocalCollector(batch_size=b, fisher=fisher, progress=False).collect(
        model, adapter, linears, windows, request_, seed=4) for b in (8, 3, 1)}
    for b in (3, 1):
        for name, f in sums[8].items():
            for part in ("A", "G", "mean"):
                if getattr(f, part) is not None:
                    torch.testing.assert_close(getattr(sums[b][name], part), getattr(f, part), rtol=1e-5,
                                               atol=1e-7, msg=f"{name}.{part} at batch {b}")


@pytest.mark.parametrize("case", [c for c in CASES if "lora" not in c[1]], ids=_key)
def test_a_lowered_batch_gives_the_same_masks_and_weights(case):
    """Every method x granularity of the pinned cases: batches of 1 window give what one batch of 8 gives."""
    assert_same_result(_run(case, batch_size=1), _run(case, batch_size=8), update=case[1] == "surgeon")


def test_the_correction_batch_changes_its_result_so_the_fit_keeps_it():
    """Why a correcting run keeps its batch: one Adam step per batch, so 4 and 2 windows give other weights."""
    halves = [_run(("llama", "surgeon+lora", "unstructured"), batch_size=b) for b in (4, 2)]
    assert any(not torch.allclose(halves[0][k], halves[1][k]) for k in halves[0] if k.startswith("weight:"))


def _tiny_run(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "in_use_bytes", lambda device: 0)
    monkeypatch.setattr(api, "available_bytes", lambda device: None)
    model = str(write_tiny_checkpoint(tmp_path / "model"))
    data = str(write_fake_wikitext(tmp_path / "data"))
    config = PruneConfig(shots=2, calib_samples=8, calib_seqlen=32)
    loaded = tiny_llama()
    adapter = get_adapter(loaded)
    parts = setup(loaded, config, adapter)
    need = {b: api._shot_needs(loaded, adapter, parts, config, 2, batch=b).total for b in (1, 8)}
    return model, data, config, need


def test_prune_lowers_the_batch_instead_of_refusing_and_records_it(tmp_path, monkeypatch, capsys):
    model, data, config, need = _tiny_run(tmp_path, monkeypatch)
    budget = int(need[1] / (1 - SAFETY_MARGIN)) + 100  # batch 1 fits in the most groups, batch 8 does not
    assert need[8] > budget
    saved = []
    monkeypatch.setattr(api, "save_checkpoint", lambda out, name, result, linears, **kw: saved.append(result.config))
    reports = {}
    for label, max_memory in (("roomy", None), ("tight", f"{budget}B")):
        options = api.RunOptions(out=str(tmp_path / label), data_dir=data, progress=False, max_memory=max_memory)
        reports[label] = api.run_prune(model, config, options)
    estimate = reports["tight"]["memory_estimate"]
    assert estimate["batch_size"] < 8 == estimate["requested_batch_size"] == reports["tight"]["config"]["batch_size"]
    assert estimate["margin_mb"] == pytest.approx(int(SAFETY_MARGIN * budget) / 2**20)
    assert reports["roomy"]["memory_estimate"]["batch_size"] == 8
    lines = [line for line in capsys.readouterr().err.splitlines() if "does not fit" in line]
    assert len(lines) == 1 and f"batches of {estimate['batch_size']} windows" in lines[0]
    assert {c.batch_size for c in saved} == {8}  # checkpoints keep the user's config: the same command resumes
    from safetensors.torch import load_file

    roomy, tight = (load_file(str(tmp_path / label / "model.safetensors")) for label in ("roomy", "tight"))
    assert_same_result({f"weight:{k}": v for k, v in tight.items()}, {f"weight:{k}": v for k, v in roomy.items()},
                       update=True)
    assert sum(int((v == 0).sum()) for v in tight.values()) == sum(int((v == 0).sum()) for v in roomy.values())
    again = api.prune_job(model, config, api.RunOptions(out=str(tmp_path / "tight"), data_dir=data, progress=False,
                                                        max_memory=f"{budget}B"))
    assert again.already_finished


def test_prune_refuses_only_what_one_window_in_the_most_groups_cannot_fit(tmp_path, monkeypatch):
    model, data, config, need = _tiny_run(tmp_path, monkeypatch)
    budget = int(need[1] / (1 - SAFETY_MARGIN)) - 1000
    options = api.RunOptions(out=str(tmp_path / "out"), data_dir=data, progress=False, max_memory=f"{budget}B")
    with pytest.raises(LLMSurgeonError, match=r"even in 2 block groups.*batches of 1 x 32.*\(5%\) is kept free; "
                                              r"already one window per batch"):
        api.run_prune(model, config, options)
    assert not (tmp_path / "out").exists()


def test_the_margin_is_five_percent_of_the_device_and_a_fit_keeps_it():
    assert margin_bytes(80 * 2**30) == 4 * 2**30 and margin_bytes(None) == 0
    model = tiny_llama()
    adapter = get_adapter(model)
    config = PruneConfig(calib_samples=8, calib_seqlen=16)
    parts = setup(model, config, adapter)
    need = fit_shot(model, adapter, parts, config, 4, room=None).memory.total
    exact = fit_shot(model, adapter, parts, config, 4, room=need)
    assert exact.fits and exact.block_groups == 1 and exact.batch_size == 8
    kept = fit_shot(model, adapter, parts, config, 4, room=need, margin=margin_bytes(need))
    assert kept.fits and (kept.block_groups, kept.batch_size) != (1, 8) and kept.memory.total <= need - kept.margin


def test_plan_states_the_margin_and_the_whole_runs_time(tmp_path):
    path = _config_json(tmp_path, "llama")
    base = ["plan", str(path), "--tflops", "1", "--calib-samples", "8", "--calib-seqlen", "16", "--shots", "5"]
    plan = json.loads(run_cli(*base, "--json", "--max-memory", "1GiB").stdout)
    assert plan["seconds_total"] == pytest.approx(5 * plan["seconds_per_shot"]) and plan["shots"] == 5
    assert plan["margin_bytes"] == int(0.05 * 2**30) and plan["throughput_source"] == "given with --tflops"
    assert {"peak_bytes", "seconds_per_shot", "block_groups", "batch_size"} <= set(plan)
    text = run_cli(*base, "--max-memory", "1GiB").stdout
    assert "fits, 0.05 GiB (5%) kept free" in text and "whole run (5 shots)" in text and "given with --tflops" in text
    one_shot = plan_shot(str(path), PruneConfig(method="sparsegpt", shots=5, calib_samples=8, calib_seqlen=16),
                         tflops=1.0)
    assert one_shot.shots == 1 and one_shot.seconds_total == one_shot.seconds_per_shot
    assert "whole run (1 shot)" in describe(one_shot)


def test_the_throughput_is_a_median_cached_per_machine_and_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_SURGEON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(throughput, "busy_load", lambda: None)
    timings = iter([1.0, 1.0, 9.0, 1.0, 0.1, 1.0, 1.0, 1.0, 1.0] + [2.0] * 9)
    monkeypatch.setattr(throughput, "_one_timing", lambda a, seconds: next(timings))
    first = throughput.machine_tflops(torch.float32)
    assert first.tflops == 1.0 and "median of 9 timings" in first.source and "measured now" in first.source
    assert (tmp_path / "cache" / "throughput.json").is_file()
    again = throughput.machine_tflops(torch.float32)  # no timing left for float32: it must come from the cache
    assert again.tflops == 1.0 and "cached in" in again.source and "measured now" not in again.source
    assert throughput.machine_tflops(torch.bfloat16).tflops == 2.0  # another dtype is measured on its own
    monkeypatch.setattr(throughput, "machine_key", lambda dtype: "another machine")
    monkeypatch.setattr(throughput, "timed_tflops", lambda dtype: 3.0)
    assert throughput.machine_tflops(torch.float32).tflops == 3.0


def test_a_throughput_timed_on_busy_cpus_is_used_but_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_SURGEON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(throughput.os, "getloadavg", lambda: (4.0, 1.0, 1.0))
    monkeypatch.setattr(throughput.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(throughput, "timed_tflops", lambda dtype: 0.25)
    busy = throughput.machine_tflops(torch.float32)
    assert busy.tflops == 0.25 and "load average 4.0 on 4" in busy.source and "not cached" in busy.source
    assert not (tmp_path / "cache" / "throughput.json").exists()
    monkeypatch.setattr(throughput.os, "getloadavg", lambda: (1.9, 1.0, 1.0))  # under half of the 4 CPUs: idle
    monkeypatch.setattr(throughput, "timed_tflops", lambda dtype: 1.0)
    assert throughput.machine_tflops(torch.float32).tflops == 1.0
    assert throughput.machine_tflops(torch.float32).source.endswith(str(tmp_path / "cache" / "throughput.json"))


def test_a_plan_without_tflops_uses_the_cached_throughput(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_SURGEON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(throughput, "busy_load", lambda: None)
    monkeypatch.setattr(throughput, "timed_tflops", lambda dtype: 0.5)
    plan = plan_shot(str(_config_json(tmp_path, "llama")), PruneConfig(calib_samples=8, calib_seqlen=16))
    assert plan.tflops == 0.5 and "measured now, cached in" in plan.throughput_source
    monkeypatch.setattr(throughput, "timed_tflops", lambda dtype: pytest.fail("measured twice"))
    same = plan_shot(str(_config_json(tmp_path, "llama")), PruneConfig(calib_samples=8, calib_seqlen=16))
    assert same.seconds_per_shot == plan.seconds_per_shot
