"""Semi-structured N:M pruning on tiny Llama and OPT models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from llm_surgeon import PruneConfig, prune
from llm_surgeon.artifacts.semi_structured import to_semi_structured
from llm_surgeon.engine.pruner import sparsity_stats, validate_nm
from llm_surgeon.errors import ConfigError, LLMSurgeonError
from llm_surgeon.math.selection import nm_violations
from llm_surgeon.models.adapters import get_adapter
from tests.conftest import run_cli, tiny_llama, write_fake_wikitext, write_tiny_checkpoint


@pytest.mark.parametrize("method", ["surgeon", "magnitude"])
@pytest.mark.parametrize("shots", [1, 3])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_every_group_satisfies_the_pattern(tiny_model, calibration, method, shots, pattern):
    n, m = map(int, pattern.split(":"))
    result = prune(tiny_model, calibration, PruneConfig(method=method, granularity=pattern, shots=shots),
                   progress=False)
    linears = get_adapter(tiny_model).prunable_linears(tiny_model)
    for name, lin in linears.items():
        assert nm_violations(lin.weight, n, m) == 0, name
    achieved, per_layer = sparsity_stats(linears)
    assert abs(achieved - n / m) < 1e-9
    assert all(abs(v - n / m) < 1e-9 for v in per_layer.values())
    assert result.nm_validation["valid"] and result.nm_validation["pattern"] == pattern


def test_intermediate_shots_bring_a_growing_fraction_of_groups_into_pattern(calibration):
    model = tiny_llama()
    fractions = []

    def record(shot, result):
        zeros = sum(int(m.sum()) for m in result.masks.values())
        total = sum(m.numel() for m in result.masks.values())
        fractions.append(zeros / total)

    from llm_surgeon.engine.pruner import prune_model

    prune_model(model, calibration, PruneConfig(granularity="2:4", shots=4), progress=False, on_shot_end=record)
    assert [round(f, 3) for f in fractions] == [0.125, 0.25, 0.375, 0.5]


def test_validator_fails_loudly_on_a_broken_group():
    model = tiny_llama()
    linears = get_adapter(model).prunable_linears(model)
    with torch.no_grad():
        for lin in linears.values():
            lin.weight.view(lin.out_features, -1, 4)[..., :2] = 0
        first = next(iter(linears.values()))
        first.weight[3, 1] = 1.0  # row 3, group 0 now has one zero
    with pytest.raises(LLMSurgeonError, match="N:M validation failed"):
        validate_nm(linears, 2, 4)


def test_width_not_multiple_of_m_is_a_clear_error(calibration):
    model = tiny_llama(hidden_size=36, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64)
    with pytest.raises(ConfigError, match=r"divisible by 8; layer model\.layers\.0\.self_attn\.q_proj has 36 inputs"):
        prune(model, calibration, PruneConfig(granularity="2:8", shots=1), progress=False)


@pytest.mark.parametrize("pattern", ["4:4", "5:4", "0:4"])
def test_impossible_patterns_are_refused(pattern):
    with pytest.raises(ConfigError, match="impossible"):
        PruneConfig(granularity=pattern).validate()


def test_semi_structured_export_says_plainly_it_needs_a_gpu_on_cpu(calibration):
    model = tiny_llama()
    prune(model, calibration, PruneConfig(granularity="2:4", shots=1), progress=False)
    linears = get_adapter(model).prunable_linears(model)
    before = {k: v.weight.clone() for k, v in linears.items()}
    export = to_semi_structured(linears, (2, 4))
    assert not export.applied and "CUDA GPU" in export.reason
    assert all(torch.equal(before[k], v.weight) for k, v in linears.items())
    assert "2:4 pattern only" in to_semi_structured(linears, (4, 8)).reason


def test_nm_pattern_survives_save_and_reload(tmp_path):
    model_dir = write_tiny_checkpoint(tmp_path / "model", "opt")
    data = write_fake_wikitext(tmp_path / "data")
    out = tmp_path / "out"
    run_cli("prune", str(model_dir), "--out", str(out), "--granularity", "2:4", "--shots", "2",
            "--calib-samples", "4", "--calib-seqlen", "32", "--data-dir", str(data), "--no-progress",
            "--semi-structured-export")
    report = json.loads((out / "report.json").read_text())
    assert report["nm_validation"]["valid"] and report["nm_validation"]["pattern"] == "2:4"
    assert report["achieved_sparsity"] == 0.5
    assert report["semi_structured_export"]["applied"] is False
    code = (
        "import sys; from transformers import AutoModelForCausalLM;"
        "from llm_surgeon.models.adapters import get_adapter; from llm_surgeon.engine.pruner import validate_nm;"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]);"
        "print(validate_nm(get_adapter(m).prunable_linears(m), 2, 4)['valid'])"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "True"
