"""Thin access to llama.cpp through the ``llama_cpp`` binding: load a GGUF, get logits, decode greedily.

The binding is an optional dependency (it compiles llama.cpp when installed), so it is imported only
here and only when used; its absence is a one-line user error, not an ImportError traceback. Logits
are read straight from llama.cpp's context, never through a sampler, so evaluation sees exactly what
the engine computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_surgeon.gguf.errors import LlamaCppUnavailableError
from llm_surgeon.gguf.llama_buffers import extra_buffers, extra_buffers_wanted

KV_TYPES = {"f16": 1, "f32": 0}
"""KV-cache storage types (GGML type ids): llama.cpp's default f16, or f32 for exact comparisons."""


GGML_LOG_ERROR = 4
"""ggml's log level for errors (debug 1, info 2, warn 3, error 4, continuation 5)."""
_quiet_log: Any = None


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or a one-line error telling how to install it. llama.cpp's own log keeps
    its errors only: its notes (``padding V cache``, load statistics) are not the user's business."""
    global _quiet_log
    try:
        import llama_cpp
    except ImportError as err:
        raise LlamaCppUnavailableError(
            "the llama.cpp engine needs the llama_cpp binding: pip install 'llm-surgeon[gguf]' "
            "(it compiles llama.cpp, a few minutes)") from err
    if _quiet_log is None:
        _quiet_log = llama_cpp.llama_log_callback(_errors_only)  # kept alive: llama.cpp holds the pointer
        llama_cpp.llama_log_set(_quiet_log, None)
    return llama_cpp


def _errors_only(level: int, text: bytes, user_data: Any) -> None:
    if level == GGML_LOG_ERROR:
        import sys

        sys.stderr.write(text.decode("utf-8", "replace"))


def llama_cpp_available() -> bool:
    """True when the binding can be imported (tests and the CLI use this to skip or refuse early)."""
    try:
        import_llama_cpp()
    except LlamaCppUnavailableError:
        return False
    return True


def open_gguf(path: str | Path, n_ctx: int, n_threads: int, logits_all: bool = False, kv_type: str = "f16",
              n_batch: int | None = None) -> Any:
    """A ``llama_cpp.Llama`` on the CPU for ``path``.

    ``logits_all`` keeps every position's logits (perplexity, comparisons) at the cost of the output
    projection for every token; speed runs leave it off, as llama.cpp's own tools do. ``n_threads``
    should not exceed the idle cores: llama.cpp's threads meet at a barrier after every operation, so
    one descheduled thread stalls all (on 2 busy cores, 16 greedy steps of a tiny model took 6.5 s
    with 2 threads and 0.003 s with 1). The extra weight buffers (AMX, repacked layouts) are off on AMX
    CPUs, where llama.cpp's AMX kernel can crash the process (see ``llama_buffers``).
    """
    llama_cpp = import_llama_cpp()
    n_batch = n_batch or n_ctx
    with extra_buffers(llama_cpp, extra_buffers_wanted()):
        return llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=min(n_batch, 512),
            n_threads=n_threads, n_threads_batch=n_threads, n_gpu_layers=0, logits_all=logits_all,
            type_k=KV_TYPES[kv_type], type_v=KV_TYPES[kv_type], verbose=False)


def sequence_logits(llm: Any, tokens: Sequence[int]) -> np.ndarray:
    """Logits [len(tokens), vocab] (float32) for one sequence, from an empty cache.

    Needs a model opened with ``logits_all=True`` and ``n_ctx >= len(tokens)``.
    """
    llm.reset()
    llm.eval(list(tokens))
    return np.array(llm.scores[: len(tokens)], dtype=np.float32, copy=True)


def last_logits(llm: Any) -> np.ndarray:
    """The logits of the last evaluated token (works with or without ``logits_all``)."""
    llama_cpp = import_llama_cpp()
    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()


def greedy_tokens(llm: Any, prompt: Sequence[int], new_tokens: int) -> list[int]:
    """``new_tokens`` tokens chosen by argmax after ``prompt`` (no sampler, no stop token)."""
    llm.reset()
    llm.eval(list(prompt))
    out = [int(np.argmax(last_logits(llm)))]
    while len(out) < new_tokens:
        llm.eval([out[-1]])
        out.append(int(np.argmax(last_logits(llm))))
    return out[:new_tokens]
