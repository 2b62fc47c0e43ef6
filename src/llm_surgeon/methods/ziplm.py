"""ZipLM / SlimGPT-style structured baseline: layer-wise OBS on each block's output projections.

A structure (an FFN neuron, a key/value head group) leaves the model through the input columns of the
layer after it (``down_proj``, ``o_proj``); the rows that produce it (``gate``/``up``, ``q``/``k``/``v``)
only feed that column and go with it for free. So its cost is the layer-wise OBS cost of those columns on
the layer's own reconstruction objective ``||ΔW X||²`` (``G = I``, ``A = X Xᵀ / n``):

    cost(C) = ½ tr(W_C ([A⁻¹]_CC)⁻¹ W_Cᵀ),    ΔW = −W_C ([A⁻¹]_CC)⁻¹ E_Cᵀ A⁻¹,

the correlated update of the remaining columns that ZipLM and SlimGPT apply (:mod:`llm_surgeon.math.structured`
with ``G = I``). Structures are chosen in the same harness as LLM Surgeon's (cheapest per parameter, one
threshold across blocks, multi-shot with ``A`` re-estimated on the pruned model); forward passes only.
"""

from __future__ import annotations

import torch

from llm_surgeon.curvature.kinds import INPUTS
from llm_surgeon.math import structured as rows_cols
from llm_surgeon.math.kfac import damped_with_inverse
from llm_surgeon.methods.base import STRUCTURED, PruningMethod
from llm_surgeon.methods.layerwise import InputHessianOptions


class ZipLMPruning(PruningMethod):
    name = "ziplm"
    options = InputHessianOptions
    summary = ("ZipLM/SlimGPT-style structured: layer-wise OBS cost of whole heads and FFN neurons at the output "
               "projections (X Xᵀ), correlated column update, global threshold")
    curvature = INPUTS
    granularities = frozenset({STRUCTURED})

    def __init__(self, config=None):
        self.damp = (config or InputHessianOptions()).sparsegpt_damp
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def _A_inv(self, factors) -> torch.Tensor:
        """The damped inverse of the layer's ``A``, kept for the next call on the same ``A`` (a block's head
        groups each ask for ``o_proj``'s)."""
        if self._last is None or self._last[0] is not factors.A:
            self._last = None
            self._last = (factors.A, damped_with_inverse(factors.A, self.damp)[1])
        return self._last[1]

    def element_costs(self, W: torch.Tensor, factors) -> torch.Tensor:
        """Layer-wise OBS saliency ``½ w² / [A⁻¹]_jj`` (unused: structured only)."""
        return 0.5 * W.double().pow(2) / self._A_inv(factors).diagonal()[None, :]

    def reads_row_factors(self) -> bool:
        return False  # rows go free with their columns

    def row_costs(self, W, bias, factors):
        return torch.zeros(W.shape[0], dtype=W.dtype, device=W.device)

    def row_set_cost(self, W, rows, factors):
        return torch.zeros((), dtype=W.dtype, device=W.device)

    def column_costs(self, W, factors):
        return rows_cols.column_costs(W, torch.eye(W.shape[0], dtype=W.dtype, device=W.device), self._A_inv(factors))

    def column_set_cost(self, W, cols, factors):
        W_C = W[:, cols].to(torch.float64)
        solved = torch.linalg.solve(self._A_inv(factors)[cols][:, cols].to(torch.float64), W_C.T)
        return 0.5 * (solved.T * W_C).sum()

    def remove_columns(self, W, cols, factors):
        return rows_cols.remove_columns(W, cols, self._A_inv(factors))
