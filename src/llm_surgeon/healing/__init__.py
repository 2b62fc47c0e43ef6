"""Healing after pruning: the pruned model learns the dense model's predictions (``--heal``)."""
