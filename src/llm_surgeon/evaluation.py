"""Perplexity under the standard protocol (SparseGPT, Wanda, LLM Surgeon).

Non-overlapping windows of ``seqlen`` tokens over the once-tokenized test text (the
remainder is dropped); ``ppl = exp(mean token NLL)`` over every predicted token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llm_surgeon.errors import DataError


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

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def perplexity(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    seqlen: int,
    max_windows: int | None = None,
    dataset: str = "wikitext2",
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``tokens`` (1-D) in windows of ``seqlen``."""
    if seqlen < 2:
        raise DataError(f"evaluation windows need at least 2 tokens, got seqlen {seqlen}")
    windows = tokens.numel() // seqlen
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows < 1:
        raise DataError(f"evaluation text has {tokens.numel()} tokens, fewer than one window of {seqlen}")
    device = next(model.parameters()).device
    total_nll = 0.0
    predicted = 0
    for w in tqdm(range(windows), desc=f"perplexity (seqlen {seqlen})", disable=not progress):
        ids = tokens[w * seqlen : (w + 1) * seqlen].unsqueeze(0).to(device)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        nll = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        total_nll += float(nll)
        predicted += seqlen - 1
    mean_nll = total_nll / predicted
    return PerplexityResult(
        ppl=math.exp(mean_nll), nll=mean_nll, windows=windows, seqlen=seqlen,
        tokens=predicted, text_tokens=int(tokens.numel()), dataset=dataset,
    )
