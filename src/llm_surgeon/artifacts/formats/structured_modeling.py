"""The remote-code file of a ``structured`` folder: plain transformers builds the per-block widths.

transformers configs hold one width for every block, so a model whose blocks kept different numbers of
FFN neurons and heads cannot be built by the family's own class. The output folder therefore gets a
small modeling file (registered in ``config.json`` under ``auto_map``) whose class is the family's own
``...ForCausalLM`` with each block's Linear layers resized to the shapes recorded in the config
(``llm_surgeon_layout``) before the weights are loaded. The file imports only torch and transformers:
the folder loads where llm-surgeon is not installed. :func:`llm_surgeon.load_pruned` reads the same
folder without remote code.
"""

from __future__ import annotations

from torch import nn

from llm_surgeon.artifacts.formats.base import auto_map
from llm_surgeon.models.spec import ArchitectureAdapter

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
    model.config.auto_map = auto_map(CLASS_NAME)
    return modeling_source(family_class)
