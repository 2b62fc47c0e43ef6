"""Perplexity from llama.cpp's own logits, on the project's windows.

The project's protocol: the text is tokenised once, cut into non-overlapping windows of ``seqlen``
tokens, and every position after the first is predicted from the tokens before it in its window.
Running the same windows through llama.cpp gives a perplexity directly comparable with the
transformers one, which is how an export is checked end to end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_surgeon.gguf.llama_engine import open_gguf, sequence_logits

ROWS_PER_CHUNK = 256
"""Logit rows turned into log-probabilities at once (float64 over a large vocabulary is big)."""


@dataclass(frozen=True)
class PerplexityResult:
    """exp(mean NLL) over every predicted token of every window, with the sums behind it."""

    perplexity: float
    nll_sum: float
    tokens: int
    windows: int


def split_windows(ids: Sequence[int], seqlen: int, max_windows: int | None = None) -> list[list[int]]:
    """Non-overlapping windows of ``seqlen`` tokens (a shorter tail is dropped), at most ``max_windows``."""
    count = len(ids) // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    return [list(ids[i * seqlen:(i + 1) * seqlen]) for i in range(count)]


def window_nll(logits: np.ndarray, tokens: Sequence[int]) -> float:
    """Summed negative log-likelihood of ``tokens[1:]`` given logits [len, vocab] (float64 arithmetic)."""
    targets = np.asarray(tokens[1:], dtype=np.int64)
    total = 0.0
    for start in range(0, len(targets), ROWS_PER_CHUNK):
        rows = logits[start:start + ROWS_PER_CHUNK][: len(targets) - start].astype(np.float64)
        peak = rows.max(axis=1, keepdims=True)
        log_norm = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
        picked = rows[np.arange(len(rows)), targets[start:start + len(rows)]]
        total += float((log_norm - picked).sum())
    return total


def llama_cpp_perplexity(gguf_path: str | Path, token_windows: Sequence[Sequence[int]], n_threads: int,
                         kv_type: str = "f16") -> PerplexityResult:
    """Perplexity of ``gguf_path`` in llama.cpp on ``token_windows`` (all of one length).

    ``kv_type`` is llama.cpp's KV-cache type: its default ``f16``, or ``f32`` to compare an f32 export
    with transformers to float precision.
    """
    if not token_windows:
        raise ValueError("no windows to evaluate")
    seqlen = len(token_windows[0])
    llm = open_gguf(gguf_path, n_ctx=seqlen, n_threads=n_threads, logits_all=True, kv_type=kv_type)
    try:
        nll, tokens = 0.0, 0
        for window in token_windows:
            nll += window_nll(sequence_logits(llm, window), window)
            tokens += len(window) - 1
    finally:
        llm.close()
    return PerplexityResult(math.exp(nll / tokens), nll, tokens, len(token_windows))
