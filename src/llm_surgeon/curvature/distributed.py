"""Curvature over several processes with ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

The calibration windows are sharded over the ranks of the default process group; each rank runs the
same forward/backward passes with the same hooks on its shard, and the raw factor sums are summed across
ranks before they are normalised. Two ways to use them:

* :class:`DataParallelCollector` all-reduces every sum: every rank holds the factors one process would
  have computed from all windows (up to the order of floating-point additions) and computes the whole
  shot itself. Structured selection, whose costs read several layers' whole factors, uses this.
* :class:`OwnerCollector` gives each layer an owner rank (:func:`assign_owners`, balanced by factor
  size, layers that share an input kept together), reduces each sum to its owner only and drops the
  others; owners damp, invert, cost and update their layers (:class:`OwnedLayers`): the cost inputs are
  gathered on every rank, so every rank makes the same exact global selection, and each owner broadcasts
  its layers' new weights.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from llm_surgeon.curvature.collectors import FactorAccumulator, LocalCollector
from llm_surgeon.curvature.placement import DeviceOf, LayerPlacement, UpdateTotals, moved
from llm_surgeon.errors import LLMSurgeonError


def assign_owners(sizes: dict[str, int], world: int) -> dict[str, int]:
    """Each name to one of ``world`` ranks, largest first to the least-loaded rank (ties: lowest rank)."""
    if world < 1:
        raise ValueError(f"world size must be at least 1, got {world}")
    loads = [(0, rank) for rank in range(world)]
    owners: dict[str, int] = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        load, rank = heapq.heappop(loads)
        owners[name] = rank
        heapq.heappush(loads, (load + sizes[name], rank))
    return {name: owners[name] for name in sizes}


def shard(windows: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """The windows rank ``rank`` of ``world`` processes: every ``world``-th, starting at ``rank``."""
    if windows.shape[0] < world:
        raise LLMSurgeonError(f"{windows.shape[0]} calibration windows cannot be shared by {world} ranks; "
                              "use at least one window per rank")
    return windows[rank::world]


class CommClock:
    """Seconds this rank spent in collectives (waiting for the slowest rank included), for the report."""

    def __init__(self, rank: int):
        self.rank = rank
        self.seconds = 0.0

    @contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Time the block; a collective that fails because another rank stopped ends the run in one line."""
        start = time.perf_counter()
        try:
            yield
        except RuntimeError as exc:  # DistBackendError and gloo's connection errors alike
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LLMSurgeonError(f"rank {self.rank}: another rank stopped while {what} ({first}); the last "
                                  "complete checkpoint is intact") from exc
        finally:
            self.seconds += time.perf_counter() - start


class DataParallelCollector(LocalCollector):
    """:class:`~llm_surgeon.curvature.collectors.LocalCollector`'s passes on this rank's shard, the sums reduced
    across ranks.

    With ``fisher="true"`` each rank samples its own labels (seeded by ``seed`` and its rank), so the
    factors are another draw of the same estimator rather than one process's draw.
    """

    def __init__(self, batch_size: int = 8, fisher: str = "empirical", progress: bool = True,
                 factor_device: torch.device | str | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise LLMSurgeonError("data-parallel curvature needs an initialised torch.distributed process group "
                                  "(start with torchrun)")
        super().__init__(batch_size, fisher, progress and dist.get_rank() == 0, factor_device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.clock = CommClock(self.rank)

    def windows_of(self, windows: torch.Tensor) -> torch.Tensor:
        return shard(windows, self.rank, self.world)

    def seed_of(self, seed: int) -> int:
        return seed + 1_000_003 * self.rank

    def reduce(self, accumulator: FactorAccumulator) -> None:
        """Sum every distinct sum tensor (a shared ``A`` once) and the token count over the ranks, in place."""
        with self.clock.collective("the curvature sums were being reduced"):
            _agree_on_layers(accumulator)
            for tensor in _distinct([*accumulator.A.values(), *accumulator.G.values(), *accumulator.M.values()]):
                dist.all_reduce(tensor)
            _sum_tokens(accumulator)


def _agree_on_layers(accumulator: FactorAccumulator) -> None:
    """Sum the rows each layer saw over the ranks; a layer that ran elsewhere but not here (an expert no
    local token was routed to) gets zero sums here, so that every rank reduces the same tensors."""
    names = list(accumulator.linears)
    rows = torch.tensor([accumulator.rows.get(name, 0) for name in names], dtype=torch.float64,
                        device=_collective_device())
    dist.all_reduce(rows)
    for name, count in zip(names, rows.tolist(), strict=True):
        if count and name not in accumulator.A:
            accumulator.A[name] = _zero_sum(accumulator, name, accumulator.linears[name].in_features)
            if accumulator.G:  # gradients were collected
                accumulator.G[name] = _zero_sum(accumulator, name, accumulator.linears[name].out_features)
            if accumulator.input_means:
                width = accumulator.linears[name].in_features
                accumulator.M[name] = torch.zeros(width, device=accumulator.A[name].device)
    accumulator.rows = {name: int(count) for name, count in zip(names, rows.tolist(), strict=True) if count}


def _zero_sum(accumulator: FactorAccumulator, name: str, width: int) -> torch.Tensor:
    numbers = width if accumulator.diagonal_only else width * (width + 1) // 2
    device = accumulator.factor_device or accumulator.linears[name].weight.device
    return torch.zeros(numbers, dtype=torch.float32, device=device)


def _collective_device() -> torch.device:
    """Where small bookkeeping tensors must be for a collective: NCCL moves only CUDA tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _distinct(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor once (an ``A`` shared by several layers appears under each of their names)."""
    seen: dict[int, torch.Tensor] = {}
    for tensor in tensors:
        seen.setdefault(id(tensor), tensor)
    return list(seen.values())


def _sum_tokens(accumulator: FactorAccumulator) -> None:
    tokens = torch.tensor([accumulator.tokens], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tokens)
    accumulator.tokens = int(tokens.item())


def input_units(accumulator: FactorAccumulator) -> list[list[str]]:
    """The layers grouped by the ``A`` sum they share (q/k/v, gate/up), in the model's order."""
    units: dict[int, list[str]] = {}
    for name in accumulator.linears:
        if name in accumulator.A:
            units.setdefault(id(accumulator.A[name]), []).append(name)
    return list(units.values())


class OwnerCollector(DataParallelCollector):
    """Each layer's sums reduced to its owner rank alone; the other ranks drop them (owner-computes).

    Owners are chosen per pass from the sums' sizes (a unit of layers sharing one ``A`` goes to one
    rank, so the shared input is reduced once); every rank chooses the same, since the layers' shapes
    and sharing do not depend on the data. :meth:`placement` tells the shot who computes what.
    """

    def __init__(self, batch_size: int = 8, fisher: str = "empirical", progress: bool = True,
                 factor_device: torch.device | str | None = None):
        super().__init__(batch_size, fisher, progress, factor_device)
        self.owners: dict[str, int] = {}

    def reduce(self, accumulator: FactorAccumulator) -> None:
        with self.clock.collective("the layers each rank saw were being agreed"):
            _agree_on_layers(accumulator)
        units = input_units(accumulator)
        sizes = {unit[0]: accumulator.A[unit[0]].numel() + sum(accumulator.G[n].numel() for n in unit
                                                                 if n in accumulator.G) for unit in units}
        unit_owner = assign_owners(sizes, self.world)
        with self.clock.collective("the curvature sums were being reduced to their owners"):
            for unit in units:
                owner = unit_owner[unit[0]]
                for tensor in ([accumulator.A[unit[0]]] + [accumulator.G[n] for n in unit if n in accumulator.G]
                               + [accumulator.M[n] for n in unit if n in accumulator.M]):
                    dist.reduce(tensor, owner)
            _sum_tokens(accumulator)
        for unit in units:
            self.owners.update(dict.fromkeys(unit, unit_owner[unit[0]]))
            if unit_owner[unit[0]] != self.rank:  # what another rank owns is dropped here
                for name in unit:
                    accumulator.A.pop(name)
                    accumulator.G.pop(name, None)
                    accumulator.M.pop(name, None)

    def kept(self, linears: dict[str, nn.Linear]) -> dict[str, nn.Linear]:
        return {name: lin for name, lin in linears.items() if self.owners.get(name) == self.rank}

    def placement(self) -> OwnedLayers:
        return OwnedLayers(dict(self.owners), self.rank, self.world, self.clock)


class OwnedLayers(LayerPlacement):
    """Each layer computed by its owner rank; cost inputs gathered everywhere, new weights broadcast."""

    every_layer_here = False

    def __init__(self, owners: dict[str, int], rank: int, world: int, clock: CommClock):
        self.owners, self.rank, self.world, self.clock = owners, rank, world, clock

    def here(self, name: str) -> bool:
        return self.owners[name] == self.rank

    def share_cost_inputs(self, inputs: dict, device_of: DeviceOf) -> dict:
        parts: list[dict | None] = [None] * self.world
        with self.clock.collective("the cost inputs were being gathered"):
            dist.all_gather_object(parts, {name: moved(value, "cpu") for name, value in inputs.items()})
        merged = {name: value for part in parts for name, value in (part or {}).items()}
        return {name: moved(merged[name], device_of(name)) for name in self.owners}

    def share_weights(self, linears: dict[str, nn.Linear]) -> None:
        with self.clock.collective("the updated weights were being broadcast"):
            for name, lin in linears.items():
                dist.broadcast(lin.weight.data, self.owners[name])

    def share_totals(self, totals: UpdateTotals) -> UpdateTotals:
        parts: list[UpdateTotals | None] = [None] * self.world
        with self.clock.collective("the update totals were being gathered"):
            dist.all_gather_object(parts, totals)
        return UpdateTotals(iterations=[i for part in parts for i in part.iterations],
                            loss_no_update=sum(part.loss_no_update for part in parts),
                            loss_after=sum(part.loss_after for part in parts))


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run: one process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    backend: str | None = None

    @property
    def writes(self) -> bool:
        """Whether this rank writes the output folder, checkpoints and report (rank 0 alone)."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, value: object) -> list:
        """``value`` of every rank, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        parts: list = [None] * self.world
        dist.all_gather_object(parts, value)
        return parts

    def to_dict(self) -> dict:
        return {"world_size": self.world, "backend": self.backend}


@contextmanager
def joined_ranks(device: str, timeout_s: float = 1800.0) -> Iterator[Ranks]:
    """The ranks ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1), joined for the block: gloo
    for CPU devices, NCCL for CUDA ones; one process otherwise. A group this call creates is left at the
    end; one that already exists (the caller's) is used as it is. A rank that does not arrive within
    ``timeout_s``, or that dies in a collective, ends the run with an error instead of a hang."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        yield Ranks(dist.get_rank(), dist.get_world_size(), dist.get_backend())
        return
    if world <= 1:
        yield Ranks()
        return
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":  # one GPU per rank: "cuda" then means this rank's own
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), backend)
    finally:
        dist.destroy_process_group()
