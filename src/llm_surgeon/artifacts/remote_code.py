"""A structurally pruned model that plain transformers can load: ``from_pretrained(DIR, trust_remote_code=True)``.

transformers configs hold one width for every block, so a model whose blocks kept different numbers of
FFN neurons and heads cannot be built by the family's own class. The output folder therefore gets a
small modeling file (registered in ``config.json`` under ``auto_map``) whose class is the family's own
``...ForCausalLM`` with each block's Linear layers resized to the shapes recorded in the config
(``llm_surgeon_layout``) before the weights are loaded. The file imports only torch and transformers:
the folder loads where llm-surgeon is not installed. :func:`llm_surgeon.load_pruned` reads the same
folder without remote code.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from llm_surgeon.models.spec import ArchitectureAdapter

MODELING_FILE = "modeling_llm_surgeon.py"
CLASS_NAME = "PrunedForCausalLM"
LAYOUT_KEY = "llm_surgeon_layout"

_TEMPLATE = '''"""Written by llm-surgeon: {family_class} with per-block widths after structured pruning.

Each decoder block's Linear layers are rebuilt with the shapes in ``config.{layout_key}`` before the
weights are loaded; attention modules get their own head counts. Needs only torch and transformers:
    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
"""

import copy

from torch import nn
from transformers import {family_class} as FamilyForCausalLM


def _resize_blocks(model, layout):
    blocks = model.get_submodule(layout["blocks_path"])
    if len(blocks) != len(layout["blocks"]):
        raise ValueError(f"{{len(layout['blocks'])}} recorded blocks for a model with {{len(blocks)}}")
    for block, recorded in zip(blocks, layout["blocks"]):
        for path, (rows, cols, bias) in recorded["linears"].items():
            owner_path, _, leaf = path.rpartition(".")
            owner = block.get_submodule(owner_path) if owner_path else block
            old = getattr(owner, leaf).weight
            setattr(owner, leaf, nn.Linear(cols, rows, bias=bias, device=old.device, dtype=old.dtype))
        for path, shape in recorded.get("parameters", {{}}).items():  # fused expert weights
            owner_path, _, leaf = path.rpartition(".")
            owner = block.get_submodule(owner_path)
            setattr(owner, leaf, nn.Parameter(getattr(owner, leaf).new_empty(shape)))
        attention = block.get_submodule(layout["attention"])
        for name, value in recorded["attention"].items():
            setattr(attention, name, value)
        if recorded.get("attention_config"):
            own = copy.copy(attention.config)
            for name, value in recorded["attention_config"].items():
                setattr(own, name, value)
            attention.config = own


class {class_name}(FamilyForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        _resize_blocks(self, config.{layout_key})
'''


SPARSE_CLASS_NAME = "SparseForCausalLM"

_SPARSE_TEMPLATE = '''"""Written by llm-surgeon: {family_class} with its pruned weights in the sparse-bitmask layout.

Each pruned matrix ``NAME`` is stored as ``NAME.shape``, ``NAME.compressed`` (its nonzero values),
``NAME.bitmask`` (one bit per weight, rows packed little-endian) and ``NAME.row_offsets``; this class
rebuilds the dense weights while loading. Needs only torch, numpy, safetensors and transformers:
    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
"""

import copy
import glob
import os

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import GenerationConfig
from transformers import {family_class} as FamilyForCausalLM

PARTS = ("shape", "compressed", "bitmask", "row_offsets")


def _dense(parts):
    rows, cols = (int(v) for v in parts["shape"].tolist())
    keep = np.unpackbits(parts["bitmask"].numpy(), axis=-1, count=cols, bitorder="little").astype(bool)
    dense = torch.zeros(rows, cols, dtype=parts["compressed"].dtype)
    dense[torch.from_numpy(keep)] = parts["compressed"]
    return dense


def _read_state(folder):
    state = {{}}
    for file in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        state.update(load_file(file))
    grouped, out = {{}}, {{}}
    for key, value in state.items():
        base, _, part = key.rpartition(".")
        if part in PARTS and base + ".compressed" in state:
            grouped.setdefault(base, {{}})[part] = value
        else:
            out[key] = value
    out.update({{base: _dense(parts) for base, parts in grouped.items()}})
    return out


class {class_name}(FamilyForCausalLM):
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, dtype=None, torch_dtype=None,
                        **kwargs):
        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            from huggingface_hub import snapshot_download

            folder = snapshot_download(folder)
        if config is None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(folder)
        config = copy.deepcopy(config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are dense once read; nothing is quantized
        state = _read_state(folder)
        model = cls(config)
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {{"lm_head.weight"}} if getattr(config, "tie_word_embeddings", False) else set()
        if unexpected or set(missing) - tied:
            lacking = sorted(set(missing) - tied)[:3]
            raise ValueError(f"weights in {{folder}} do not fit the model: missing {{lacking}}, "
                             f"unexpected {{sorted(unexpected)[:3]}}")
        model.tie_weights()
        chosen = dtype or torch_dtype
        if chosen is None or chosen == "auto":
            chosen = next(iter(state.values())).dtype
        model.to(getattr(torch, chosen) if isinstance(chosen, str) else chosen)
        if os.path.isfile(os.path.join(folder, "generation_config.json")):
            model.generation_config = GenerationConfig.from_pretrained(folder)
        return model.eval()
'''


def sparse_modeling_source(family_class: str) -> str:
    """The modeling file that reads a sparse-bitmask folder for a model whose own class is ``family_class``."""
    if not family_class.isidentifier():
        raise ValueError(f"not a class name: {family_class!r}")
    return _SPARSE_TEMPLATE.format(family_class=family_class, class_name=SPARSE_CLASS_NAME)


def block_layout(model: nn.Module, adapter: ArchitectureAdapter) -> dict:
    """Every block's Linear shapes ``{rel: [out, in, bias]}``, fused expert weights' shapes and its
    attention's head counts, as compacted."""
    spec = adapter.structure
    assert spec is not None, "only families with a structure description are compacted"
    blocks = []
    adapter.restore(model)  # experts: the fused weights are what is saved and resized
    for block in adapter.blocks(model):
        linears, parameters = {}, {}
        for rel in adapter.block_linear_names(block):
            if adapter.is_expert_layer(rel):
                continue
            lin = block.get_submodule(rel)
            linears[rel] = [lin.out_features, lin.in_features, lin.bias is not None]
        if spec.experts is not None:
            fused = block.get_submodule(spec.experts)
            parameters = {f"{spec.experts}.{name}": list(getattr(fused, name).shape)
                          for name in ("gate_up_proj", "down_proj")}
        attention = block.get_submodule(spec.attention)
        attrs = {name: getattr(attention, name) for name in spec.head_count_attrs + spec.kv_head_count_attrs}
        own_config = None
        if spec.attention_reads_config:
            own_config = {name: getattr(attention.config, name)
                          for name in ("num_attention_heads", "num_key_value_heads")}
        blocks.append({"linears": linears, "parameters": parameters, "attention": attrs,
                       "attention_config": own_config})
    return {"format": 1, "blocks_path": adapter.blocks_path, "attention": spec.attention, "blocks": blocks}


def modeling_source(family_class: str) -> str:
    """The modeling file for a model whose own class is ``family_class`` (e.g. ``LlamaForCausalLM``)."""
    if not family_class.isidentifier():
        raise ValueError(f"not a class name: {family_class!r}")
    return _TEMPLATE.format(family_class=family_class, class_name=CLASS_NAME, layout_key=LAYOUT_KEY)


def attach_remote_code(model: nn.Module, adapter: ArchitectureAdapter) -> str:
    """Record the compacted layout in the model's config and point ``auto_map`` at the modeling file;
    return the file's source (written beside ``config.json`` by the caller)."""
    family_class = type(model).__name__
    setattr(model.config, LAYOUT_KEY, block_layout(model, adapter))
    model.config.auto_map = {"AutoModelForCausalLM": f"{Path(MODELING_FILE).stem}.{CLASS_NAME}"}
    return modeling_source(family_class)
