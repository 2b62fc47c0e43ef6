"""Freed tensor memory goes back to the operating system at once (glibc on Linux).

glibc serves allocations below its mmap threshold from its heap, and raises that threshold (up to
32 MiB) every time a larger block is freed, so after the first few batches most activation buffers
come from a heap that fragments and is not handed back: on a curvature pass of smollm2-135m the peak
RSS was 10-16% higher than with a fixed threshold (``benchmarks/curvature_pass_memory.py``, BENCHMARKS.md).
A fixed threshold sends every buffer of at least ``threshold`` bytes to its own mapping, released when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 1 << 20


def release_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where there is no glibc (nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
