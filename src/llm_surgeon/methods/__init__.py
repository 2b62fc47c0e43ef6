"""Pruning methods: each says how much removing a weight costs and how to compensate.

The shot loop, the global threshold and the masks are shared (:mod:`llm_surgeon.engine.pruner`);
a new method is one small class and one :func:`register_method` line here.
"""

from llm_surgeon.methods.base import (
    NM,
    NM_COSTS,
    STRUCTURE_COSTS,
    STRUCTURED,
    UNSTRUCTURED,
    UPDATE_SOLVERS,
    UPDATE_STARTS,
    LayerwiseMethod,
    MethodBase,
    PruningMethod,
)
from llm_surgeon.methods.flap import FLAPPruning
from llm_surgeon.methods.layerwise import InputHessianOptions, SparseGPT, Wanda
from llm_surgeon.methods.magnitude import MagnitudeOptions, MagnitudePruning
from llm_surgeon.methods.obd import KroneckerOBD, LayerOBD
from llm_surgeon.methods.options import CurvatureOptions, MethodOptions
from llm_surgeon.methods.registry import get_method, method_class, method_names, methods_help, register_method
from llm_surgeon.methods.surgeon import SurgeonOptions, SurgeonPruning
from llm_surgeon.methods.ziplm import ZipLMPruning

for _method in (SurgeonPruning, SparseGPT, Wanda, KroneckerOBD, LayerOBD, MagnitudePruning, ZipLMPruning,
                FLAPPruning):
    register_method(_method)

__all__ = ["MethodBase", "PruningMethod", "LayerwiseMethod", "get_method", "method_class", "method_names",
           "methods_help", "register_method", "MagnitudePruning", "SurgeonPruning", "LayerOBD", "KroneckerOBD",
           "SparseGPT", "Wanda", "ZipLMPruning", "FLAPPruning", "UNSTRUCTURED", "NM", "STRUCTURED",
           "STRUCTURE_COSTS", "UPDATE_SOLVERS", "UPDATE_STARTS", "NM_COSTS", "MethodOptions", "SurgeonOptions",
           "MagnitudeOptions", "InputHessianOptions", "CurvatureOptions"]
