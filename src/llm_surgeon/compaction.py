"""Physically smaller models: compaction after structured pruning, and saving/loading per-block widths.

After the shot loop has zeroed whole rows and columns, :func:`compact` replaces every touched
Linear by a smaller one and makes the attention module agree with its new head count.
transformers configs hold one width for all blocks, so the widths are saved beside the
weights (``pruned_architecture.json``) and :func:`load_pruned` rebuilds the model from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from llm_surgeon.errors import ModelLoadError
from llm_surgeon.io import atomic_write_json
from llm_surgeon.models.adapters import ArchitectureAdapter, BlockLayout, get_adapter
from llm_surgeon.sparse_files import decompress_state, is_compressed_folder
from llm_surgeon.structures import BlockStructures, block_structures, state_from_masks

ARCHITECTURE_FILE = "pruned_architecture.json"


def _replace(parent: nn.Module, rel: str, new: nn.Module) -> None:
    *path, leaf = rel.split(".")
    owner = parent.get_submodule(".".join(path)) if path else parent
    setattr(owner, leaf, new)


def _sliced_linear(lin: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    W = lin.weight.detach()
    W = W[rows] if rows is not None else W
    W = W[:, cols] if cols is not None else W
    new = nn.Linear(W.shape[1], W.shape[0], bias=lin.bias is not None, device=W.device, dtype=W.dtype)
    with torch.no_grad():
        new.weight.copy_(W)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach()[rows] if rows is not None else lin.bias.detach())
    return new


def _kept(size: int, removed: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[removed] = False
    return keep.nonzero().squeeze(1)


def compact(model: nn.Module, masks: dict[str, torch.Tensor], adapter: ArchitectureAdapter | None = None
            ) -> list[dict]:
    """Replace pruned Linear layers by smaller ones; return the per-block widths for saving."""
    adapter = adapter or get_adapter(model)
    units = block_structures(model, adapter)
    neurons, groups = state_from_masks(units, adapter.module_name, masks)
    shapes = []
    for b, (block, u) in enumerate(zip(adapter.blocks(model), units, strict=True)):
        for rel, (kind, idx) in u.removed_indices(neurons[b], groups[b]).items():
            lin = u.linears[rel]
            if kind == "rows":
                _replace(block, rel, _sliced_linear(lin, _kept(lin.out_features, idx), None))
            else:
                _replace(block, rel, _sliced_linear(lin, None, _kept(lin.in_features, idx)))
        kv_heads = int((~groups[b]).sum())
        heads = kv_heads * u.layout.group_size
        adapter.set_head_counts(block.get_submodule(u.spec.attention), heads, kv_heads)
        shapes.append({"ffn_width": int((~neurons[b]).sum()), "heads": heads, "kv_heads": kv_heads})
    return shapes


def _compact_shape(u: BlockStructures, rel: str, lin: nn.Linear, after: BlockLayout) -> tuple[int, int]:
    """(out, in) of module ``rel`` once the block has the widths of ``after``."""
    out, inp = lin.out_features, lin.in_features
    for kind, by_role in (("rows", u.spec.rows()), ("cols", u.spec.columns())):
        for role, members in by_role.items():
            lost = sum(u.role_width(role) - u.role_width(role, after) for m in members if m.module == rel)
            if kind == "rows":
                out -= lost
            else:
                inp -= lost
    return out, inp


def apply_shapes(model: nn.Module, shapes: list[dict], adapter: ArchitectureAdapter | None = None) -> None:
    """Resize a freshly built full-size model to recorded per-block widths (weights to be loaded after)."""
    adapter = adapter or get_adapter(model)
    units = block_structures(model, adapter)
    if len(shapes) != len(units):
        raise ModelLoadError(f"{ARCHITECTURE_FILE} lists {len(shapes)} blocks, the model has {len(units)}")
    for block, u, shape in zip(adapter.blocks(model), units, shapes, strict=True):
        after = BlockLayout(shape["heads"], shape["kv_heads"], u.layout.head_dim, shape["ffn_width"])
        for rel, lin in u.linears.items():
            rows, cols = _compact_shape(u, rel, lin, after)
            _replace(block, rel, nn.Linear(cols, rows, bias=lin.bias is not None, dtype=lin.weight.dtype))
        adapter.set_head_counts(block.get_submodule(u.spec.attention), shape["heads"], shape["kv_heads"])


def save_architecture(folder: Path, shapes: list[dict]) -> None:
    atomic_write_json(Path(folder) / ARCHITECTURE_FILE, {"format": 1, "blocks": shapes})


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no safetensors weights in {folder}")
    state = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(f"cannot read {file}: {exc}") from exc
    return state


def load_pruned(folder: str | Path, dtype: torch.dtype = torch.float32):
    """Load a pruned folder as a standard ``PreTrainedModel``: per-block widths of a structured prune
    (``pruned_architecture.json``) and weights stored as bitmask + values (``--save-format compressed``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    arch_file = folder / ARCHITECTURE_FILE
    compressed = is_compressed_folder(folder)
    if not arch_file.is_file() and not compressed:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    config = AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dense once read
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if arch_file.is_file():
        apply_shapes(model, json.loads(arch_file.read_text())["blocks"])
    state = _read_weights(folder)
    missing, unexpected = model.load_state_dict(decompress_state(state) if compressed else state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ModelLoadError(f"weights in {folder} do not match its config: "
                             f"missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}")
    model.tie_weights()
    model.eval()
    return model
