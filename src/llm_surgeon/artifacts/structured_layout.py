"""The per-block widths of a structurally pruned model: one typed value, written and read here alone.

transformers configs hold one width for every block, so what compaction left of each block (its FFN
neurons, query heads and key/value heads) travels beside the weights in ``pruned_architecture.json``.
The JSON keys and their order are those of the first folders ever written (``{"format": 1, "blocks":
[{"ffn_width", "heads", "kv_heads"}, ...]}``), so older folders load and new ones are byte-identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llm_surgeon.errors import ModelLoadError
from llm_surgeon.runtime.files import atomic_write_json

ARCHITECTURE_FILE = "pruned_architecture.json"
LAYOUT_FORMAT = 1
"""The version of the file's layout; a reader refuses a number it does not know instead of misreading it."""


@dataclass(frozen=True)
class BlockWidths:
    """What one decoder block kept: FFN neurons (per expert, for a mixture of experts) and head counts."""

    ffn_width: int
    heads: int
    kv_heads: int

    def to_dict(self) -> dict[str, int]:
        return {"ffn_width": self.ffn_width, "heads": self.heads, "kv_heads": self.kv_heads}

    @classmethod
    def from_dict(cls, data: dict) -> BlockWidths:
        return cls(int(data["ffn_width"]), int(data["heads"]), int(data["kv_heads"]))


@dataclass(frozen=True)
class StructuredLayout:
    """Every block's widths, in block order."""

    blocks: tuple[BlockWidths, ...]

    def __len__(self) -> int:
        return len(self.blocks)

    def to_dict(self) -> dict:
        return {"format": LAYOUT_FORMAT, "blocks": [block.to_dict() for block in self.blocks]}

    @classmethod
    def from_dict(cls, data: dict) -> StructuredLayout:
        if data.get("format", LAYOUT_FORMAT) != LAYOUT_FORMAT:
            raise ModelLoadError(f"{ARCHITECTURE_FILE} has layout format {data.get('format')!r}; this version of "
                                 f"llm-surgeon reads format {LAYOUT_FORMAT}")
        try:
            return cls(tuple(BlockWidths.from_dict(block) for block in data["blocks"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{ARCHITECTURE_FILE} is malformed: {exc!r}") from exc

    def write(self, folder: str | Path) -> None:
        """``pruned_architecture.json`` in ``folder``, written atomically."""
        atomic_write_json(Path(folder) / ARCHITECTURE_FILE, self.to_dict())

    @classmethod
    def read(cls, folder: str | Path) -> StructuredLayout:
        path = Path(folder) / ARCHITECTURE_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc

    @staticmethod
    def present(folder: str | Path) -> bool:
        """Whether ``folder`` records per-block widths (a structurally pruned model)."""
        return (Path(folder) / ARCHITECTURE_FILE).is_file()
