"""Which torch device a command runs on: the one place that turns --device into a torch.device, and says what it
computes fast."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from uav_cache.errors import UavError


def pick_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """"auto" → CUDA when present, else CPU; anything else as torch names it ("cpu", "cuda:1"), refused with one
    line when torch does not know it or this machine does not have it. ``local_rank`` (one of several torchrun
    processes on a node) makes "auto" and "cuda" mean that process's own GPU: N processes must not all land on
    GPU 0."""
    if local_rank is not None and name in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UavError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} on this node)",
                           "start at most one process per GPU (torchrun --nproc-per-node)")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        return dev
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise UavError(f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type in ("cuda", "xpu"):
        backend = getattr(torch, dev.type)
        present = backend.is_available() and (dev.index or 0) < backend.device_count()
    else:
        present = dev.type == "mps" and torch.backends.mps.is_available()
    if not present:
        raise UavError(f"device {name!r} is not available on this machine", "use --device auto or cpu")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware. A CUDA GPU from Ampere on does; so does a CPU that
    oneDNN serves in bf16 (AVX-512 or AMX). Any other CPU falls back to a scalar kernel: measured on a 2-core
    AVX2 EPYC, a 512×576 @ 576×1536 product took 758 ms in bf16 against 8 ms in fp32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch build without oneDNN
            return False
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"bf16" or "fp32", what a run on ``device`` computes in. auto: bf16 on a GPU with bf16 units (tensor cores;
    half the decoder's memory), fp32 elsewhere (a CPU, where tiny models run slower in bf16). bf16: bf16 where the
    device has bf16 units (a CPU with AVX-512 or AMX: faster steps than fp32), fp32 where it has none, since there
    bf16 only costs time (~100× on an AVX2 CPU)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and native_bf16(device) else "fp32"
    if precision == "bf16":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


@contextmanager
def cpu_threads(n: int | None):
    """Run the block with ``n`` intra-op CPU threads (None: leave torch's count), restoring the count after. The
    thread count decides how BLAS splits a matrix product, so the last bit of a result depends on it: two runs are
    bit-identical only with the same count (torchrun starts each process with 1)."""
    if n is None:
        yield
        return
    if n < 1:
        raise UavError(f"--threads must be ≥ 1, got {n}", "e.g. --threads 1, or leave it out for torch's default")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
