"""Perplexity under the standard protocol (SparseGPT, Wanda, LLM Surgeon).

Non-overlapping windows of ``seqlen`` tokens over the once-tokenized test text (the
remainder is dropped); ``ppl = exp(mean token NLL)`` over every predicted token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llm_surgeon.errors import DataError, UnsupportedArchitectureError
from llm_surgeon.models.adapters import get_adapter

CHUNK_TOKENS = 512
"""Positions whose logits exist at once while scoring a window."""


@dataclass
class PerplexityResult:
    ppl: float
    nll: float
    windows: int
    seqlen: int
    tokens: int
    """Tokens whose NLL was scored: ``windows * (seqlen - 1)``."""
    text_tokens: int = 0
    """Tokens in the whole evaluation text (windows beyond ``max_windows`` and the remainder unscored)."""
    dataset: str = "wikitext2"
    window_nll: list[float] = field(default_factory=list)
    """Each window's summed next-token NLL, in order: a result over fewer windows is derived from them."""

    def to_dict(self) -> dict:
        return asdict(self)


def first_windows(result: dict, windows: int) -> dict | None:
    """The result (a :class:`PerplexityResult` dict) over its first ``windows`` windows, from its per-window
    NLLs; None when it holds fewer windows or no per-window NLLs."""
    sums = result.get("window_nll") or []
    if windows < 1 or len(sums) < windows:
        return None
    tokens = windows * (result["seqlen"] - 1)
    mean_nll = math.fsum(sums[:windows]) / tokens
    return {**result, "ppl": math.exp(mean_nll), "nll": mean_nll, "windows": windows, "tokens": tokens,
            "window_nll": sums[:windows]}


def window_count(tokens: int, seqlen: int, max_windows: int | None) -> int:
    """The non-overlapping windows of ``seqlen`` an evaluation of ``tokens`` scores (at most ``max_windows``)."""
    windows = tokens // seqlen
    return windows if max_windows is None else min(windows, max_windows)


def short_text_error(tokens: int, seqlen: int) -> DataError:
    """The one-line error for a text shorter than one window, naming the flags that set the window."""
    return DataError(f"evaluation text has {tokens} tokens, fewer than one window of {seqlen}; use a window "
                     f"(--seqlen, --eval-seqlen) of at most {tokens}")


@torch.inference_mode()
def perplexity(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    seqlen: int,
    max_windows: int | None = None,
    dataset: str = "wikitext2",
    progress: bool = True,
    label: str = "",
) -> PerplexityResult:
    """Perplexity of ``model`` on ``tokens`` (1-D) in windows of ``seqlen``; ``label`` names the model on the
    progress bar (``"dense model"`` before pruning)."""
    if seqlen < 2:
        raise DataError(f"evaluation windows need at least 2 tokens, got seqlen {seqlen}")
    windows = window_count(tokens.numel(), seqlen, max_windows)
    if windows < 1:
        raise short_text_error(tokens.numel(), seqlen)
    device = model.get_input_embeddings().weight.device  # blocks may be spread over devices after it
    window_nll = _window_nll(model)
    sums = []
    desc = f"{label + ': ' if label else ''}{dataset} perplexity (seqlen {seqlen})"
    for w in tqdm(range(windows), desc=desc, disable=not progress):
        ids = tokens[w * seqlen : (w + 1) * seqlen].unsqueeze(0).to(device)
        sums.append(window_nll(ids))
    predicted = windows * (seqlen - 1)
    mean_nll = math.fsum(sums) / predicted
    return PerplexityResult(
        ppl=math.exp(mean_nll), nll=mean_nll, windows=windows, seqlen=seqlen,
        tokens=predicted, text_tokens=int(tokens.numel()), dataset=dataset, window_nll=sums,
    )


def _window_nll(model: torch.nn.Module, chunk_tokens: int = CHUNK_TOKENS) -> Callable[[torch.Tensor], float]:
    """``ids (1, seqlen) -> summed next-token NLL``. For a supported family the LM head and the loss run
    over ``chunk_tokens`` positions at a time (the adapter's logits, soft-capping included), so a window's
    full logits and their log-softmax (800 MB for 2048 positions of a 49k vocabulary) never exist at once;
    any other causal LM is scored from its whole logits."""
    try:
        adapter = get_adapter(model)
    except UnsupportedArchitectureError:
        def whole(ids: torch.Tensor) -> float:
            logits = model(input_ids=ids, use_cache=False).logits.float()[0, :-1]
            return float(F.cross_entropy(logits, ids[0, 1:].to(logits.device), reduction="sum"))

        return whole

    def chunked(ids: torch.Tensor) -> float:
        hidden = adapter.body(model)(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
        labels = ids[0, 1:]
        total = 0.0
        for start in range(0, labels.numel(), chunk_tokens):
            logits = adapter.logits(model, hidden[start:start + chunk_tokens]).float()
            target = labels[start:start + chunk_tokens].to(logits.device)  # the head may sit elsewhere
            total += float(F.cross_entropy(logits, target, reduction="sum"))
        return total

    return chunked
