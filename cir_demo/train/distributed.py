"""Multi-process helpers: the process group, global-batch gathering, sharded encoding, RNG streams.

Under ``torchrun`` every process holds a shard of each global batch. The contrastive losses
score a rank's own queries against the features of the WHOLE global batch, gathered here with
gradients flowing back to the rank that computed them, so N processes optimise exactly the
objective one process optimises at the same ``--batch-size``. With one process every helper
returns its input unchanged, so single-process code takes the same path as before.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

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


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns to each rank the gradient of EVERY rank's loss with
    respect to its own rows (a plain all_gather would keep only its own loss's share)."""

    @staticmethod
    def forward(ctx, x, sizes):
        rank = dist.get_rank()
        ctx.start, ctx.rows = sum(sizes[:rank]), sizes[rank]
        return _gather_rows(x, list(sizes))

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()  # (N, ...): all_reduce works in place
        dist.all_reduce(grad)  # sum over ranks of d(loss_r)/d(gathered rows)
        return grad[ctx.start:ctx.start + ctx.rows], None


def gather_batch(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the global batch's rows of ``x`` in rank order (N, ...), where this rank's rows start).

    Gradients flow back to the rank that computed each row when ``x`` requires grad.
    """
    rank, world = rank_world()
    if world == 1:
        return x, 0
    sizes = _shard_sizes(len(x), x.device)
    if x.requires_grad:
        return _GatherWithGrad.apply(x, tuple(sizes)), sum(sizes[:rank])
    with torch.no_grad():
        return _gather_rows(x, sizes), sum(sizes[:rank])


def global_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the GLOBAL batch, for this rank's query rows.

    logits: (n_r, N) this rank's queries against the global batch; labels: (n_r,) columns.
    DDP averages gradients over the W ranks, so each rank returns W / N times its sum: the
    average of those is the single-process mean, and so is the averaged gradient.
    """
    world = rank_world()[1]
    if world == 1:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, reduction="sum") * (world / logits.shape[1])


def global_loss_value(loss: torch.Tensor) -> float:
    """The single-process loss value from the per-rank shares of ``global_cross_entropy``."""
    world = rank_world()[1]
    if world == 1:
        return float(loss.detach())
    value = loss.detach().float().reshape(1).to(comm_device())
    dist.all_reduce(value)
    return float(value) / world


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


def stream_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a rank's dropout stream started at ``step``: distinct per rank, so ranks
    do not draw the same masks for their different rows."""
    return ((seed * 1_000_003 + rank) * 1_000_003 + step) % (2 ** 63)


def _cuda_index(device: torch.device) -> Optional[int]:
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def rng_state(device: torch.device) -> dict:
    """This process's generators: the CPU one and its OWN CUDA device's (not every visible GPU)."""
    index = _cuda_index(device)
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(index) if index is not None else None}


def set_rng_state(state: dict, device: torch.device) -> bool:
    """Restore ``rng_state``'s output; False when a saved CUDA stream cannot apply (CPU now)."""
    torch.set_rng_state(state["cpu"])
    index = _cuda_index(device)
    if state.get("cuda") is not None and index is not None:
        torch.cuda.set_rng_state(state["cuda"], index)
    return state.get("cuda") is None or index is not None
