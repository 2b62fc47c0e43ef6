"""The README's table of supported families and granularities, generated from the adapter registry.

    python -m llm_surgeon.models.table README.md   # rewrites the section between the family markers

A test compares the README with :func:`family_table`, so the table cannot drift from the registry.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llm_surgeon.models import adapters

START, END = "<!-- families:start -->", "<!-- families:end -->"


def layer_names(linear_names: list[str]) -> str:
    """The layers of a block by their last name, or by their whole path inside the block where two share a
    last name (DeepSeek-V3's dense MLP and shared experts both have a ``gate_proj``)."""
    short = [name.rsplit(".", 1)[-1] for name in linear_names]
    return ", ".join(f"`{name if short.count(last) > 1 else last}`" for name, last in zip(linear_names, short,
                                                                                         strict=True))


def family_table() -> str:
    """One row per registered model type, then the generic adapter's row."""
    rows = ["| `model_type` | adapter | logits | prunable layers per block | unstructured | N:M | structured |",
            "|---|---|---|---|---|---|---|"]
    for model_type in adapters.supported_model_types():
        adapter = adapters.adapter_for_model_type(model_type)
        layers = layer_names(list(adapter.linear_names))
        if adapter.experts_path:
            layers += f", each expert's `gate_up` and `down` (`{adapter.experts_path}`; router never)"
        structured = "yes" if adapter.structure is not None else "no (no structure description)"
        if adapter.structure is not None and adapter.structure.experts:
            structured = "yes (heads, and each expert's own neurons at one width per block)"
        logits = adapter.logits_description
        rows.append(f"| `{model_type}` | {adapter.family} | {logits} | {layers} | yes | yes | {structured} |")
    rows.append("| any other decoder-only model with `nn.Linear` layers in its blocks | generic (read from the "
                "module tree, with a notice) | LM head (checked against the model's forward) | every `nn.Linear` "
                "of a block | yes | yes | no |")
    return "\n".join(rows)


def replace_section(page: str, body: str) -> str:
    """``page`` with the text between the family markers replaced by ``body``."""
    start, end = page.index(START) + len(START), page.index(END)
    return page[:start] + "\n" + body + "\n" + page[end:]


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "README.md")
    path.write_text(replace_section(path.read_text(), family_table()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
