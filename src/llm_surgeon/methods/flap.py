"""FLAP structured baseline: fluctuation scores, standardised per layer, one global ranking, bias compensation.

FLAP needs forward passes only: per input channel of every output projection (``o_proj``, ``down_proj``) its
second moment (the diagonal of ``A``) and its mean. A structure's score is the summed fluctuation score
(:mod:`llm_surgeon.math.flap`) of its columns there; the rows that produce it go with it for free. Scores
are standardised within each block and kind (heads apart from FFN neurons) and ranked across the model
without dividing by size, as FLAP's adaptive search does; the parameter budget still sets the count.
The removed columns' mean output becomes a bias of the output projection, so the pruned model needs a
config that gives those layers a bias (Llama's ``attention_bias`` / ``mlp_bias``): :meth:`prepare_model`
gives them zero biases before the selection (so the parameter budget counts them), or says, before any
pass, that the family cannot hold them.
"""

from __future__ import annotations

import torch

from llm_surgeon.curvature.kinds import INPUTS
from llm_surgeon.math import flap
from llm_surgeon.methods.base import STRUCTURED, PruningMethod
from llm_surgeon.models.biases import prepare_output_biases


class FLAPPruning(PruningMethod):
    name = "flap"
    summary = ("FLAP structured: input fluctuation x column energy at the output projections, standardised per "
               "layer, one global ranking, removed mean output kept as a bias (one shot, forward passes)")
    curvature = INPUTS
    diagonal_only = True
    input_means = True
    multi_shot = False
    granularities = frozenset({STRUCTURED})
    structure_ranking = "standardized"

    def prepare_model(self, model, adapter) -> None:
        prepare_output_biases(model, adapter)

    def _scores(self, W: torch.Tensor, factors) -> torch.Tensor:
        return flap.column_scores(W, flap.fluctuation(factors.A, factors.mean))

    def element_costs(self, W: torch.Tensor, factors) -> torch.Tensor:
        """Per element ``Var(x_j) W_ij²`` (unused: structured only)."""
        return flap.fluctuation(factors.A, factors.mean)[None, :] * W.double().pow(2)

    def reads_row_factors(self) -> bool:
        return False  # rows go free with their columns

    def row_costs(self, W, bias, factors):
        return torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)

    def row_set_cost(self, W, rows, factors):
        return torch.zeros((), dtype=torch.float64, device=W.device)

    def column_costs(self, W, factors):
        return self._scores(W, factors)

    def column_set_cost(self, W, cols, factors):
        return self._scores(W, factors)[cols].sum()

    def column_bias_shift(self, W, cols, factors) -> torch.Tensor:
        return flap.bias_shift(W, cols, factors.mean)
