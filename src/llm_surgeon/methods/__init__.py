"""Pruning methods: each says how much removing a weight costs and how to compensate.

The shot loop, the global threshold and the masks are shared (:mod:`llm_surgeon.pruner`);
a new method is one small class here.
"""

from llm_surgeon.methods.base import PruningMethod, get_method
from llm_surgeon.methods.magnitude import MagnitudePruning
from llm_surgeon.methods.surgeon import SurgeonPruning

__all__ = ["PruningMethod", "get_method", "MagnitudePruning", "SurgeonPruning"]
