"""The remote-code file of a ``compressed`` folder: plain transformers reads the sparse-bitmask weights.

transformers dropped its own reader of this layout (it requires compressed-tensors >= 0.15, which has
none), so the folder gets a modeling file (named in ``config.json``'s ``auto_map``) whose class is the
family's own ``...ForCausalLM`` that rebuilds the dense weights while loading:
``from_pretrained(DIR, trust_remote_code=True)``. The file imports only torch, numpy, safetensors and
transformers: the folder loads where llm-surgeon is not installed.
"""

from __future__ import annotations

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
