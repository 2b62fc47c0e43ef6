"""Back-propagating the next-token NLL with the logits made a chunk at a time.

The logits are the largest activation of a forward/backward pass: a batch of 8 × 2048 tokens
over Llama 3's 128k vocabulary is 8 GiB per float32 copy, and the loss keeps several (logits,
log-softmax, their gradients). Here the body runs once, the LM head and the loss run over
``chunk_tokens`` positions at a time into a detached copy of the final hidden states, and one
backward through the body follows: every layer sees the same output gradients as with the
whole batch at once, while at most ``chunk_tokens`` rows of logits are ever alive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm_surgeon.models.adapters import ArchitectureAdapter

LOGIT_CHUNK_TOKENS = 256
"""Positions whose logits (and their gradients) exist at once in a curvature pass: 256 x a 49k vocabulary is
~50 MB per float32 copy (a 128k one ~130 MB), small beside the activations, and the LM head's matmul is
still large enough to run at full speed."""
DEFAULT_CHUNK_TOKENS = LOGIT_CHUNK_TOKENS


def backward_next_token_nll(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    ids: torch.Tensor,
    mean: bool,
    sample_labels: torch.Generator | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> float:
    """Forward ``ids`` (batch, seq), back-propagate the NLL of each next token, return the loss.

    ``mean`` averages over predicted tokens (a training loss), else sums (per-token gradients,
    as the Fisher needs). With ``sample_labels`` the labels are drawn from the model's own
    predictive distribution (the true Fisher) instead of read from ``ids``. The logits are the
    adapter's (:meth:`~llm_surgeon.models.adapters.ArchitectureAdapter.logits`), so families that
    transform them after the head (soft-capping, a logit scale) get the gradients of their true loss.
    """
    body = adapter.body(model)
    hidden = body(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
    hidden = hidden.reshape(-1, hidden.shape[-1])
    leaf = hidden.detach().requires_grad_(True)
    labels = ids[:, 1:].reshape(-1)
    scale = 1.0 / labels.numel() if mean else 1.0
    total = 0.0
    for start in range(0, labels.numel(), chunk_tokens):
        logits = adapter.logits(model, leaf[start:start + chunk_tokens]).float()
        target = labels[start:start + chunk_tokens].to(logits.device)  # the head may sit on another device
        if sample_labels is not None:
            with torch.no_grad():
                target = torch.multinomial(logits.softmax(-1), 1, generator=sample_labels).squeeze(-1)
        loss = F.cross_entropy(logits, target, reduction="sum") * scale
        loss.backward()
        total += float(loss.detach())
        del logits, loss
    hidden.backward(leaf.grad)
    return total
