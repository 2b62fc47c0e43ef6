"""``--device-map``: accelerate places the blocks; each layer's factors and update stay beside it.

This machine has no GPU, so accelerate's placement puts every block in host memory: these tests check
the loading path, the report and the refusals; the several-GPU placement itself runs where GPUs exist.
"""

from __future__ import annotations

import json

import pytest
import torch

from llm_surgeon import PruneConfig
from llm_surgeon.api import RunOptions, prune_job
from llm_surgeon.errors import ConfigError, ModelLoadError
from llm_surgeon.models.loading import _refuse_offloaded, load_model_and_tokenizer
from tests.conftest import tiny_llama, tiny_tokenizer, write_fake_wikitext


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("device-map")
    tiny_llama(seed=2).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    return root / "model", write_fake_wikitext(root / "data", lines=400)


def _run(saved, out, device_map):
    model, data = saved
    config = PruneConfig(sparsity=0.5, shots=2, calib_samples=8, calib_seqlen=32, batch_size=4)
    options = RunOptions(out=str(out), data_dir=str(data), progress=False, device_map=device_map)
    return prune_job(str(model), config, options).report


def test_a_device_mapped_run_prunes_like_a_plain_one_and_reports_the_placement(saved, tmp_path):
    plain = _run(saved, tmp_path / "plain", None)
    mapped = _run(saved, tmp_path / "mapped", "auto")
    assert mapped["distributed"]["device_map"] == "auto"
    assert mapped["distributed"]["blocks_per_device"] == {"cpu": 2}
    assert mapped["per_layer_sparsity"] == plain["per_layer_sparsity"]
    a = json.loads((tmp_path / "plain" / "report.json").read_text())["achieved_sparsity"]
    assert mapped["achieved_sparsity"] == pytest.approx(a)
    model, _, _ = load_model_and_tokenizer(str(tmp_path / "mapped"), device_map="auto")
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_bad_device_maps_are_refused_before_loading(saved, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="choose one of auto"):
        RunOptions(out=str(tmp_path), device_map="everywhere").validate()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="drop --device-map"):
        RunOptions(out=str(tmp_path), device_map="auto").validate()


def test_offloaded_weights_are_refused_in_one_line():
    model = tiny_llama(seed=0)
    with torch.device("meta"):
        model.model.layers[1].mlp.down_proj.weight = torch.nn.Parameter(torch.empty(8, 8))
    with pytest.raises(ModelLoadError, match="offloads 1 weights .*down_proj"):
        _refuse_offloaded(model, "auto")


def test_a_numbered_gpu_under_torchrun_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("llm_surgeon.api.check_device", lambda name: torch.device("cuda", 0))
    with pytest.raises(ConfigError, match="each rank takes the GPU of its LOCAL_RANK"):
        RunOptions(out=str(tmp_path), device="cuda:0").validate()
