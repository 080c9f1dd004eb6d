"""Multi-process training: global-batch losses and per-rank random streams.

The contrastive losses score a rank's own queries against the features of the WHOLE global batch
(gathered with gradients by ``cir_demo.config.processes.gather_batch``), so N processes optimise
exactly the objective one process optimises at the same ``--batch-size``. With one process every
helper returns its input unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cir_demo.config.processes import (  # noqa: F401 - the training code's one import of them
    all_ranks,
    barrier,
    batch_shard,
    comm_device,
    distributed,
    encode_sharded,
    gather_batch,
    rank_world,
)


def global_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, global_rows: Optional[int] = None) -> torch.Tensor:
    """Cross-entropy averaged over the GLOBAL batch, for this rank's query rows.

    logits: (n_r, N) this rank's queries against the global batch; labels: (n_r,) columns.
    DDP averages gradients over the W ranks, so each rank returns W / N times its sum: the
    average of those is the single-process mean, and so is the averaged gradient. ``global_rows``
    is N when the logits have more columns than the global batch has queries (extra negatives).
    """
    world = rank_world()[1]
    if world == 1:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, reduction="sum") * (world / (global_rows or logits.shape[1]))


def global_loss_value(loss: torch.Tensor) -> float:
    """The single-process loss value from the per-rank shares of ``global_cross_entropy``."""
    world = rank_world()[1]
    if world == 1:
        return float(loss.detach())
    value = loss.detach().float().reshape(1).to(comm_device())
    dist.all_reduce(value)
    return float(value) / world


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
