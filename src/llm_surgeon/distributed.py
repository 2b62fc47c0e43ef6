"""Curvature over several processes with ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

The calibration windows are sharded over the ranks of the default process group; each rank runs the
same forward/backward passes with the same hooks on its shard, and the raw factor sums and token counts
are summed across ranks before they are normalised. Every rank then holds the factors one process would
have computed from all windows (up to the order of floating-point additions), so the rest of the shot —
costs, the global threshold, the update — gives the same masks on every rank without further agreement.

:func:`assign_owners` balances layers over ranks by their factor size, for the owner-computes scheme
(sums reduced to an owner, owners cost and update, weights broadcast) that keeps each rank's share small.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from llm_surgeon.curvature import FactorAccumulator, LocalCollector
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


class DataParallelCollector(LocalCollector):
    """:class:`~llm_surgeon.curvature.LocalCollector`'s passes on this rank's shard, the sums reduced across ranks.

    With ``fisher="true"`` each rank samples its own labels (seeded by ``seed`` and its rank), so the
    factors are another draw of the same estimator rather than one process's draw.
    """

    def __init__(self, batch_size: int = 8, fisher: str = "empirical", progress: bool = True,
                 factor_device: torch.device | str | None = None, group: dist.ProcessGroup | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise LLMSurgeonError("data-parallel curvature needs an initialised torch.distributed process group "
                                  "(start with torchrun)")
        super().__init__(batch_size, fisher, progress and dist.get_rank(group) == 0, factor_device)
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)

    def windows_of(self, windows: torch.Tensor) -> torch.Tensor:
        return shard(windows, self.rank, self.world)

    def seed_of(self, seed: int) -> int:
        return seed + 1_000_003 * self.rank

    def reduce(self, accumulator: FactorAccumulator) -> None:
        """Sum every distinct sum tensor (a shared ``A`` once) and the token count over the ranks, in place."""
        seen: set[int] = set()
        try:
            for sums in (accumulator.A, accumulator.G):
                for tensor in sums.values():
                    if id(tensor) not in seen:
                        seen.add(id(tensor))
                        dist.all_reduce(tensor, group=self.group)
            tokens = torch.tensor([accumulator.tokens], dtype=torch.float64)
            dist.all_reduce(tokens, group=self.group)
        except (RuntimeError, dist.DistBackendError) as exc:
            raise LLMSurgeonError(f"rank {self.rank}: another rank stopped while the curvature sums were being "
                                  f"reduced ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                                  "the last complete checkpoint is intact") from exc
        accumulator.tokens = int(tokens.item())


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
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), backend)
    finally:
        dist.destroy_process_group()
