"""The shot loop and what runs inside it: selectors (elements, N:M groups, structures), the
block-by-block engine of one-shot methods, reconstruction and the low-rank correction."""
