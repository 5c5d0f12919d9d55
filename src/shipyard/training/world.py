"""Where this process stands in a data-parallel job (`fit(world=…)`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class World:
    """Where this process stands in a data-parallel job. The default is a lone process, which
    trains exactly as before; `shipyard.training.distributed` builds the others after
    `init_process_group`. `rank` is the logical rank (`node_rank * nproc + local_rank`), so rank 0
    is local rank 0 of node 0 whatever order the rendezvous admitted the nodes in; collectives
    address processes by their process-group rank, hence `tracker_rank`."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    tracker_rank: int = 0  # process-group rank of logical rank 0: it alone tracks
    backend: str = ""
    #: set by the worker's SIGINT handler; the loop turns it into KeyboardInterrupt between batches,
    #: so an interrupt never lands in the middle of a collective or of the tracker's bookkeeping
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def tracks(self) -> bool:
        """Only this process writes the run record, metrics, checkpoints and TensorBoard files."""
        return self.rank == 0

    def share(self, obj: Any) -> Any:
        """The tracker's `obj`, on every process (what the others pass is ignored)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=self.tracker_rank)
        return box[0]

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over every process (float64, so counts and sums stay exact)."""
        if not self.distributed:
            return t
        import torch.distributed as dist

        dist.all_reduce(t)
        return t
