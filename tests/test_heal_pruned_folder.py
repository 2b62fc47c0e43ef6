"""``benchmarks/heal_pruned_folder.py`` heals a saved pruned folder as ``prune --heal`` heals inside the run."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from llm_surgeon import PruneConfig
from llm_surgeon.api import RunOptions, run_prune
from llm_surgeon.config import RELATIVE_LR
from tests.conftest import REPO, write_fake_wikitext, write_tiny_checkpoint

_spec = importlib.util.spec_from_file_location("heal_pruned_folder", REPO / "benchmarks" / "heal_pruned_folder.py")
script = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = script
_spec.loader.exec_module(script)


def _settings(granularity: str, heal: bool, scale: str = "absolute") -> PruneConfig:
    sparsity = 0.3 if granularity == "structured" else 0.5
    healing = {"heal": True, "heal_tokens": 512, "heal_lr": 1e-3, "heal_lr_scale": scale} if heal else {}
    return PruneConfig(method="magnitude", granularity=granularity, sparsity=sparsity, shots=1, calib_samples=4,
                       calib_seqlen=32, batch_size=4, **healing)


@pytest.mark.parametrize(("granularity", "scale"), [("structured", "absolute"), ("unstructured", "absolute"),
                                                   ("structured", "weight-rms")])
def test_healing_a_saved_folder_matches_healing_inside_the_run(tmp_path, granularity, scale):
    model_dir = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")

    def prune_into(name: str, heal: bool) -> dict:
        options = RunOptions(out=str(tmp_path / name), data_dir=str(data), eval=True, eval_seqlen=64,
                             progress=False)
        return run_prune(str(model_dir), _settings(granularity, heal, scale), options)

    inside = prune_into("healed-in-run", True)
    prune_into("pruned", False)
    store = tmp_path / "targets.safetensors"
    result = script.heal_folder(tmp_path / "pruned", data, batch_size=4, heal_tokens=512, heal_lr=1e-3,
                                targets=store, eval_seqlen=64, progress=False, heal_lr_scale=scale)
    heal, reference = result["heal"], inside["heal"]
    assert heal["lr_scale"] == reference["lr_scale"] == scale
    assert heal["steps"] == reference["steps"] and heal["tokens"] == reference["tokens"] == 512
    assert heal["kl_before"] == pytest.approx(reference["kl_before"], rel=1e-4)
    assert heal["kl_after"] == pytest.approx(reference["kl_after"], rel=1e-3)
    assert heal["kl_after"] < heal["kl_before"] and result["removed_stay_zero"]
    assert result["ppl"] == pytest.approx(inside["ppl"]["wikitext2"], rel=1e-3)
    assert result["ppl_before"] == pytest.approx(reference["ppl_before"]["wikitext2"], rel=1e-6)
    again = script.heal_folder(tmp_path / "pruned", data, batch_size=4, heal_tokens=512, heal_lr=1e-3,
                               targets=store, eval_seqlen=64, progress=False, heal_lr_scale=scale)
    assert again["heal"]["seconds_teacher"] == 0.0  # the dense model's predictions read back
    assert again["heal"]["kl_after"] == pytest.approx(heal["kl_after"], rel=1e-6)


def test_healing_the_dense_model_matches_prune_heal_at_sparsity_zero(tmp_path):
    model_dir = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    config = PruneConfig(method="magnitude", sparsity=0.0, shots=1, calib_samples=4, calib_seqlen=32, batch_size=4,
                         heal=True, heal_tokens=512, heal_lr=1e-3)
    inside = run_prune(str(model_dir), config, RunOptions(out=str(tmp_path / "out"), data_dir=str(data), eval=True,
                                                          eval_seqlen=64, progress=False))
    result = script.heal_dense(str(model_dir), data, calib_samples=4, calib_seqlen=32, batch_size=4,
                               heal_tokens=512, heal_lr=1e-3, eval_seqlen=64, progress=False)
    assert result["heal"]["kl_before"] == pytest.approx(inside["heal"]["kl_before"], rel=1e-6, abs=1e-9)
    assert result["heal"]["kl_after"] == pytest.approx(inside["heal"]["kl_after"], rel=1e-4)
    assert result["ppl"] == pytest.approx(inside["ppl"]["wikitext2"], rel=1e-4)


def test_a_structured_folder_keeps_nothing_at_zero_and_a_sparse_one_every_exact_zero():
    linear = torch.nn.Linear(4, 3)
    with torch.no_grad():
        linear.weight[0, 1] = 0.0
    sparse = script.removed_weights({"l": linear}, sparse=True)["l"]
    assert sparse.sum() == 1 and sparse[0, 1]
    assert not script.removed_weights({"l": linear}, sparse=False)["l"].any()


def test_the_heal_config_is_the_runs_own_with_healing_on(tmp_path):
    report = {"config": PruneConfig(method="surgeon", sparsity=0.4, seed=3).to_dict()}
    config = script.heal_config(json.loads(json.dumps(report)), batch_size=4)
    assert config.heal and config.batch_size == 4 and config.seed == 3 and config.sparsity == 0.4
    assert config.heal_tokens == PruneConfig().heal_tokens and config.heal_learning_rate == RELATIVE_LR
    assert config.heal_rate_scale == "weight-rms"
    older = {"config": {**report["config"], "heal_lr_scale": "absolute"}}  # a folder saved before auto
    assert script.heal_config(older, 4).heal_rate_scale == "weight-rms"
    assert script.heal_config(older, 4, heal_lr_scale="absolute").heal_learning_rate == 2e-4
    assert script.heal_config(report, 4, heal_tokens=2048, heal_lr=1e-3).heal_tokens == 2048
