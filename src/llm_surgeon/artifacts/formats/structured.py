"""``structured``: a compacted model whose blocks kept different widths, chosen for every structured run.

The folder is a ``save_pretrained`` one plus the per-block widths (``pruned_architecture.json``,
:class:`~llm_surgeon.artifacts.structured_layout.StructuredLayout`), read back by :meth:`StructuredFormat.load`,
and a modeling file with the Linear shapes in ``config.json`` (``llm_surgeon_layout``) for plain transformers
with ``trust_remote_code=True`` (:mod:`llm_surgeon.artifacts.formats.structured_modeling`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llm_surgeon.artifacts.compaction import apply_shapes
from llm_surgeon.artifacts.formats.base import MODELING_FILE, SaveFormat, SaveRequest, write_pretrained
from llm_surgeon.artifacts.formats.structured_modeling import attach_remote_code
from llm_surgeon.artifacts.formats.weights import empty_model, fill, read_weights
from llm_surgeon.artifacts.structured_layout import StructuredLayout
from llm_surgeon.models.adapters import get_adapter
from llm_surgeon.models.spec import ArchitectureAdapter


class StructuredFormat(SaveFormat):
    name = "structured"
    help = "a compacted model with per-block widths (structured runs; loads with trust_remote_code=True)"
    selectable = False
    holds_block_widths = True

    def refuse(self, granularity: str, adapter: ArchitectureAdapter | None = None) -> str | None:
        if granularity != "structured":
            return f"the structured format holds compacted models; a {granularity} one is saved dense"
        return None

    def save(self, model: nn.Module, folder: Path, request: SaveRequest) -> None:
        if request.layout is None:
            raise ValueError("the structured format writes a compacted model: pass its StructuredLayout")
        modeling = attach_remote_code(model, get_adapter(model))  # into the config, before it is written
        write_pretrained(model, folder, request.tokenizer, native_names=True)
        request.layout.write(folder)
        (folder / MODELING_FILE).write_text(modeling)

    def detect(self, folder: Path) -> bool:
        return StructuredLayout.present(folder)

    def load(self, folder: Path, dtype: torch.dtype) -> nn.Module:
        model = empty_model(folder, dtype)
        apply_shapes(model, StructuredLayout.read(folder))
        return fill(model, read_weights(folder), folder)
