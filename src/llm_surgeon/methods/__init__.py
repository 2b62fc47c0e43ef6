"""Pruning methods: each says how much removing a weight costs and how to compensate.

The shot loop, the global threshold and the masks are shared (:mod:`llm_surgeon.pruner`);
a new method is one small class here and one entry in ``METHODS``.
"""

from llm_surgeon.methods.base import LayerwiseMethod, PruningMethod, get_method
from llm_surgeon.methods.layerwise import SparseGPT, Wanda
from llm_surgeon.methods.magnitude import MagnitudePruning
from llm_surgeon.methods.obd import KroneckerOBD, LayerOBD
from llm_surgeon.methods.surgeon import SurgeonPruning

METHODS = {
    "surgeon": SurgeonPruning,
    "magnitude": MagnitudePruning,
    "lobd": LayerOBD,
    "kobd": KroneckerOBD,
    "sparsegpt": SparseGPT,
    "wanda": Wanda,
}

__all__ = ["METHODS", "PruningMethod", "LayerwiseMethod", "get_method", "MagnitudePruning", "SurgeonPruning",
           "LayerOBD", "KroneckerOBD", "SparseGPT", "Wanda"]
