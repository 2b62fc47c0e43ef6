"""A structurally pruned folder loads with plain transformers (``trust_remote_code=True``) where llm-surgeon
cannot be imported, for every family with structured support: same logits as ``load_pruned``, and it generates."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from llm_surgeon import PruneConfig, load_pruned, prune
from llm_surgeon.artifacts.compaction import compact
from llm_surgeon.artifacts.formats import MODELING_FILE
from llm_surgeon.artifacts.formats.structured_modeling import LAYOUT_KEY, modeling_source
from llm_surgeon.artifacts.output_dir import save_model_files
from llm_surgeon.models.adapters import get_adapter
from tests.conftest import tiny_tokenizer
from tests.test_families import FAMILIES, tiny

STRUCTURED = [family for family in FAMILIES if get_adapter(tiny(family)).structure is not None]

LOAD_WITHOUT_LLM_SURGEON = """
import json, sys, torch
sys.modules["llm_surgeon"] = None  # any import of llm-surgeon fails: the folder must not need it
from transformers import AutoModelForCausalLM
results = {}
for folder in sys.argv[1:]:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = torch.tensor([[5, 9, 17, 33, 65, 3]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    generated = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    results[folder] = {"class": type(model).__name__, "logits": logits.flatten().tolist(),
                       "generated": generated.shape[1]}
print(json.dumps(results))
"""


def test_every_structured_family_loads_with_plain_transformers(tmp_path, calibration):
    expected, folders = {}, []
    for family in STRUCTURED:
        model = tiny(family)
        adapter = get_adapter(model)
        result = prune(model, calibration, PruneConfig(granularity="structured", sparsity=0.3, shots=2),
                       progress=False, adapter=adapter)
        shapes = compact(model, result.masks, adapter)
        folder = tmp_path / family
        save_model_files(model, tiny_tokenizer(), folder, shapes)
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_llm_surgeon.PrunedForCausalLM"
        blocks = config[LAYOUT_KEY]["blocks"]
        widths = {tuple(shape) for block in blocks for shape in [*block["linears"].values(),
                                                                  *block["parameters"].values()]}
        distinct = len(blocks[0]["linears"]) + len(blocks[0]["parameters"])
        assert len(widths) > distinct // 2  # the blocks really differ from one config width
        reference = load_pruned(folder)
        with torch.no_grad():
            expected[str(folder)] = reference(input_ids=torch.tensor([[5, 9, 17, 33, 65, 3]])).logits.flatten()
        folders.append(str(folder))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_LLM_SURGEON, *folders], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    for folder in folders:
        assert loaded[folder]["class"] == "PrunedForCausalLM" and loaded[folder]["generated"] == 9
        torch.testing.assert_close(torch.tensor(loaded[folder]["logits"]), expected[folder], rtol=1e-4, atol=1e-4)


def test_unstructured_folders_need_no_remote_code(tmp_path, calibration):
    model = tiny("llama")
    prune(model, calibration, PruneConfig(sparsity=0.5, shots=1), progress=False)
    save_model_files(model, tiny_tokenizer(), tmp_path)
    assert not (tmp_path / MODELING_FILE).exists()
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())


def test_the_modeling_file_refuses_a_bad_class_name():
    assert "from transformers import LlamaForCausalLM as FamilyForCausalLM" in modeling_source("LlamaForCausalLM")
    with pytest.raises(ValueError, match="not a class name"):
        modeling_source("Llama; import os")
