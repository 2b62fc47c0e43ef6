"""``dense``: a plain ``save_pretrained`` folder, the pruned weights stored with their zeros.

Any transformers loads it, with no remote code; it is what a run writes unless asked otherwise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llm_surgeon.artifacts.formats.base import SaveFormat, SaveRequest, write_pretrained


class DenseFormat(SaveFormat):
    name = "dense"
    help = "safetensors with the zeros"

    def save(self, model: nn.Module, folder: Path, request: SaveRequest) -> None:
        write_pretrained(model, folder, request.tokenizer, native_names=False)

    def load(self, folder: Path, dtype: torch.dtype) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
