"""The perplexity protocol's bookkeeping: no autograd graph while scoring, and per-window NLLs that give the
same result over fewer windows as scoring those windows alone."""

from __future__ import annotations

import math

import torch

from llm_surgeon.evaluation.perplexity import first_windows, perplexity
from tests.conftest import tiny_llama


def test_scoring_runs_without_autograd():
    model = tiny_llama(0).eval()
    seen = []
    model.model.layers[0].register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    tokens = torch.randint(0, model.config.vocab_size, (64,), generator=torch.Generator().manual_seed(0))
    perplexity(model, tokens, 16, progress=False)
    assert seen and all(seen)


def test_fewer_windows_from_the_per_window_nlls_equal_scoring_them_alone():
    model = tiny_llama(0).eval()
    tokens = torch.randint(0, model.config.vocab_size, (100,), generator=torch.Generator().manual_seed(1))
    whole = perplexity(model, tokens, 16, progress=False).to_dict()
    assert whole["windows"] == 6 and len(whole["window_nll"]) == 6
    alone = perplexity(model, tokens, 16, max_windows=2, progress=False)
    derived = first_windows(whole, 2)
    assert derived["windows"] == 2 and derived["tokens"] == alone.tokens == 2 * 15
    assert math.isclose(derived["ppl"], alone.ppl, rel_tol=1e-12)
    assert first_windows(whole, 7) is None and first_windows({**whole, "window_nll": []}, 2) is None
