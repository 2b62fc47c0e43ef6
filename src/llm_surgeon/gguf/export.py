"""Write an in-memory transformers model (dense or structurally pruned) as a GGUF file for llama.cpp.

Everything that can refuse (model features, output type, tokenizer) runs before the file is opened,
and the file is written beside its destination under a temporary name, then renamed: a failed or
interrupted export never leaves a truncated ``.gguf`` where a good one is expected. Tensors are
converted and written one at a time, so the export needs little memory beyond the model itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from torch import nn

from llm_surgeon.gguf.checks import check_exportable
from llm_surgeon.gguf.encode import OUT_TYPES, check_out_type, encode, file_type, storage_type
from llm_surgeon.gguf.errors import GGUFExportError
from llm_surgeon.gguf.layout import LayerWidths, ModelLayout
from llm_surgeon.gguf.metadata import add_model_metadata, architecture, rope_is_interleaved
from llm_surgeon.gguf.rope import RopeSettings, rope_settings
from llm_surgeon.gguf.tensors import file_widths, gguf_tensors
from llm_surgeon.gguf.tokenizer import TokenizerMetadata, tokenizer_metadata


@dataclass
class ExportReport:
    """What was written, for the CLI to print and for run records."""

    path: str
    architecture: str
    out_type: str
    file_bytes: int
    ffn_multiple: int
    layers: list[dict]
    padded_layers: list[str] = field(default_factory=list)
    f16_fallback_tensors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _padding_notes(layout: ModelLayout, widths: tuple[LayerWidths, ...]) -> list[str]:
    """Layers given all-zero neurons or a zero head so llama.cpp computes them exactly (see tensors.py)."""
    notes = []
    for i, (before, after) in enumerate(zip(layout.layers, widths, strict=True)):
        if before.ffn == 0:
            notes.append(f"layer {i}: zero FFN neurons only (llama.cpp skips a layer with an empty FFN)")
        if before.heads != after.heads:
            notes.append(f"layer {i}: one zero attention head (llama.cpp reads the head size from layer 0)")
    return notes


def _nbytes(shape: tuple[int, ...], kind: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[kind]
    return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * size


def _plan_tensors(writer: GGUFWriter, tensors: Iterator[tuple[str, np.ndarray]], out_type: str) -> list[str]:
    """Declare every tensor (name, shape, type) before the header is written; return the f16 fallbacks."""
    fallbacks = []
    wanted = OUT_TYPES[out_type][0]
    for name, array in tensors:
        kind = storage_type(array, out_type)
        writer.add_tensor_info(name, array.shape, np.dtype(np.float32), _nbytes(array.shape, kind), raw_dtype=kind)
        if array.ndim >= 2 and kind != wanted:
            fallbacks.append(name)
    return fallbacks


def _all_tensors(model: nn.Module, layout: ModelLayout, widths: tuple[LayerWidths, ...], permute: bool,
                 rope: RopeSettings) -> Iterator[tuple[str, np.ndarray]]:
    """The model's tensors, then Llama 3's RoPE frequency divisors when the model has them."""
    yield from gguf_tensors(model, layout, widths, permute)
    if rope.freq_factors is not None:
        yield "rope_freqs.weight", rope.freq_factors


def _write(path: Path, model: nn.Module, layout: ModelLayout, widths: tuple[LayerWidths, ...],
           tokenizer: TokenizerMetadata, out_type: str, name: str, extra: dict[str, str]) -> tuple[str, list[str]]:
    """Write the whole file at ``path``; return its architecture and the tensors that fell back to f16."""
    rope = rope_settings(model.config, layout.head_dim)
    arch = architecture(layout, widths)
    permute = rope_is_interleaved(arch)
    writer = GGUFWriter(None, arch)
    writer.add_name(name)
    writer.add_file_type(int(file_type(out_type)))
    if out_type not in ("f32", "f16"):
        writer.add_quantization_version(2)
    add_model_metadata(writer, model.config, layout, widths, rope)
    for key, entry in tokenizer.items():
        writer.add_key_value(key, entry.value, entry.vtype, sub_type=entry.sub_type)
    for key, value in extra.items():
        writer.add_string(key, value)
    fallbacks = _plan_tensors(writer, _all_tensors(model, layout, widths, permute, rope), out_type)
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, array in _all_tensors(model, layout, widths, permute, rope):
            writer.write_tensor_data(encode(array, out_type).data)
    finally:
        writer.close()
    return arch, fallbacks


def export_gguf(model: nn.Module, tokenizer_source, path: str | Path, out_type: str = "f16",
                name: str | None = None, ffn_multiple: int = 32, extra: dict[str, str] | None = None
                ) -> ExportReport:
    """Write ``model`` to ``path`` as a GGUF file llama.cpp runs like transformers does.

    ``tokenizer_source`` is a ``.gguf`` file whose tokenizer is copied (the model came from it), a
    transformers tokenizer, or a folder/hub name to load one from. ``out_type`` is one of
    :data:`llm_surgeon.gguf.encode.OUT_TYPES` (vectors stay f32; rows that do not fill whole quantisation
    blocks fall back to f16). Per-layer widths go out as llama.cpp's ``deci`` architecture; FFN widths
    are rounded up to ``ffn_multiple`` with all-zero neurons (same outputs, llama.cpp's fast kernels and
    whole quantisation blocks; 1 writes the model's own widths). ``extra`` adds string keys of the caller's
    (llm-surgeon records the source model, whose tokenizer evaluation reads).
    """
    check_out_type(out_type)
    if ffn_multiple < 1:
        raise GGUFExportError(f"ffn_multiple must be at least 1, got {ffn_multiple}")
    layout = check_exportable(model)
    widths = file_widths(layout, ffn_multiple)
    tokenizer = tokenizer_metadata(tokenizer_source, layout.vocab)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    name = name or Path(str(getattr(model.config, "_name_or_path", "") or "model")).name
    try:
        arch, fallbacks = _write(temporary, model, layout, widths, tokenizer, out_type, name, extra or {})
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return ExportReport(str(path), arch, out_type, path.stat().st_size, ffn_multiple, [asdict(w) for w in widths],
                        _padding_notes(layout, widths), fallbacks)
