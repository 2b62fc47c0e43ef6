"""The dtype a model's own weights are stored in, and a one-line description of what was loaded.

A prune runs in ``--dtype`` (float32 by default, for exact curvature sums on a CPU) but a user expects the
output to be no larger than the model they started from: the output is saved in the source's own dtype
unless ``--save-dtype`` says otherwise. A checkpoint folder or hub model states its dtype in its config; a
GGUF file states its storage type, and a quantised one (Q4_1, Q8_0, ...) is de-quantised to float16, the
type llama.cpp itself works in and which holds a block's scale times its small integers closely.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llm_surgeon.models.aliases import ALIAS_MODELS
from llm_surgeon.models.loading import ModelSource, resolve_model_source

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_GGUF_FILE_TYPES = {0: torch.float32, 1: torch.float16, 32: torch.bfloat16}
"""llama.cpp's ``general.file_type`` values for unquantised files (ALL_F32, MOSTLY_F16, MOSTLY_BF16)."""


def _gguf_file_type(path: Path) -> tuple[int, str] | None:
    """The file's ``general.file_type`` and its name (``MOSTLY_Q4_1``), or None when unreadable."""
    try:
        from gguf import GGUFReader, LlamaFileType
    except ImportError:
        return None
    try:
        field = GGUFReader(str(path)).fields.get("general.file_type")
    except Exception:  # an unreadable file: the loader says why
        return None
    if field is None:
        return None
    value = int(field.parts[field.data[0]][0])
    try:
        return value, LlamaFileType(value).name
    except ValueError:
        return value, f"file type {value}"


def _config_dtype(source: ModelSource) -> torch.dtype | None:
    config = Path(source.path_or_id) / "config.json"
    if not config.is_file():
        return None
    import json

    settings = json.loads(config.read_text())
    name = settings.get("dtype") or settings.get("torch_dtype")
    return DTYPE_NAMES.get(name) if isinstance(name, str) else None


def source_dtype(model_name: str) -> torch.dtype | None:
    """The dtype ``model_name``'s weights are stored in (a de-quantised GGUF: float16); None when unknown
    (a hub id not in the local cache, a config without a dtype)."""
    try:
        source = resolve_model_source(model_name)
    except Exception:
        return None
    if source.gguf_file:
        found = _gguf_file_type(Path(source.path_or_id) / source.gguf_file)
        return None if found is None else _GGUF_FILE_TYPES.get(found[0], torch.float16)
    return _config_dtype(source)


def describe_source(model_name: str, dtype: torch.dtype) -> str:
    """What was loaded, in words: the alias's real model, a GGUF's storage type, the dtype it runs in."""
    try:
        source = resolve_model_source(model_name)
    except Exception:
        return model_name
    running = str(dtype).removeprefix("torch.")
    if not source.gguf_file:
        return f"{model_name} in {running}"
    found = _gguf_file_type(Path(source.path_or_id) / source.gguf_file)
    stored = found[1].removeprefix("MOSTLY_").removeprefix("ALL_") if found else "GGUF"
    what = ALIAS_MODELS.get(model_name, Path(source.gguf_file).name)
    return f"{what} from a {stored} GGUF, de-quantised to {running}"
