"""Where a shot keeps its curvature sums: a device and block groups (never changes the result)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryLayout:
    """Where a shot keeps its curvature; never changes the result, only where and when sums are held."""

    factor_device: str | None = None
    """Where the raw sums accumulate (None: beside each layer). ``cpu`` puts them in host memory."""
    block_groups: int = 1
    """Groups of consecutive blocks collected in separate passes, their sums waiting on disk in between."""
    scratch_dir: str | None = None
    """Where grouped sums wait (None: the system's temporary folder)."""

    def to_dict(self) -> dict:
        return {"factor_device": self.factor_device, "block_groups": self.block_groups}
