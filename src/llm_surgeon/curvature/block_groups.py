"""Block groups: a shot's curvature collected a group of blocks at a time when all of it does not fit.

Each group's pass collects only its own layers' factors, and its backward stops at the group's first
block. The group's sums then wait in a scratch folder, and the next group is collected; only when every
group is collected do the costs and the update read the sums back, one group at a time. No weight
changes before every group is collected, so the factors — and the masks and weights that follow from
them — are the ones a single pass over all blocks gives; only the passes are repeated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from llm_surgeon.curvature.collectors import CurvatureCollector, CurvatureRequest, KroneckerFactors
from llm_surgeon.models.adapters import ArchitectureAdapter


def block_ranges(blocks: int, groups: int) -> list[range]:
    """``groups`` runs of consecutive blocks, as even as possible (earlier groups take the remainder)."""
    if not 1 <= groups <= blocks:
        raise ValueError(f"cannot split {blocks} blocks into {groups} groups")
    size = math.ceil(blocks / groups)
    starts = list(range(0, blocks, size))
    return [range(start, min(start + size, blocks)) for start in starts]


def group_linears(linears: dict[str, nn.Linear], adapter: ArchitectureAdapter, blocks: range
                  ) -> dict[str, nn.Linear]:
    """The prunable layers of ``blocks``, in the model's order."""
    prefixes = tuple(adapter.module_name(b, "") for b in blocks)  # "model.layers.3."
    return {name: lin for name, lin in linears.items() if name.startswith(prefixes)}


class SpilledFactors(Mapping[str, KroneckerFactors]):
    """Raw factors of every layer, kept on disk a group per file and read back a group at a time.

    Reading a layer loads its whole group (the layers of a shot are visited in block order, so each
    group is read once per visit) and drops the group read before. Inputs shared by several layers
    stay shared when read back.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self._file_of: dict[str, Path] = {}
        self._loaded: tuple[Path, dict[str, KroneckerFactors]] | None = None

    def add(self, group: int, factors: dict[str, KroneckerFactors]) -> None:
        """Write one group's factors (atomically: a stopped run never leaves half a group readable)."""
        path = self.folder / f"group-{group:04d}.pt"
        leaders: dict[int, str] = {}
        payload: dict = {"A": {}, "A_of": {}, "G": {}, "tokens": {}, "packed": {}, "mean": {}}
        for name, f in factors.items():
            leader = leaders.setdefault(id(f.A), name)
            if leader == name:
                payload["A"][name] = f.A
            payload["A_of"][name] = leader
            payload["tokens"][name] = f.tokens
            payload["packed"][name] = f.packed
            if f.G is not None:
                payload["G"][name] = f.G
            if f.mean is not None:
                payload["mean"][name] = f.mean
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        self._file_of.update(dict.fromkeys(factors, path))

    def _read(self, path: Path) -> dict[str, KroneckerFactors]:
        payload = torch.load(path, weights_only=True)
        return {name: KroneckerFactors(A=payload["A"][leader], G=payload["G"].get(name),
                                       tokens=payload["tokens"][name], packed=payload["packed"][name],
                                       mean=payload["mean"].get(name))
                for name, leader in payload["A_of"].items()}

    def __getitem__(self, name: str) -> KroneckerFactors:
        path = self._file_of[name]
        if self._loaded is None or self._loaded[0] != path:
            self._loaded = None  # free the previous group before reading the next
            self._loaded = (path, self._read(path))
        return self._loaded[1][name]

    def __contains__(self, name: object) -> bool:
        return name in self._file_of  # without reading the group's file

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)

    def __len__(self) -> int:
        return len(self._file_of)


def collect_in_groups(collector: CurvatureCollector, model: nn.Module, adapter: ArchitectureAdapter,
                      linears: dict[str, nn.Linear], windows: torch.Tensor, request: CurvatureRequest, seed: int,
                      ranges: list[range], folder: Path, label: str = "") -> SpilledFactors:
    """One pass per group of blocks, each group's factors written to ``folder`` before the next pass.

    Every pass uses the same ``seed``, so sampled labels (true Fisher) are the same draws as in one pass.
    """
    spilled = SpilledFactors(folder)
    for index, blocks in enumerate(ranges):
        members = group_linears(linears, adapter, blocks)
        part = replace(request, from_block=blocks.start)
        where = f"blocks {blocks.start}-{blocks.stop - 1} ({index + 1}/{len(ranges)})"
        factors = collector.collect(model, adapter, members, windows, part, seed,
                                    label=f"{label}, {where}" if label else where)
        spilled.add(index, factors)
        del factors
    return spilled
