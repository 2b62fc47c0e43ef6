"""Where an exported file's tokenizer comes from, and how the file names the model it was exported from.

llama.cpp tokenizes with the vocabulary written into the GGUF file, so that vocabulary is copied from the
source GGUF where the model came from one (exactly as llama.cpp already knows it), else converted from
the Hugging Face tokenizer. The file records its source model under :data:`SOURCE_KEY`, so that
``eval --engine llama.cpp`` tokenizes text with the same tokenizer as ``eval`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from llm_surgeon.models.loading import resolve_model_source
from llm_surgeon.runtime.files import REPORT_NAME

SOURCE_KEY = "llm_surgeon.source_model"
"""The GGUF key naming the model an exported file came from, whose tokenizer ``eval`` reads."""


def tokenizer_source(model_name: str | None, tokenizer):
    """What the GGUF's tokenizer is written from: the source GGUF file where the model came from one, else
    the Hugging Face ``tokenizer``. A pruned folder names its source model in its report."""
    if model_name is None:
        return tokenizer
    folder = Path(model_name)
    report = folder / REPORT_NAME
    if folder.is_dir() and report.is_file():
        model_name = json.loads(report.read_text()).get("model", model_name)
    try:
        source = resolve_model_source(model_name)
    except Exception:  # the source moved or is a hub id offline: its tokenizer came with the folder
        return tokenizer
    return Path(source.path_or_id) / source.gguf_file if source.gguf_file else tokenizer


def source_name(model_name: str) -> str:
    """The name a file records for its source: an absolute path for local models, else the hub id/alias."""
    path = Path(model_name)
    return str(path.resolve()) if path.exists() else model_name
