"""Loading what a run wrote: a pruned folder in any registered save format, or any model the plain loader takes.

The plain loader (:mod:`llm_surgeon.models.loading`: hub ids, folders, GGUF files, aliases) sits below the
save formats and knows none of them; this module hands it the formats' reader, so that the public
:func:`load_model_and_tokenizer` reads a pruned folder as readily as a hub model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llm_surgeon.artifacts.formats import detect_format, get_format
from llm_surgeon.models import loading as plain


def read_saved_folder(folder: Path, dtype: torch.dtype) -> nn.Module | None:
    """The model in ``folder`` when a save format claims it (``from_pretrained`` cannot read it), else None."""
    fmt = detect_format(folder)
    return fmt.load(Path(folder), dtype) if fmt is not None else None


def load_pruned(folder: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a pruned folder as a standard ``PreTrainedModel``, whatever format it was saved in: per-block
    widths of a structured prune, weights stored as bitmask + values, or a plain ``save_pretrained`` folder."""
    model = read_saved_folder(Path(folder), dtype)
    return model if model is not None else get_format("dense").load(Path(folder), dtype)


def load_model_and_tokenizer(
    model: str, dtype: torch.dtype = torch.float32, device: str = "cpu", device_map: str | None = None
) -> tuple[nn.Module, object, plain.ModelSource]:
    """:func:`llm_surgeon.models.loading.load_model_and_tokenizer` that also reads every registered save
    format: a hub id, a model folder, a GGUF file, an alias or a pruned output folder."""
    return plain.load_model_and_tokenizer(model, dtype, device, device_map, read_folder=read_saved_folder)
