"""Curvature collection: hooks that sum Kronecker factors, damping and inverses on demand, block groups
spilled to disk, the distributed reduce to owner ranks and which rank computes what."""
