"""``gguf``: the run's usual folder, plus the model as one GGUF file that llama.cpp (ollama, LM Studio,
llama-server) runs.

The folder stays what ``dense`` or, for a structured run, ``structured`` writes, so that ``eval``, a
resumed run and transformers read it as before; ``model-f16.gguf`` beside it is what
``llm-surgeon export --type f16`` would write from that folder (other types: run ``export`` on the folder).
A model llama.cpp cannot run exactly (QK-norm, non-SiLU gates, sliding windows, ...) is refused when it is
loaded, before any pruning.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from llm_surgeon.artifacts.formats.base import SaveFormat, SaveRequest
from llm_surgeon.artifacts.formats.registry import STRUCTURED_FORMAT, get_format
from llm_surgeon.models.spec import ArchitectureAdapter

GGUF_FILE = "model-f16.gguf"
GGUF_TYPE = "f16"


class GGUFFormat(SaveFormat):
    name = "gguf"
    help = f"the dense or structured folder plus {GGUF_FILE} for llama.cpp (other types: llm-surgeon export)"
    holds_block_widths = True  # the GGUF file holds per-layer widths; the folder beside it is the structured one

    def refuse(self, granularity: str, adapter: ArchitectureAdapter | None = None) -> str | None:
        if importlib.util.find_spec("gguf") is None:
            return "--save-format gguf needs the gguf package: pip install 'llm-surgeon[gguf]'"
        return None

    def refuse_model(self, model: nn.Module) -> str | None:
        from llm_surgeon.gguf.checks import export_problems

        problems = export_problems(model)
        return f"--save-format gguf: llama.cpp cannot run this model exactly: {'; '.join(problems)}" if problems \
            else None

    def save(self, model: nn.Module, folder: Path, request: SaveRequest) -> None:
        from llm_surgeon.gguf import export_gguf
        from llm_surgeon.gguf.sources import SOURCE_KEY, source_name, tokenizer_source

        self._folder_format(request).save(model, folder, request)
        extra = {SOURCE_KEY: source_name(request.source)} if request.source else {}
        export_gguf(model, tokenizer_source(request.source, request.tokenizer), folder / GGUF_FILE, GGUF_TYPE,
                    extra=extra)

    def load(self, folder: Path, dtype: torch.dtype) -> nn.Module:
        return get_format("dense").load(folder, dtype)  # detect() is False: a structured folder is claimed there

    @staticmethod
    def _folder_format(request: SaveRequest) -> SaveFormat:
        return get_format(STRUCTURED_FORMAT if request.layout is not None else "dense")
