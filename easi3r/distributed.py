"""Several processes: ``torchrun --nproc_per_node=K -m easi3r eval ...`` (or ``... easi3r run ...``).

torchrun starts K copies of the command and tells each its place through environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

``eval`` deals whole sequences; ``run`` on one long video deals the chunks of pairs of each pass and the
alignment windows the same way, through the run cache (:mod:`easi3r.pipeline`). For ``eval``: sequences
are dealt round robin (sequence ``i`` of the reader's order to rank ``i % K``), so every rank knows its share
without asking the others, and the sequences' output folders are disjoint. The ranks talk only twice:
rank 0's check of the output folder is broadcast before anything runs, and the per-sequence results
(small Python objects) are gathered at the end so that rank 0 writes the one summary and every rank
returns the same exit status.

Python objects travel over gloo (CPU). When the runs use CUDA the default process group is NCCL, as a
GPU job expects, and a gloo group beside it carries the objects: object collectives over NCCL would go
through GPU memory and need each rank's device set up front for nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from collections.abc import Sequence as SequenceOf
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from easi3r.errors import Easi3RError

__all__ = ["WAIT_TIMEOUT", "Ranks", "join", "rank_device"]

T = TypeVar("T")

# A rank that has finished its share waits in the final gather for the slowest rank; torch's default
# of 30 minutes would abort a benchmark whose shards finish further apart than that. A rank that dies
# does not leave the others waiting this long: torchrun stops the whole group when one worker fails.
WAIT_TIMEOUT = timedelta(days=1)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the evaluating processes; the default is a lone process (no group)."""

    rank: int = 0
    world_size: int = 1
    # the process group carrying Python objects; None = the default group (which is gloo then)
    group: Any = None
    device: str | None = None  # the device this rank's runs must use instead of the recipe's, if any

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def log_prefix(self) -> str:
        # the ranks' log lines interleave on one terminal: say whose line it is
        return "" if self.world_size == 1 else f"rank {self.rank}: "

    def overrides(self) -> list[str]:
        return [] if self.device is None else [f"backbone.device={self.device}"]

    def shard(self, items: SequenceOf[T]) -> list[T]:
        """This rank's share of ``items``: those at positions ``rank``, ``rank + K``, ``rank + 2K``..."""
        return list(items[self.rank :: self.world_size])

    def owns(self, index: int) -> bool:
        """Whether item ``index`` of a round-robin deal (:meth:`shard`) is this rank's."""
        return index % self.world_size == self.rank

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def check_on_main(self, check: Callable[[], None]) -> None:
        """Run ``check`` on rank 0 alone and raise its :class:`Easi3RError` on every rank.

        No rank returns before rank 0's check is done, so none can write into what is being checked.
        """
        if self.world_size == 1:
            check()
            return
        outcome: list[str | None] = [None]
        if self.is_main:
            try:
                check()
            except Easi3RError as exc:
                outcome[0] = str(exc)
        dist.broadcast_object_list(outcome, src=0, group=self.group)
        if outcome[0] is not None:
            raise Easi3RError(outcome[0])

    def gather(self, mine: list[T]) -> list[T]:
        """Every rank's results for its :meth:`shard`, back in the order of the items (on every rank)."""
        if self.world_size == 1:
            return mine
        shards: list[list[T]] = [[] for _ in range(self.world_size)]
        dist.all_gather_object(shards, mine, group=self.group)
        # item i went to rank i % K, as that rank's (i // K)-th
        total = sum(len(shard) for shard in shards)
        return [shards[i % self.world_size][i // self.world_size] for i in range(total)]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.group)


def rank_device(configured: str, local_rank: int) -> str | None:
    """The device that puts one rank's runs on its own GPU, or None to keep the recipe's ``configured``.

    ``auto`` and ``cuda`` would put every rank of a node on ``cuda:0``; ``cpu``, ``mps`` and an explicit
    ``cuda:N`` are the user's choice and stay.
    """
    if configured not in ("auto", "cuda") or not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise Easi3RError(
            f"process {local_rank} of this node has no GPU of its own ({count} visible): start at most "
            f"{count} processes per node (--nproc_per_node) or run on the CPU (--device cpu)"
        )
    return f"cuda:{local_rank}"


@contextmanager
def join(configured_device: str) -> Iterator[Ranks]:
    """The processes torchrun started (``WORLD_SIZE`` > 1), in one process group for the duration.

    A lone process (no torchrun) gets :class:`Ranks` ``()`` and no group. A group the caller already
    initialised is used as it is and left open.
    """
    initialised = dist.is_available() and dist.is_initialized()
    if not initialised and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Ranks()
        return
    if not dist.is_available():
        raise Easi3RError("torch.distributed is not available in this PyTorch build: run eval in one process")
    device = rank_device(configured_device, int(os.environ.get("LOCAL_RANK", "0")))
    if device is not None:
        # code that asks for plain "cuda" (and NCCL) must land on this rank's GPU too
        torch.cuda.set_device(device)
    if not initialised:
        # the rendezvous address, rank and size come from torchrun's environment variables (env://)
        dist.init_process_group("nccl" if device is not None else "gloo", timeout=WAIT_TIMEOUT)
    objects = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), objects, device)
    finally:
        if objects is not None:
            dist.destroy_process_group(objects)
        if not initialised:
            dist.destroy_process_group()
