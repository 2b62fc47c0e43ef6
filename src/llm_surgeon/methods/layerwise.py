"""SparseGPT and Wanda: one-shot, layer by layer, on the inputs of the already-pruned blocks."""

from __future__ import annotations

from dataclasses import dataclass

from llm_surgeon.errors import ConfigError
from llm_surgeon.math.costs import nm_group_element_mask
from llm_surgeon.math.sparsegpt import sparsegpt_flops, sparsegpt_prune
from llm_surgeon.math.wanda import per_row_mask, wanda_scores
from llm_surgeon.methods.base import LayerwiseMethod
from llm_surgeon.methods.options import MethodOptions, option


@dataclass
class InputHessianOptions(MethodOptions):
    """The dampening of the input Hessian ``X Xᵀ`` that SparseGPT and ZipLM invert."""

    sparsegpt_damp: float = option(0.01, "SparseGPT (and ZipLM) dampening, fraction of the mean diagonal of X Xᵀ")

    @classmethod
    def check(cls, config) -> None:
        if not config.sparsegpt_damp > 0:
            raise ConfigError(f"--sparsegpt-damp must be positive, got {config.sparsegpt_damp}")


class SparseGPT(LayerwiseMethod):
    name = "sparsegpt"
    options = InputHessianOptions
    summary = "SparseGPT: one-shot OBS column sweep on X Xᵀ, block by block"

    def __init__(self, config=None, block_size: int = 128):
        self.damp = (config or InputHessianOptions()).sparsegpt_damp
        self.block_size = block_size

    def prune_layer(self, W, H, sparsity, nm):
        pruned, _ = sparsegpt_prune(W, H, sparsity, nm, block_size=self.block_size, damp=self.damp)
        return pruned

    def layer_flops(self, rows, cols):
        return sparsegpt_flops(rows, cols)


class Wanda(LayerwiseMethod):
    name = "wanda"
    summary = "Wanda: one-shot |W|·‖x‖ compared within each output row, block by block"

    def prune_layer(self, W, H, sparsity, nm):
        scores = wanda_scores(W, H.diagonal())
        mask = nm_group_element_mask(scores, *nm) if nm else per_row_mask(scores, sparsity)
        return W.masked_fill(mask, 0.0)

    def layer_flops(self, rows, cols):
        return float(3 * rows * cols)  # |W|, its product with the input norms, the masking; no solve
