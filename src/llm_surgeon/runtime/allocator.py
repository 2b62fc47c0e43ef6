"""Freed tensor memory goes back to the operating system (glibc on Linux).

glibc serves allocations below its mmap threshold from a heap, and raises that threshold (up to
32 MiB) every time a larger block is freed; after the first batches most buffers then come from a heap
that fragments and keeps its pages. On one LLM Surgeon shot of smollm2-135m the peak RSS was 3.37 GB
with glibc's default and 2.79 GB with the threshold fixed at 4 MiB (BENCHMARKS.md). 4 MiB keeps the
many small per-layer temporaries of the update on the fast heap (a 1 MiB threshold made shots about a
quarter slower) while the factor statistics, activations and logits get mappings of their own, released
as soon as they are freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 4 << 20


def release_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where there is no glibc (nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
