"""The memory and time model of a shot: one estimate for ``plan`` and ``prune``."""
