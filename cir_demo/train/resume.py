"""What a run folder keeps between launches: the resume point, and no silent overwrite of it.

The resume point holds every rank's own generator states (CPU and its own CUDA device), so a
resumed multi-process run draws the dropout masks the uninterrupted run would have drawn.
A resume on another number of processes follows a stated rule (``_restore_streams``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from cir_demo.config.files import atomic_write
from cir_demo.model.checkpoint import safe_torch_load
from cir_demo.train.distributed import all_ranks, rank_world, rng_state, set_rng_state, stream_seed

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
LOG_FILE = "metrics.jsonl"
BEST_FILE = "best.safetensors"
CONFIG_FILE = "config.json"
RUN_FILES = (STATE_FILE, LOG_FILE, BEST_FILE, CONFIG_FILE)


def check_run_folder(out: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse (FileExistsError) to start a fresh run over an existing one unless ``overwrite``."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    found = [name for name in RUN_FILES if (Path(out) / name).exists()]
    if not found or overwrite or (resume and STATE_FILE in found):
        return
    why = f"{out} already holds a training run ({', '.join(found)})"
    if resume:
        raise FileExistsError(f"{why} but no {STATE_FILE} to resume from; pass --overwrite to start over "
                              f"(this deletes its log and weights), or choose another --out")
    raise FileExistsError(f"{why}; pass --resume to continue it, --overwrite to start over (this deletes its "
                          f"log, resume point and weights), or choose another --out")


def clear_run_folder(out: Path) -> None:
    """Remove a previous run's files, so nothing of it is mistaken for the new run's."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _order(cfg) -> dict:
    # the batch position only means something for the same order of the same (global) batches
    return {"seed": cfg.seed, "batch_size": cfg.batch_size, "drop_last": cfg.drop_last}


def save_state(path: Path, task, optimizer, scaler, cfg, *, epoch: int, step: int, batch_in_epoch: int,
               best: Optional[float]) -> None:
    """Collective (every rank calls it); rank 0 writes model, optimiser and every rank's RNG."""
    rngs = all_ranks(rng_state(torch.device(cfg.device)))
    rank, world = rank_world()
    if rank != 0:
        return
    state = {"epoch": epoch, "step": step, "batch_in_epoch": batch_in_epoch, "best": best,
             "model": task.trainable().state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else {},
             "world": world, "rng": rngs, "order": _order(cfg)}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def restore_state(path: Path, task, optimizer, scaler, cfg) -> tuple[tuple, Optional[str]]:
    """((epoch, step, batch in epoch, best), a note when the RNG streams could not be restored)."""
    state = safe_torch_load(path)
    order, saved = _order(cfg), state.get("order", {})
    if {key: saved.get(key) for key in order} != order:
        raise ValueError(f"cannot resume {path}: it was saved with {saved}, this run has {order}; "
                         f"use the same --seed and --batch-size, or a new --out")
    task.trainable().load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    note = _restore_streams(state, cfg)
    log.info("resumed from %s at epoch %d, step %d", path, state["epoch"], state["step"])
    return (state["epoch"], state["step"], state["batch_in_epoch"], state["best"]), note


def _restore_streams(state: dict, cfg) -> Optional[str]:
    """Each rank takes back its own generators. On another number of processes (or from a file
    without per-rank states) the rule is: model, optimiser and the sequence of global batches
    carry over exactly (the batches do not depend on the number of processes); each rank's
    dropout stream restarts from ``stream_seed(seed, rank, step)``. A sound continuation, not
    bit-identical to an uninterrupted run."""
    rank, world = rank_world()
    device = torch.device(cfg.device)
    rngs = state.get("rng")
    if rngs is not None and len(rngs) == world:
        if set_rng_state(rngs[rank], device):
            return None
        note = "saved on CUDA, resumed on the CPU: dropout draws differ from the uninterrupted run"
    else:
        torch.manual_seed(stream_seed(cfg.seed, rank, state["step"]))
        why = (f"state saved by {len(rngs)} process(es), resumed on {world}" if rngs is not None
               else "state saved without per-process RNG states (an older version)")
        note = (f"{why}: same model, optimiser and global batches; dropout streams re-seeded per rank at "
                f"step {state['step']} (not bit-identical to an uninterrupted run)")
    log.warning("%s", note)
    return note
