"""The paper's diagonal baselines: global threshold on diagonal OBD costs, no weight update.

* L-OBD: layer-wise reconstruction Hessian ``X Xᵀ`` -> cost ``½ W_ij² A_jj`` (forward passes only).
* K-OBD: diagonal of the Kronecker Fisher -> cost ``½ W_ij² G_ii A_jj``.

Both take factors collected diagonal-only, or full matrices (whose diagonals are read).
"""

from __future__ import annotations

import torch

from llm_surgeon.curvature.kinds import INPUTS, KFAC
from llm_surgeon.methods.base import PruningMethod


def _diagonal(factor: torch.Tensor) -> torch.Tensor:
    return factor if factor.ndim == 1 else factor.diagonal()


class LayerOBD(PruningMethod):
    name = "lobd"
    summary = "L-OBD: diagonal costs ½W²A_jj from the activations alone, global threshold, no update"
    curvature = INPUTS
    diagonal_only = True

    def element_costs(self, W: torch.Tensor, factors) -> torch.Tensor:
        return 0.5 * W.float().pow(2) * _diagonal(factors.A)[None, :]


class KroneckerOBD(PruningMethod):
    name = "kobd"
    summary = "K-OBD: diagonal Kronecker costs ½W²G_ii A_jj, global threshold, no update"
    curvature = KFAC
    diagonal_only = True

    def element_costs(self, W: torch.Tensor, factors) -> torch.Tensor:
        return 0.5 * W.float().pow(2) * _diagonal(factors.G)[:, None] * _diagonal(factors.A)[None, :]
