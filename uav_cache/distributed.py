"""torch.distributed as uav uses it: which process this is (its device comes from device.pick_device with its
local rank), and a process group when there is more than one. uav launches nothing itself: `torchrun` (or SLURM's `srun` through torchrun) starts the
processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; harvest and training read
them here. One process (no torchrun) is rank 0 of 1 and never touches torch.distributed.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass

import torch

from uav_cache.errors import UavError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: global ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Ranks":
        try:
            r = cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))
        except ValueError:
            raise UavError("RANK / WORLD_SIZE / LOCAL_RANK are not integers", "launch with torchrun, or unset them") from None
        if not 0 <= r.rank < r.world:
            raise UavError(f"rank {r.rank} is outside world size {r.world}", "check RANK / WORLD_SIZE")
        return r

    @property
    def main(self) -> bool:
        """The one process that writes logs, checkpoints and the run record, and prints."""
        return self.rank == 0

    @property
    def device_rank(self) -> int | None:
        """What device.pick_device needs: the node-local rank when there are several processes."""
        return self.local_rank if self.world > 1 else None


def init(ranks: Ranks, device: torch.device, timeout_s: float = 1800, backend: str | None = None) -> bool:
    """Join the job's process group (``backend``, else nccl on CUDA and gloo otherwise) when there is more than
    one process and torchrun's rendezvous is set. Returns whether this call created the group (its owner
    destroys it)."""
    import torch.distributed as dist

    if ranks.world == 1 or dist.is_initialized():
        return False
    if "MASTER_ADDR" not in os.environ:
        raise UavError(f"WORLD_SIZE is {ranks.world} but there is no rendezvous (MASTER_ADDR unset)",
                       "launch with torchrun --nproc-per-node N (or set MASTER_ADDR / MASTER_PORT)")
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world, timeout=_dt.timedelta(seconds=timeout_s),
                            **({"device_id": device} if backend == "nccl" else {}))
    return True


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every process (no-op for one)."""
    if active():
        import torch.distributed as dist

        dist.barrier()


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over every process (``x`` itself for one)."""
    if active():
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
    return x


def finish(created: bool) -> None:
    if created:
        import torch.distributed as dist

        dist.destroy_process_group()
