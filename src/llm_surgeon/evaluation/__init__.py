"""Perplexity, zero-shot accuracy, the dense-result cache and the compact model's footprint."""
