"""Semi-structured (2:4) sparse tensors for real speed-ups on GPUs that support them.

PyTorch's ``to_sparse_semi_structured`` needs a CUDA device and fp16/bf16 weights; the
converted model is for inference in memory (``save_pretrained`` stores dense zeros).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class SemiStructuredExport:
    applied: bool
    layers_converted: int
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def semi_structured_unavailable_reason(linears: dict[str, nn.Linear], nm: tuple[int, int] | None) -> str | None:
    """Why the semi-structured format cannot be used here, or ``None`` when it can."""
    if nm != (2, 4):
        return "PyTorch's semi-structured sparse format supports the 2:4 pattern only"
    weight = next(iter(linears.values())).weight
    if weight.device.type != "cuda" or not torch.cuda.is_available():
        return "the semi-structured sparse format needs a CUDA GPU; the weights stay dense with exact zeros"
    if weight.dtype not in (torch.float16, torch.bfloat16):
        return "the semi-structured sparse format needs float16 or bfloat16 weights (use --dtype)"
    return None


def to_semi_structured(linears: dict[str, nn.Linear], nm: tuple[int, int] | None) -> SemiStructuredExport:
    """Convert every 2:4 pruned Linear weight in place, or say plainly why not."""
    reason = semi_structured_unavailable_reason(linears, nm)
    if reason is not None:
        return SemiStructuredExport(False, 0, reason)
    from torch.sparse import to_sparse_semi_structured

    converted = 0
    for lin in linears.values():
        lin.weight = nn.Parameter(to_sparse_semi_structured(lin.weight.detach()), requires_grad=False)
        converted += 1
    return SemiStructuredExport(True, converted, "converted with torch.sparse.to_sparse_semi_structured")


def densify(linears: dict[str, nn.Linear]) -> None:
    """Back to ordinary dense weights (with their zeros), e.g. before ``save_pretrained``."""
    for lin in linears.values():
        if lin.weight.layout != torch.strided or type(lin.weight.data) is not torch.Tensor:
            lin.weight = nn.Parameter(lin.weight.detach().to_dense(), requires_grad=False)
