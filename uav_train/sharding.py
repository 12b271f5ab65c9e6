"""FSDP2 for decoders that do not fit one GPU (``sharding = "fsdp"`` under torchrun).

Each decoder block goes through torch's ``fully_shard``: its frozen weights are split over the ranks and gathered
for the block's forward and backward only, so a rank holds 1/N of the blocks' weights plus one block at a time.
Embeddings, the final norm and the LM head stay whole on every rank (they are called outside the blocks' forward,
and for the registry's decoders are ~2-10% of the weights). The LoRA that stage 2 adds later, and the adapter, are
not sharded: they train, they are small, and DDP averages their gradients exactly as in ``sharding = "ddp"``
(``Trainer._ddp``), so the loss normalisation, the optimizer, clipping and the rank-0 writes do not change.

Each rank loads the whole decoder on the CPU first (host memory: N × the decoder while the run starts), then moves
each block to its GPU as it shards it. Tested with gloo on CPU processes; the CUDA/NCCL path is untested.
"""

from __future__ import annotations

import torch

from uav_cache.models import block_modules


def shard_decoder(model: torch.nn.Module, device: torch.device) -> None:
    """Shard every block of ``model`` (loaded on the CPU) over the process group's ranks, moving each block to
    ``device`` as it is sharded; then move the rest of the model there. Collective: every rank calls it."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for _, block in block_modules(model):
        fully_shard(block, mesh=mesh)  # reshard after forward: backward gathers the block again
    model.to(device)  # the unsharded rest; the blocks' shards are already there


def sharded_bytes(model: torch.nn.Module) -> int:
    """Bytes of decoder weights this rank holds (sharded blocks count their local shard only)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total
