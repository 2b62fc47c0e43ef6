"""GGUF export for llama.cpp and the llama.cpp engine (evaluation and speed), kept apart from the pruning code.

Public entry points: :func:`export_gguf` writes a dense or structurally pruned transformers model as a
GGUF file (per-layer widths as llama.cpp's ``deci`` architecture); :func:`llama_cpp_perplexity` and
:func:`compare_speed` run such files in llama.cpp through the ``llama_cpp`` binding (an optional
dependency: ``pip install llm-surgeon[gguf]``).
"""

from llm_surgeon.gguf.errors import GGUFExportError, LlamaCppUnavailableError
from llm_surgeon.gguf.export import ExportReport, export_gguf

__all__ = ["ExportReport", "GGUFExportError", "LlamaCppUnavailableError", "export_gguf"]
