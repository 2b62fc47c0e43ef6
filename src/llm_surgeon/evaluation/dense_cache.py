"""Dense perplexities remembered across runs, so a pruned result can be shown beside its dense model.

``llm-surgeon eval`` and ``prune --eval-dense`` store what they measure under a key that names
the model (with the size and time of its local files, so a rewritten folder is a new key), the
dtype, the data file's SHA-256 and the window length; ``prune --eval`` looks the dense model up there.
Each entry keeps its windows' NLLs, so an evaluation of the first K windows is answered by any stored
one that covered at least K (the entry with the most windows is kept). The cache is a JSON file in
``$LLM_SURGEON_CACHE`` (default ``~/.cache/llm-surgeon``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from llm_surgeon.data.textsets import WIKITEXT2, TextSet, evaluation_files
from llm_surgeon.evaluation.perplexity import first_windows
from llm_surgeon.runtime.files import atomic_write_json

CACHE_ENV = "LLM_SURGEON_CACHE"
CACHE_FILE = "dense_ppl.json"


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llm-surgeon"
    return Path(root) / CACHE_FILE


def _files_stamp(model: str) -> str:
    path = Path(model)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) + sorted(path.glob("*.gguf"))
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file())


def _text_digest(data_dir: Path | None, text_set: TextSet) -> str:
    """A digest of the files the set is read from (WikiText-2's test file, a named set's folder, the user's file)."""
    if text_set.path is None and data_dir is None:
        return "hub"
    files = evaluation_files(text_set, data_dir)
    digest = hashlib.sha256()
    for file in files:
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest() if any(f.is_file() for f in files) else "missing"


def cache_key(model: str, dtype: str, data_dir: Path | None, seqlen: int, text_set: TextSet = WIKITEXT2) -> str:
    """The key of a model's evaluations on one set at one window length (any number of windows)."""
    return json.dumps([model, _files_stamp(model), dtype, text_set.name, _text_digest(data_dir, text_set), seqlen,
                       "per-window"])


def _entries() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def lookup(key: str, windows: int) -> dict | None:
    """The stored result over the first ``windows`` windows, or None when no stored one covers them."""
    entry = _entries().get(key)
    return None if entry is None else first_windows(entry, windows)


def store(key: str, result: dict) -> None:
    """Remember ``result`` (a PerplexityResult dict) unless one with more windows is stored; a cache that cannot
    be written is skipped, never fatal."""
    entries = _entries()
    held = entries.get(key)
    if held is not None and len(held.get("window_nll") or []) >= len(result.get("window_nll") or []):
        return
    entries[key] = result
    with contextlib.suppress(OSError):
        atomic_write_json(cache_path(), entries)
