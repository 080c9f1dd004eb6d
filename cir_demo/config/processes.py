"""The process group, for code at any layer: rank and world size, a barrier, rows gathered across
processes (gradients included), work sharded by whole batches.

Under ``torchrun`` every process holds a shard of the work. With one process every helper returns
its input unchanged, so single-process code takes the same path.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():  # before the group exists: NCCL binds each rank to its device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return rank_world()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of an initialised group, else (0, 1); never initialises anything."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def comm_device() -> torch.device:
    """Where collective tensors must live: NCCL moves CUDA tensors only, gloo CPU ones."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def all_ranks(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order."""
    world = rank_world()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _shard_sizes(n: int, device: torch.device) -> list[int]:
    """Row counts of every rank's shard: shards of one batch may differ by a row or more."""
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(rank_world()[1])]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All ranks' ``x`` (n_r, ...) concatenated in rank order (sum n_r, ...)."""
    padded = x.new_zeros((max(sizes), *x.shape[1:]))  # all_gather needs equal shapes
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def gather_batch(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the global batch's rows of ``x`` in rank order (N, ...), where this rank's rows start).

    Gradients flow back to the rank that computed each row when ``x`` requires grad (torch's
    differentiable all_gather: its backward sums every rank's gradient for this rank's rows).
    """
    rank, world = rank_world()
    if world == 1:
        return x, 0
    sizes = _shard_sizes(len(x), x.device)
    if not x.requires_grad:
        with torch.no_grad():
            return _gather_rows(x, sizes), sum(sizes[:rank])
    from torch.distributed.nn.functional import all_gather

    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, max(sizes) - len(x)))  # all_gather needs equal shapes
    parts = all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), sum(sizes[:rank])


def batch_shard(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """This rank's rows of ``range(n)`` for sharded encoding: whole batches k = rank, rank + W, ...

    Whole batches (the last one may be short) so each is the very batch one process would
    encode, and sharded features equal single-process ones bit for bit.
    """
    starts = range(rank * batch_size, n, world * batch_size)
    return [row for start in starts for row in range(start, min(start + batch_size, n))]


def encode_sharded(encode: Callable[[list[int]], torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
    """(n, ...) CPU features of rows ``range(n)`` on every rank, each rank encoding its share.

    ``encode(rows)`` returns (len(rows), ...) CPU features and must batch ``rows`` in chunks of
    ``batch_size``, in order (as ``encode_image_files`` / ``encode_texts`` do).
    """
    rank, world = rank_world()
    if world == 1:
        return encode(list(range(n)))
    rows = batch_shard(n, batch_size, rank, world)
    feats = encode(rows)  # (n_r, ...) CPU
    device = comm_device()
    all_feats, _ = gather_batch(feats.to(device))  # (n, ...) in rank order
    all_rows, _ = gather_batch(torch.tensor(rows, dtype=torch.long, device=device))  # (n,)
    out = torch.empty((n, *feats.shape[1:]), dtype=feats.dtype)
    out[all_rows.cpu()] = all_feats.cpu()
    return out


