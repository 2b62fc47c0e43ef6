"""Save formats: the registry (CLI choices, refusals, detection), a new format registering as one module, and the
typed structured layout reading and writing exactly the JSON older folders hold."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from llm_surgeon import PruneConfig, load_model_and_tokenizer, load_pruned, prune
from llm_surgeon.artifacts.compaction import compact
from llm_surgeon.artifacts.formats import (
    SaveFormat,
    SaveRequest,
    detect_format,
    format_for_run,
    format_names,
    get_format,
    refusal,
    register_format,
    save_format_names,
    save_formats_help,
)
from llm_surgeon.artifacts.formats import registry as format_registry
from llm_surgeon.artifacts.formats.base import write_pretrained
from llm_surgeon.artifacts.output_dir import save_model_files
from llm_surgeon.artifacts.structured_layout import ARCHITECTURE_FILE, BlockWidths, StructuredLayout
from llm_surgeon.cli import build_parser
from llm_surgeon.errors import ConfigError, ModelLoadError
from llm_surgeon.models import loading as plain_loading
from llm_surgeon.models.adapters import get_adapter
from tests.conftest import tiny_llama, tiny_tokenizer
from tests.test_experts import tiny_mixtral


def _save_format_action() -> argparse.Action:
    """``--save-format`` of a ``prune`` parser built now."""
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in subparsers.choices["prune"]._actions if "--save-format" in a.option_strings)


def test_the_cli_offers_the_registered_formats_and_their_help():
    assert format_names() == ["dense", "compressed", "structured", "gguf"]
    assert save_format_names() == ["dense", "compressed", "gguf"]  # structured comes with the granularity
    assert _save_format_action().choices == save_format_names()
    assert save_formats_help() == _save_format_action().help  # the same words as the CLI's own help
    with pytest.raises(ConfigError, match="--save-format 'ggml': choose one of dense, compressed, gguf"):
        get_format("ggml")


def test_a_structured_run_gets_the_structured_format_and_compressed_is_refused_before_pruning():
    assert format_for_run("dense", "structured").name == "structured"
    assert format_for_run("dense", "2:4").name == "dense"
    assert format_for_run("compressed", "unstructured").name == "compressed"
    assert format_for_run("gguf", "structured").name == "gguf"  # per-layer widths: its folder is structured
    assert refusal("dense", "structured") is None and refusal("compressed", "2:4") is None
    assert "already physically smaller" in refusal("compressed", "structured")
    moe = get_adapter(tiny_mixtral())
    assert "fused 3-D" in refusal("compressed", "unstructured", moe)
    assert refusal("dense", "structured", moe) is None


class _TorchSaveFormat(SaveFormat):
    """A toy format: every tensor in one ``weights.pt`` beside the config; detected by that file."""

    name = "torchsave"
    help = "torch.save of the state dict"

    def save(self, model, folder: Path, request: SaveRequest) -> None:
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "weights.pt")
        if request.tokenizer is not None:
            request.tokenizer.save_pretrained(folder)

    def detect(self, folder: Path) -> bool:
        return (folder / "weights.pt").is_file()

    def load(self, folder: Path, dtype: torch.dtype):
        from transformers import AutoConfig, AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype)
        model.load_state_dict(torch.load(folder / "weights.pt"))
        return model.eval()


@pytest.fixture
def toy_format(monkeypatch):
    monkeypatch.setattr(format_registry, "_FORMATS", dict(format_registry._FORMATS))  # unregistered after
    return register_format(_TorchSaveFormat())


def test_a_new_format_registers_in_one_call_and_is_chosen_saved_detected_and_loaded(toy_format, tmp_path):
    assert "torchsave" in save_format_names() and "torchsave: torch.save" in save_formats_help()
    assert _save_format_action().choices[-1] == "torchsave"  # a parser built now offers it
    with pytest.raises(ValueError, match="already registered"):
        register_format(_TorchSaveFormat())
    model = tiny_llama(0)
    save_model_files(model, tiny_tokenizer(), tmp_path, save_format="torchsave")
    assert detect_format(tmp_path) is toy_format
    reloaded, _, _ = load_model_and_tokenizer(str(tmp_path))
    ids = torch.tensor([[5, 9, 17, 33]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_plain_folders_are_no_format_s_and_the_plain_loader_takes_a_reader(tmp_path):
    model = tiny_llama(0)
    write_pretrained(model, tmp_path, tiny_tokenizer(), native_names=False)
    assert detect_format(tmp_path) is None and detect_format(tmp_path / "absent") is None
    seen = []

    def reader(folder, dtype):
        seen.append((folder, dtype))
        return None  # not ours: from_pretrained reads it

    loaded, _, _ = plain_loading.load_model_and_tokenizer(str(tmp_path), read_folder=reader)
    assert seen == [(tmp_path, torch.float32)] and type(loaded).__name__ == "LlamaForCausalLM"
    assert type(load_pruned(tmp_path)).__name__ == "LlamaForCausalLM"


OLD_ARCHITECTURE_JSON = """{
  "format": 1,
  "blocks": [
    {
      "ffn_width": 40,
      "heads": 4,
      "kv_heads": 2
    },
    {
      "ffn_width": 24,
      "heads": 2,
      "kv_heads": 1
    }
  ]
}
"""


def test_the_layout_writes_and_reads_the_json_older_folders_hold(tmp_path):
    layout = StructuredLayout((BlockWidths(40, 4, 2), BlockWidths(24, 2, 1)))
    layout.write(tmp_path)
    assert (tmp_path / ARCHITECTURE_FILE).read_text() == OLD_ARCHITECTURE_JSON
    assert StructuredLayout.read(tmp_path) == layout == StructuredLayout.from_dict(json.loads(OLD_ARCHITECTURE_JSON))
    assert StructuredLayout.from_dict(layout.to_dict()) == layout and len(layout) == 2
    (tmp_path / ARCHITECTURE_FILE).write_text(json.dumps({"format": 2, "blocks": []}))
    with pytest.raises(ModelLoadError, match="layout format 2"):
        StructuredLayout.read(tmp_path)
    (tmp_path / ARCHITECTURE_FILE).write_text(json.dumps({"format": 1, "blocks": [{"heads": 2}]}))
    with pytest.raises(ModelLoadError, match="malformed"):
        StructuredLayout.read(tmp_path)


def _old_widths(model) -> list[dict]:
    """Each block's widths read off the compacted modules, as the dicts the first writer stored."""
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    return [{"ffn_width": layer.mlp.gate_proj.out_features, "heads": layer.self_attn.q_proj.out_features // head_dim,
             "kv_heads": layer.self_attn.k_proj.out_features // head_dim} for layer in model.model.layers]


def test_a_structured_folder_written_the_old_way_still_loads(tmp_path, calibration):
    model = tiny_llama(4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
    result = prune(model, calibration, PruneConfig(granularity="structured", sparsity=0.4, shots=1), progress=False)
    layout = compact(model, result.masks)
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    old = {"format": 1, "blocks": _old_widths(model)}  # what save_architecture wrote before the typed layout
    (tmp_path / ARCHITECTURE_FILE).write_text(json.dumps(old, indent=2, sort_keys=False) + "\n")
    assert json.loads((tmp_path / ARCHITECTURE_FILE).read_text()) == layout.to_dict()
    assert detect_format(tmp_path).name == "structured"
    ids = calibration[:1]
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        torch.testing.assert_close(load_pruned(tmp_path)(input_ids=ids).logits, expected)
        torch.testing.assert_close(load_model_and_tokenizer(str(tmp_path))[0](input_ids=ids).logits, expected)
