"""The plan: predicted from a config alone, its factor bytes equal to what the curvature pass allocates."""

from __future__ import annotations

import json

import pytest

from llm_surgeon.models.adapters import get_adapter
from llm_surgeon.resources import raw_factor_bytes
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
    plan = json.loads(run_cli("plan", str(path), "--json", "--tflops", "1", "--calib-samples", "4",
                              "--calib-seqlen", "32", "--device-memory", "1").stdout)
    assert plan["peak_bytes"] > plan["weights_bytes"] > 0 and plan["seconds_per_shot"] > 0
    assert plan["fits"] is True and plan["model_type"] == "llama"
    bigger = json.loads(run_cli("plan", str(path), "--json", "--tflops", "1", "--calib-samples", "4",
                                "--calib-seqlen", "32", "--batch-size", "16").stdout)
    assert bigger["activations_bytes"] == pytest.approx(2 * plan["activations_bytes"], rel=1e-6)
    assert bigger["factors_bytes"] == plan["factors_bytes"]


def test_plan_says_when_it_does_not_fit_and_refuses_bad_input(tmp_path):
    path = _config_file(tmp_path)
    text = run_cli("plan", str(path), "--tflops", "1", "--device-memory", "0.000001").stdout
    assert "does NOT fit" in text and "time per shot" in text
    missing = run_cli("plan", str(tmp_path / "nope.json"), check=False)
    assert missing.returncode == 2 and "config file not found" in missing.stderr
