"""The model's weights as GGUF tensors: llama.cpp names, RoPE row order and exact zero padding.

Two layouts differ between transformers and llama.cpp:

* transformers rotates dimension pairs (i, i + d/2) of each head, llama.cpp's llama/deci graphs pairs
  (2i, 2i + 1); query and key rows are reordered per head, with each layer's own head counts.
* llama.cpp's deci graph cannot express a layer whose FFN is empty but whose attention is kept (it
  skips that layer's residual), and reads the head size from layer 0's head count. Such layers get
  all-zero FFN neurons or one all-zero head, which add exactly nothing to the residual stream.
* FFN widths are rounded up with all-zero neurons to a multiple (32 by default): llama.cpp's CPU matrix
  kernels fall back to slow paths for other widths (a SmolLM2 pruned to odd widths processed prompts
  at 0.80x the dense speed, the same widths rounded to 16/32/64 at 1.15-1.22x), and quantised types
  store rows in blocks of 32. The outputs are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from llm_surgeon.gguf.layout import LayerWidths, ModelLayout, decoder_layers


def file_widths(layout: ModelLayout, ffn_multiple: int = 1) -> tuple[LayerWidths, ...]:
    """The per-layer widths as written: FFNs rounded up to ``ffn_multiple`` (at least one neuron), an
    empty layer 0 given one zero head."""
    widths = []
    for i, w in enumerate(layout.layers):
        heads, kv_heads = (1, 1) if i == 0 and w.heads == 0 else (w.heads, w.kv_heads)
        ffn = -(-max(w.ffn, 1) // ffn_multiple) * ffn_multiple
        widths.append(LayerWidths(heads, kv_heads, ffn))
    return tuple(widths)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A float32 copy on the CPU (bfloat16 has no numpy type; quantisation starts from float32)."""
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy()


def rope_interleave(rows: np.ndarray, heads: int) -> np.ndarray:
    """Reorder each head's rows from transformers' half-split pairs to llama.cpp's adjacent pairs."""
    if heads == 0:
        return rows
    d = rows.shape[0] // heads
    return rows.reshape(heads, 2, d // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def zero_pad(array: np.ndarray, size: int, axis: int) -> np.ndarray:
    """``array`` grown with zeros along ``axis`` to ``size`` (unchanged when already that long)."""
    missing = size - array.shape[axis]
    if missing <= 0:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, missing)
    return np.pad(array, widths)


def _linear_tensors(name: str, lin: nn.Linear, rows: int, cols: int, heads: int | None) -> Iterator[tuple]:
    """Weight (and bias) of one projection, zero-padded to ``rows`` x ``cols``, RoPE-reordered if ``heads``."""
    weight = zero_pad(zero_pad(to_numpy(lin.weight), rows, 0), cols, 1)
    bias = None if lin.bias is None else zero_pad(to_numpy(lin.bias), rows, 0)
    if heads is not None:
        weight = rope_interleave(weight, heads)
        bias = None if bias is None else rope_interleave(bias, heads)
    yield f"{name}.weight", weight
    if bias is not None:
        yield f"{name}.bias", bias


def _attention_tensors(i: int, block: nn.Module, w: LayerWidths, head_dim: int, hidden: int,
                       permute: bool) -> Iterator[tuple]:
    attn, q_rows, kv_rows = block.self_attn, w.heads * head_dim, w.kv_heads * head_dim
    yield f"blk.{i}.attn_norm.weight", to_numpy(block.input_layernorm.weight)
    yield from _linear_tensors(f"blk.{i}.attn_q", attn.q_proj, q_rows, hidden, w.heads if permute else None)
    yield from _linear_tensors(f"blk.{i}.attn_k", attn.k_proj, kv_rows, hidden, w.kv_heads if permute else None)
    yield from _linear_tensors(f"blk.{i}.attn_v", attn.v_proj, kv_rows, hidden, None)
    yield from _linear_tensors(f"blk.{i}.attn_output", attn.o_proj, hidden, q_rows, None)


def _ffn_tensors(i: int, block: nn.Module, w: LayerWidths, hidden: int) -> Iterator[tuple]:
    mlp = block.mlp
    yield f"blk.{i}.ffn_norm.weight", to_numpy(block.post_attention_layernorm.weight)
    yield from _linear_tensors(f"blk.{i}.ffn_gate", mlp.gate_proj, w.ffn, hidden, None)
    yield from _linear_tensors(f"blk.{i}.ffn_up", mlp.up_proj, w.ffn, hidden, None)
    yield from _linear_tensors(f"blk.{i}.ffn_down", mlp.down_proj, hidden, w.ffn, None)


def gguf_tensors(model: nn.Module, layout: ModelLayout, widths: tuple[LayerWidths, ...],
                 permute: bool) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor of the file, in llama.cpp's names, as float32 arrays in transformers' [out, in] order,
    zero-padded to ``widths`` (see :func:`file_widths`).

    Layers without heads get no attention tensors at all: llama.cpp refuses files with tensors it did
    not ask for.
    """
    yield "token_embd.weight", to_numpy(model.get_input_embeddings().weight)
    for i, (block, w) in enumerate(zip(decoder_layers(model), widths, strict=True)):
        if w.heads:
            yield from _attention_tensors(i, block, w, layout.head_dim, layout.hidden, permute)
        yield from _ffn_tensors(i, block, w, layout.hidden)
    yield "output_norm.weight", to_numpy(model.model.norm.weight)
    if not layout.tied_embeddings:
        yield "output.weight", to_numpy(model.get_output_embeddings().weight)
