"""--save-format compressed: the sparse-bitmask parts against an explicit reference, and the round trip of a
pruned folder through llm-surgeon and through plain transformers (weights identical, files smaller)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from llm_surgeon import PruneConfig, load_pruned, prune
from llm_surgeon.artifacts.formats.bitmask import (
    compress,
    compress_state,
    decompress,
    decompress_state,
    is_compressed_folder,
)
from llm_surgeon.artifacts.output_dir import save_model_files
from llm_surgeon.evaluation.footprint import folder_bytes
from tests.conftest import run_cli, tiny_llama, tiny_tokenizer, write_fake_wikitext, write_tiny_checkpoint


def sparse(rows: int, cols: int, density: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=generator)
    return W * (torch.rand(rows, cols, generator=generator) < density)


@pytest.mark.parametrize("cols", [8, 13, 64])
def test_parts_match_an_explicit_reference(cols):
    W = sparse(5, cols, 0.4)
    parts = compress(W)
    assert parts["shape"].tolist() == [5, cols]
    for r in range(5):
        kept = [j for j in range(cols) if W[r, j] != 0]
        start = int(parts["row_offsets"][r])
        assert parts["compressed"][start:start + len(kept)].tolist() == [W[r, j].item() for j in kept]
        for j in range(cols):  # bit j of row r: byte j // 8, bit j % 8 counted from the least significant
            assert (int(parts["bitmask"][r, j // 8]) >> (j % 8)) & 1 == int(W[r, j] != 0)
    assert parts["bitmask"].shape == (5, (cols + 7) // 8) and parts["bitmask"].dtype == torch.uint8
    assert torch.equal(decompress(parts), W)


def test_state_round_trip_leaves_other_tensors_alone():
    state = {"a.weight": sparse(4, 9, 0.5), "a.bias": torch.randn(4), "b.weight": sparse(3, 3, 0.5, 1)}
    packed = compress_state(state, {"a.weight"})
    assert set(packed) == {"a.weight.shape", "a.weight.compressed", "a.weight.bitmask", "a.weight.row_offsets",
                           "a.bias", "b.weight"}
    back = decompress_state(packed)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


LOAD_WITHOUT_LLM_SURGEON = """
import hashlib, json, sys, torch
sys.modules["llm_surgeon"] = None  # the folder must not need llm-surgeon
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode()); digest.update(tensor.detach().float().numpy().tobytes())
ids = torch.tensor([[5, 9, 17, 33, 65, 3]])
generated = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
print(json.dumps({"class": type(model).__name__, "digest": digest.hexdigest(), "generated": generated.shape[1]}))
"""


def _digest(model) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("granularity", ["unstructured", "2:4"])
def test_a_compressed_folder_round_trips_and_is_smaller(tmp_path, calibration, granularity):
    model = tiny_llama(0, intermediate_size=64)
    prune(model, calibration, PruneConfig(method="magnitude", granularity=granularity, sparsity=0.5), progress=False)
    expected = _digest(model)
    dense_dir, packed_dir = tmp_path / "dense", tmp_path / "compressed"
    save_model_files(model, tiny_tokenizer(), dense_dir)
    save_model_files(model, tiny_tokenizer(), packed_dir, save_format="compressed", sparsity=(0.5, granularity))
    assert is_compressed_folder(packed_dir) and not is_compressed_folder(dense_dir)
    config = json.loads((packed_dir / "config.json").read_text())
    assert config["quantization_config"]["sparsity_config"]["format"] == "sparse-bitmask"
    assert config["quantization_config"]["sparsity_config"]["sparsity_structure"] == granularity
    assert folder_bytes(packed_dir) < 0.75 * folder_bytes(dense_dir)
    assert _digest(load_pruned(packed_dir)) == expected
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_LLM_SURGEON, str(packed_dir)], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == {"class": "SparseForCausalLM", "digest": expected, "generated": 9}


def test_cli_writes_compressed_and_refuses_structured(tmp_path):
    model = write_tiny_checkpoint(tmp_path / "model")
    data = write_fake_wikitext(tmp_path / "data")
    out = tmp_path / "out"
    run_cli("prune", str(model), "--out", str(out), "--method", "magnitude", "--sparsity", "0.5",
            "--save-format", "compressed", "--data-dir", str(data), "--eval", "--eval-seqlen", "32",
            "--eval-max-windows", "2", "--no-progress")
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["save_format"] == "compressed" and report["files"]["weights_bytes"] > 0
    evaluated = json.loads(run_cli("eval", str(out), "--data-dir", str(data), "--seqlen", "32", "--max-windows",
                                   "2", "--json", "--no-progress").stdout)
    assert abs(evaluated["ppl"] - report["ppl"]["wikitext2"]) < 1e-4 * evaluated["ppl"]
    proc = run_cli("prune", str(model), "--out", str(tmp_path / "s"), "--granularity", "structured",
                   "--save-format", "compressed", check=False)
    assert proc.returncode == 2 and "already physically smaller" in proc.stderr and proc.stderr.count("\n") == 1
