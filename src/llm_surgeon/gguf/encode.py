"""Tensor storage types: the output types gguf-py can produce in Python, and their fallbacks.

Block-quantised types store a row in blocks of 32 values; pruned FFN widths are often not a multiple
of that, so such tensors fall back to f16 (llama.cpp's own quantiser does the same kind of fallback).
One-dimensional tensors (norms, biases) always stay f32, as llama.cpp expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf.quants import quantize

from llm_surgeon.gguf.errors import GGUFExportError

OUT_TYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "q5_1": (GGMLQuantizationType.Q5_1, LlamaFileType.MOSTLY_Q5_1),
    "q5_0": (GGMLQuantizationType.Q5_0, LlamaFileType.MOSTLY_Q5_0),
    "q4_1": (GGMLQuantizationType.Q4_1, LlamaFileType.MOSTLY_Q4_1),
    "q4_0": (GGMLQuantizationType.Q4_0, LlamaFileType.MOSTLY_Q4_0),
}
"""The ``out_type`` names accepted by the exporter (the types gguf-py quantises in Python)."""


@dataclass(frozen=True)
class EncodedTensor:
    """A tensor ready for ``GGUFWriter.add_tensor``: its bytes or values and its GGML type."""

    data: np.ndarray
    ggml_type: GGMLQuantizationType

    @property
    def raw_dtype(self) -> GGMLQuantizationType | None:
        """What to pass as ``raw_dtype`` (None for plain float arrays, whose numpy type says it)."""
        plain = (GGMLQuantizationType.F32, GGMLQuantizationType.F16)
        return None if self.ggml_type in plain else self.ggml_type


def check_out_type(out_type: str) -> None:
    """Refuse an unknown output type with the list of known ones."""
    if out_type not in OUT_TYPES:
        raise GGUFExportError(f"unknown GGUF type {out_type!r}; choose one of {', '.join(OUT_TYPES)}")


def file_type(out_type: str) -> LlamaFileType:
    """The ``general.file_type`` value for ``out_type``."""
    return OUT_TYPES[out_type][1]


def storage_type(array: np.ndarray, out_type: str) -> GGMLQuantizationType:
    """The type one tensor is stored in: f32 for vectors, f16 when rows do not fill whole blocks."""
    wanted = OUT_TYPES[out_type][0]
    if array.ndim < 2:
        return GGMLQuantizationType.F32
    block = GGML_QUANT_SIZES[wanted][0]
    return wanted if array.shape[-1] % block == 0 else GGMLQuantizationType.F16


def encode(array: np.ndarray, out_type: str) -> EncodedTensor:
    """``array`` (float32) stored as ``out_type`` allows (see :func:`storage_type`)."""
    kind = storage_type(array, out_type)
    if kind == GGMLQuantizationType.F32:
        return EncodedTensor(np.ascontiguousarray(array, dtype=np.float32), kind)
    if kind == GGMLQuantizationType.F16:
        return EncodedTensor(np.ascontiguousarray(array, dtype=np.float16), kind)
    return EncodedTensor(quantize(np.ascontiguousarray(array, dtype=np.float32), kind), kind)
