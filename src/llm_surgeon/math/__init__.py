"""Pure tensor math of LLM Surgeon: no hooks, no models, no I/O.

Every function here takes and returns plain tensors so that it can be checked against an
explicit dense reference on small matrices (see ``tests/test_math_*.py``).
"""
