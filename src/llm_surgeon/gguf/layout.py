"""Per-layer widths of a (possibly structurally pruned) transformers decoder, read from its Linear shapes.

Structured pruning leaves the config describing the original model: only the nn.Linear shapes tell
how many query heads, KV heads and FFN neurons each layer kept. llama.cpp needs those counts per
layer, so they are derived here from the weights themselves and checked for consistency.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from llm_surgeon.gguf.errors import GGUFExportError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
"""Families whose decoder block is exactly what llama.cpp's ``llama``/``deci`` graphs compute
(RMSNorm, RoPE, GQA attention with optional biases, SiLU-gated FFN)."""


@dataclass(frozen=True)
class LayerWidths:
    """What one decoder layer kept: query heads, KV heads and FFN neurons (0 means removed)."""

    heads: int
    kv_heads: int
    ffn: int


@dataclass(frozen=True)
class ModelLayout:
    """The shape facts an exporter needs, taken from the model rather than from its config."""

    model_type: str
    hidden: int
    head_dim: int
    vocab: int
    layers: tuple[LayerWidths, ...]
    tied_embeddings: bool

    @property
    def uniform(self) -> bool:
        """True when every layer has the same widths (a plain ``llama``-style file can describe it)."""
        return len(set(self.layers)) <= 1


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a ``*ForCausalLM`` model (``model.model.layers``)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise GGUFExportError("GGUF export needs a *ForCausalLM model with model.model.layers")
    return layers


def head_dim_of(config) -> int:
    """The attention head size from the config (``head_dim`` when set, else hidden / heads)."""
    head_dim = getattr(config, "head_dim", None)
    return int(head_dim) if head_dim else config.hidden_size // config.num_attention_heads


def _linear(block: nn.Module, path: str, index: int) -> nn.Linear:
    module = block.get_submodule(path)
    if not isinstance(module, nn.Linear):
        raise GGUFExportError(f"layer {index}: {path} is a {type(module).__name__}, GGUF export needs nn.Linear")
    return module


def _layer_widths(block: nn.Module, index: int, hidden: int, head_dim: int) -> LayerWidths:
    """One layer's widths, refusing projections whose shapes disagree with each other."""
    q, k, v, o = (_linear(block, f"self_attn.{n}_proj", index) for n in "qkvo")
    gate, up, down = (_linear(block, f"mlp.{n}_proj", index) for n in ("gate", "up", "down"))
    problems = []
    if q.out_features % head_dim or k.out_features % head_dim:
        problems.append(f"q/k rows ({q.out_features}, {k.out_features}) are not whole heads of {head_dim}")
    if v.out_features != k.out_features or o.in_features != q.out_features:
        problems.append("v_proj rows differ from k_proj rows or o_proj columns from q_proj rows")
    if up.out_features != gate.out_features or down.in_features != gate.out_features:
        problems.append("gate/up rows and down_proj columns differ")
    if any(lin.in_features != hidden for lin in (q, k, v, gate, up)) or o.out_features != hidden:
        problems.append(f"a projection does not read or write the hidden size {hidden}")
    if problems:
        raise GGUFExportError(f"layer {index}: " + "; ".join(problems))
    return LayerWidths(q.out_features // head_dim, k.out_features // head_dim, gate.out_features)


def read_layout(model: nn.Module) -> ModelLayout:
    """The per-layer widths and global shape facts of ``model``."""
    config = model.config
    layers = decoder_layers(model)
    head_dim = head_dim_of(config)
    embed = model.get_input_embeddings()
    hidden = embed.weight.shape[1]
    widths = tuple(_layer_widths(block, i, hidden, head_dim) for i, block in enumerate(layers))
    head = model.get_output_embeddings()
    return ModelLayout(
        model_type=config.model_type,
        hidden=hidden,
        head_dim=head_dim,
        vocab=embed.weight.shape[0],
        layers=widths,
        tied_embeddings=head is None or head.weight.data_ptr() == embed.weight.data_ptr(),
    )
