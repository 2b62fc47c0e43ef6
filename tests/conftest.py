"""Tiny random models built from a config (no download) and the shared data folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    candidates = [os.environ.get("LLM_SURGEON_DATA"), REPO.parent / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "wikitext-2-raw" / "wiki.test.raw").is_file():
            return Path(c)
    return None


def tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
               tie_word_embeddings=True)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def tiny_opt(seed: int = 0, **overrides):
    from transformers import OPTConfig, OPTForCausalLM

    cfg = dict(vocab_size=128, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=128, word_embed_proj_dim=32, do_layer_norm_before=True)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return OPTForCausalLM(OPTConfig(**cfg)).eval()


@pytest.fixture(params=["llama", "opt"])
def tiny_model(request):
    return tiny_llama() if request.param == "llama" else tiny_opt()


@pytest.fixture
def calibration():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (8, 16), generator=generator)


class CharTokenizer:
    """A stand-in tokenizer (one id per byte, mod 128) for data-pipeline tests."""

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        ids = torch.tensor([[b % 128 for b in text.encode("utf-8")]])

        class Out:
            input_ids = ids

        return Out()


def tiny_tokenizer():
    """A character-level fast tokenizer over printable ASCII (fits the tiny models' 128 ids)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "\n": 1}
    for code in range(32, 127):
        vocab[chr(code)] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def write_tiny_checkpoint(folder: Path, family: str = "llama", seed: int = 0) -> Path:
    """A loadable model folder (config, safetensors, tokenizer) for CLI tests."""
    model = tiny_llama(seed) if family == "llama" else tiny_opt(seed)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def write_fake_wikitext(folder: Path, splits=("valid", "test"), lines: int = 400) -> Path:
    """A synthetic WikiText-like data folder (the real files are never copied into tests)."""
    generator = torch.Generator().manual_seed(0)
    words = ["the", "model", "weight", "prune", "layer", "surgeon", "curvature", "of", "and", "a"]
    raw = folder / "wikitext-2-raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split in splits:
        rows = []
        for i in range(lines):
            if i % 7 == 0:
                rows.append(" \n")
                continue
            idx = torch.randint(0, len(words), (12,), generator=generator).tolist()
            rows.append(" " + " ".join(words[j] for j in idx) + " .\n")
        (raw / f"wiki.{split}.raw").write_text("".join(rows))
    return folder


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m llm_surgeon.cli ARGS`` in a fresh process; raise with its stderr when ``check`` fails."""
    proc = subprocess.run([sys.executable, "-m", "llm_surgeon.cli", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def collect_factors(model, linears, windows, batch_size: int = 4, fisher: str = "empirical", seed: int = 0,
                    with_gradients: bool = True, diagonal_only: bool = False, packed: bool = False):
    """One single-process curvature pass, as the shot loop runs it; the factors as matrices unless ``packed``
    (as the collector keeps them)."""
    from llm_surgeon.curvature.collectors import CurvatureRequest, LocalCollector
    from llm_surgeon.models.adapters import get_adapter

    collector = LocalCollector(batch_size=batch_size, fisher=fisher, progress=False)
    request = CurvatureRequest(with_gradients=with_gradients, diagonal_only=diagonal_only)
    factors = collector.collect(model, get_adapter(model), linears, windows, request, seed=seed)
    return factors if packed else {name: f.unpacked() for name, f in factors.items()}


def damped_factors(G: torch.Tensor, A: torch.Tensor, damp_g: float, damp_a: float):
    """Damped factors and inverses of one layer, through the same function the shot loop uses."""
    from llm_surgeon.math.kfac import DampedFactors, damped_with_inverse

    Gd, G_inv = damped_with_inverse(G, damp_g)
    Ad, A_inv = damped_with_inverse(A, damp_a)
    return DampedFactors(G=Gd, A=Ad, G_inv=G_inv, A_inv=A_inv)


def spd(n: int, seed: int) -> torch.Tensor:
    """A random symmetric positive-definite float64 matrix."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(3 * n, n, generator=g, dtype=torch.float64)
    return X.T @ X / (3 * n)


def dense_obs_minimiser(W, remove, G, A):
    """argmin ½ ΔwᵀFΔw s.t. (W+ΔW)_R = 0, with F = G ⊗ A (row-major vec), by a dense KKT solve."""
    F = torch.kron(G, A)
    w = W.reshape(-1)
    R = remove.reshape(-1).nonzero().squeeze(1)
    E = torch.zeros(w.numel(), R.numel(), dtype=W.dtype)
    E[R, torch.arange(R.numel())] = 1.0
    Finv = torch.linalg.inv(F)
    delta = -Finv @ E @ torch.linalg.solve(E.T @ Finv @ E, w[R])
    return (w + delta).reshape(W.shape), 0.5 * delta @ F @ delta


@pytest.fixture(autouse=True)
def _private_dense_cache(tmp_path_factory, monkeypatch):
    """Dense perplexities that tests measure are remembered in a throw-away folder, not the user's cache."""
    monkeypatch.setenv("LLM_SURGEON_CACHE", str(tmp_path_factory.mktemp("dense-cache")))


def true_loss_G(model, linears, ids) -> dict[str, torch.Tensor]:
    """G = Σ g gᵀ / tokens from the gradients of the model's own forward and loss."""
    G: dict[str, torch.Tensor] = {}
    handles = []
    for name, lin in linears.items():
        def hook(module, inputs, output, name=name):
            def grad_hook(g):
                flat = g.reshape(-1, g.shape[-1]).double()
                G[name] = G.get(name, 0) + flat.T @ flat
            output.register_hook(grad_hook)
        handles.append(lin.register_forward_hook(hook))
    try:
        logits = model(input_ids=ids).logits[:, :-1]
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                          reduction="sum").backward()
    finally:
        for handle in handles:
            handle.remove()
    return {name: g / ids.numel() for name, g in G.items()}
