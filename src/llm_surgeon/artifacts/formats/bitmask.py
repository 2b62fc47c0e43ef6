"""The sparse-bitmask layout: a pruned matrix as a bitmask plus its nonzero values, and the config that says so.

The layout is compressed-tensors' ``sparse-bitmask`` format: for a weight ``NAME`` (out x in) the file holds
``NAME.shape`` (int64 [2]), ``NAME.compressed`` (the nonzero values, row by row), ``NAME.bitmask`` (uint8,
one bit per weight, rows packed little-endian, ``ceil(in / 8)`` bytes each) and ``NAME.row_offsets``
(int64, where each row's values start), and ``config.json`` says so under ``quantization_config``.
A matrix at 50% sparsity then takes half its values plus one bit per weight (float32: 2.125 bytes per
weight instead of 4). This module is the codec alone; the ``compressed`` save format
(:mod:`llm_surgeon.artifacts.formats.compressed`) writes and reads folders with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

FORMAT = "sparse-bitmask"
PARTS = ("shape", "compressed", "bitmask", "row_offsets")


def compress(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A 2-D weight as its four sparse-bitmask parts (keys without the weight's name)."""
    dense = weight.detach().cpu()
    keep = dense != 0
    counts = keep.sum(dim=1)
    packed = np.packbits(keep.numpy(), axis=-1, bitorder="little")
    return {"shape": torch.tensor(list(dense.shape), dtype=torch.int64), "compressed": dense[keep].contiguous(),
            "bitmask": torch.from_numpy(packed), "row_offsets": (torch.cumsum(counts, 0) - counts).to(torch.int64)}


def decompress(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense weight back from its parts (exact: the kept values are stored as they were)."""
    rows, cols = (int(v) for v in parts["shape"].tolist())
    keep = np.unpackbits(parts["bitmask"].numpy(), axis=-1, count=cols, bitorder="little").astype(bool)
    dense = torch.zeros(rows, cols, dtype=parts["compressed"].dtype)
    dense[torch.from_numpy(keep)] = parts["compressed"]
    return dense


def compress_state(state: dict[str, torch.Tensor], names: set[str]) -> dict[str, torch.Tensor]:
    """``state`` with the weights in ``names`` replaced by their parts (``NAME.compressed``, ...)."""
    out = {}
    for key, value in state.items():
        if key in names:
            out.update({f"{key}.{part}": tensor for part, tensor in compress(value).items()})
        else:
            out[key] = value
    return out


def decompress_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense state dict of a file written by :func:`compress_state` (other keys pass through)."""
    out, grouped = {}, {}
    for key, value in state.items():
        base, _, part = key.rpartition(".")
        if part in PARTS and f"{base}.compressed" in state:
            grouped.setdefault(base, {})[part] = value
        else:
            out[key] = value
    out.update({base: decompress(parts) for base, parts in grouped.items()})
    return out


def is_compressed_folder(folder: Path) -> bool:
    """Whether ``folder``'s ``config.json`` says its weights are in the sparse-bitmask layout."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (config.get("quantization_config") or {}).get("format") == FORMAT


def quantization_config(sparsity: float, structure: str) -> dict:
    """What ``config.json`` records about the compressed weights (compressed-tensors' own keys)."""
    return {"quant_method": "compressed-tensors", "format": FORMAT,
            "sparsity_config": {"format": FORMAT, "global_sparsity": sparsity, "sparsity_structure": structure,
                                "targets": ["Linear"], "ignore": ["lm_head"]}}
