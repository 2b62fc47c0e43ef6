"""Save formats: how a pruned model is written to its output folder and read back, one module per format.

Each format is a :class:`~llm_surgeon.artifacts.formats.base.SaveFormat` (name, help line, which runs it
refuses, save, detect, load) registered once in :mod:`~llm_surgeon.artifacts.formats.registry`; the CLI's
``--save-format`` choices, the run's checks, the output folder and the loader read the registry. A new
format is one module with its class and a ``register_format(TheFormat())`` line, imported here (or, for a
format above this layer such as the GGUF exporter, by a module of its own rank, e.g. ``api``).
"""

from llm_surgeon.artifacts.formats.base import MODELING_FILE, SaveFormat, SaveRequest
from llm_surgeon.artifacts.formats.compressed import CompressedFormat
from llm_surgeon.artifacts.formats.dense import DenseFormat
from llm_surgeon.artifacts.formats.gguf_file import GGUFFormat
from llm_surgeon.artifacts.formats.registry import (
    STRUCTURED_FORMAT,
    check_selectable,
    detect_format,
    format_for_run,
    format_names,
    get_format,
    refusal,
    register_format,
    save_format_names,
    save_formats_help,
)
from llm_surgeon.artifacts.formats.structured import StructuredFormat

for _format in (DenseFormat(), CompressedFormat(), StructuredFormat(), GGUFFormat()):
    register_format(_format)

__all__ = ["MODELING_FILE", "STRUCTURED_FORMAT", "CompressedFormat", "DenseFormat", "GGUFFormat", "SaveFormat",
           "SaveRequest", "StructuredFormat", "check_selectable", "detect_format", "format_for_run", "format_names",
           "get_format", "refusal", "register_format", "save_format_names", "save_formats_help"]
