"""``compressed``: the pruned matrices stored as bitmask + nonzero values (compressed-tensors' sparse-bitmask
layout, :mod:`llm_surgeon.artifacts.formats.bitmask`), about half the size of ``dense`` at 50% sparsity.

The folder is a ``save_pretrained`` one whose Linear weights (all but the LM head) are rewritten in the
layout, with ``quantization_config`` saying so and a modeling file that rebuilds the dense weights on
``from_pretrained(DIR, trust_remote_code=True)`` (:mod:`llm_surgeon.artifacts.formats.sparse_modeling`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llm_surgeon.artifacts.formats.base import MODELING_FILE, SaveFormat, SaveRequest, auto_map, write_pretrained
from llm_surgeon.artifacts.formats.bitmask import (
    compress_state,
    decompress_state,
    is_compressed_folder,
    quantization_config,
)
from llm_surgeon.artifacts.formats.sparse_modeling import SPARSE_CLASS_NAME, sparse_modeling_source
from llm_surgeon.artifacts.formats.weights import empty_model, fill, read_weights
from llm_surgeon.models.spec import ArchitectureAdapter


class CompressedFormat(SaveFormat):
    name = "compressed"
    help = ("pruned matrices as bitmask + nonzero values (compressed-tensors' sparse-bitmask layout; loads with "
            "trust_remote_code=True)")

    def refuse(self, granularity: str, adapter: ArchitectureAdapter | None = None) -> str | None:
        if granularity == "structured":
            return ("--save-format compressed is for unstructured and N:M models; a structured one is already "
                    "physically smaller: drop it")
        if adapter is not None and adapter.experts_path is not None:
            return ("--save-format compressed stores 2-D Linear weights; this model's experts are fused 3-D "
                    "tensors: save it dense")
        return None

    def save(self, model: nn.Module, folder: Path, request: SaveRequest) -> None:
        write_pretrained(model, folder, request.tokenizer, native_names=True)
        compress_folder(folder, linear_weight_names(model), type(model).__name__, (request.sparsity, request.pattern))

    def detect(self, folder: Path) -> bool:
        return is_compressed_folder(folder)

    def load(self, folder: Path, dtype: torch.dtype) -> nn.Module:
        return fill(empty_model(folder, dtype), decompress_state(read_weights(folder)), folder)


def linear_weight_names(model: nn.Module) -> set[str]:
    """The weights of every Linear layer but the LM head (the matrices pruning leaves sparse)."""
    head = model.get_output_embeddings()
    return {f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head}


def compress_folder(folder: Path, names: set[str], family_class: str, sparsity: tuple[float, str]) -> None:
    """Rewrite a ``save_pretrained`` folder's weights in ``names`` as bitmask + values, record the format in
    ``config.json`` and add the modeling file that reads it back."""
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    for file in sorted(folder.glob("*.safetensors")):
        state = load_file(str(file))
        compressed = compress_state(state, names & set(state))
        save_file(compressed, str(file), metadata={"format": "pt"})
        if index is not None:
            for key in set(compressed) - set(state):
                index["weight_map"][key] = file.name
            for key in set(state) - set(compressed):
                index["weight_map"].pop(key, None)
    if index is not None:
        index_path.write_text(json.dumps(index, indent=2))
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = quantization_config(*sparsity)
    config["auto_map"] = auto_map(SPARSE_CLASS_NAME)
    config_path.write_text(json.dumps(config, indent=2))
    (folder / MODELING_FILE).write_text(sparse_modeling_source(family_class))
