"""Memory needed by the curvature of one shot, estimated before any work starts."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def curvature_bytes(linears: dict[str, nn.Linear]) -> int:
    """float32 bytes of the factors of one shot: raw, damped and inverted G per layer,
    the same for each distinct input width's A (shared inputs are counted per layer, an
    upper bound), plus one cost tensor per weight."""
    total = 0
    for lin in linears.values():
        total += 3 * (lin.out_features**2 + lin.in_features**2) + lin.weight.numel()
    return 4 * total


def available_bytes(device: str | torch.device) -> int | None:
    """Free memory on ``device``: CUDA's free memory, else the OS's MemAvailable (Linux)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None
