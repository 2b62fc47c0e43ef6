"""The paper's diagonal baselines: global threshold on diagonal OBD costs, no weight update.

* L-OBD: layer-wise reconstruction Hessian ``X Xᵀ`` -> cost ``½ W_ij² A_jj`` (forward passes only).
* K-OBD: diagonal of the Kronecker Fisher -> cost ``½ W_ij² G_ii A_jj``.
"""

from __future__ import annotations

import torch

from llm_surgeon.methods.base import PruningMethod


class LayerOBD(PruningMethod):
    name = "lobd"
    curvature = "inputs"

    def element_costs(self, W: torch.Tensor, factors) -> torch.Tensor:
        return 0.5 * W.float().pow(2) * factors.A.diagonal()[None, :]


class KroneckerOBD(PruningMethod):
    name = "kobd"
    curvature = "kfac"

    def element_costs(self, W: torch.Tensor, factors) -> torch.Tensor:
        return 0.5 * W.float().pow(2) * factors.G.diagonal()[:, None] * factors.A.diagonal()[None, :]
