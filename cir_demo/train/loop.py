"""One training loop for every stage: epochs of index batches, AMP, DDP, validation, resume.

A stage supplies a ``Task`` (what a batch's loss is, how to validate, what to save); the
loop owns the rest. Data order is a function of (seed, epoch) and caption sampling of
(seed, step), so a resumed run takes exactly the batches the uninterrupted run would.
``batch_size`` is the GLOBAL batch: under DDP each rank takes a shard of the same batches
and the tasks score their shard against the whole batch (``cir_demo.train.distributed``).
Each rank's dropout stream is its own and is saved and restored per rank.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from cir_demo.train.distributed import barrier, distributed, global_loss_value, stream_seed
from cir_demo.train.resume import (
    BEST_FILE,
    CONFIG_FILE,
    LOG_FILE,
    STATE_FILE,
    check_run_folder,
    clear_run_folder,
    restore_state,
    save_state,
)

log = logging.getLogger(__name__)

__all__ = ["LoopConfig", "Task", "fit", "epoch_batches", "distributed", "STATE_FILE", "LOG_FILE"]


@dataclass
class LoopConfig:
    out_dir: str
    epochs: int = 1
    batch_size: int = 128             # global: split over the DDP processes
    seed: int = 0
    max_steps: Optional[int] = None   # stop (and save state) after this many optimiser steps in all
    resume: bool = False
    overwrite: bool = False           # a fresh run may replace a finished/interrupted one in out_dir
    validate_every: int = 1           # epochs
    device: str = "cpu"
    amp: bool = True                  # only has an effect on CUDA
    progress: bool = True
    drop_last: bool = True            # as the original: a last small batch has too few negatives
    schedule: str = "constant"        # learning rate over the run: "constant" (the paper) or "cosine"
    extra: dict = field(default_factory=dict)


SCHEDULES = ("constant", "cosine")
WARMUP = 0.03  # cosine: share of the steps spent warming up linearly


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based) of ``total``.

    A pure function of the step, so a resumed run takes exactly the rates the uninterrupted one would.
    ``cosine``: linear warm-up over the first 3 % of the steps, then a half cosine down to 0.
    """
    if schedule == "constant" or total <= 0:
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    warmup = max(1, int(WARMUP * total))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


class Task:
    """What a stage defines. ``trainable()`` is the module DDP wraps; ``loss`` calls it through
    ``self.forward_module`` (the DDP wrapper under torchrun). ``loss`` gets this rank's shard of
    the global batch and must score it against the whole batch (``gather_batch`` and
    ``global_cross_entropy`` in ``cir_demo.train.distributed``)."""

    num_examples: int = 0

    def trainable(self) -> torch.nn.Module:
        raise NotImplementedError

    def loss(self, rows: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError

    def validate(self) -> tuple[float, dict]:
        """(selection score, metrics); higher is better."""
        raise NotImplementedError

    def save_best(self, path: Path, provenance: dict) -> None:
        raise NotImplementedError

    def train_mode(self) -> None:
        """Set train/eval modes for a training step (stage 1 keeps CLIP in eval mode)."""
        self.trainable().train()

    def epoch_order(self, seed: int, epoch: int) -> Optional[torch.Tensor]:
        """The epoch's row order, or None for a random permutation (the default)."""
        return None


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int, rank: int, world: int,
                  drop_last: bool, order: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
    """This rank's shards of the epoch's global batches (one permutation, whatever ``world``).

    ``order`` (a permutation of the n rows) replaces the random one, e.g. to keep groups of hard
    negatives together (``Task.epoch_order``).
    """
    perm = order if order is not None else torch.randperm(
        n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    if batch_size < world:
        raise ValueError(f"--batch-size is the global batch: {batch_size} rows cannot be shared by {world} "
                         f"processes")
    global_batches = [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and global_batches and len(global_batches[-1]) < batch_size and len(global_batches) > 1:
        global_batches.pop()
    return [b[rank::world] for b in global_batches]


class JsonlLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record, default=float) + "\n")


def fit(task: Task, optimizer: torch.optim.Optimizer, cfg: LoopConfig) -> dict:
    """Train; returns {"step", "epoch", "best", "seconds"}. Rank 0 writes files."""
    rank, world = distributed()
    out = Path(cfg.out_dir)
    check_run_folder(out, resume=cfg.resume, overwrite=cfg.overwrite)
    barrier()  # every rank has looked at the folder before rank 0 changes it
    resuming = cfg.resume and (out / STATE_FILE).is_file()
    if rank == 0:
        _prepare_folder(out, cfg, resuming)
    logbook = JsonlLog(out / LOG_FILE, rank == 0)
    module = task.trainable()
    ddp = torch.nn.parallel.DistributedDataParallel(module) if world > 1 else None
    use_amp = cfg.amp and torch.device(cfg.device).type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    epoch, step, skip, best = 0, 0, 0, None
    if resuming:
        (epoch, step, skip, best), note = restore_state(out / STATE_FILE, task, optimizer, scaler, cfg)
        logbook.write(event="resume", step=step, world=world, **({"note": note} if note else {}))
    else:  # one dropout stream per rank: ranks must not draw the same masks for different rows
        torch.manual_seed(stream_seed(cfg.seed, rank, 0))
    start = time.perf_counter()
    task.forward_module = ddp or module
    for group in optimizer.param_groups:  # kept in the optimiser state: a resumed run scales the same base
        group.setdefault("initial_lr", group["lr"])

    def save(at_epoch: int, batch_in_epoch: int) -> None:  # every rank: it gathers their RNG states
        save_state(out / STATE_FILE, task, optimizer, scaler, cfg, epoch=at_epoch, step=step,
                   batch_in_epoch=batch_in_epoch, best=best)

    while epoch < cfg.epochs and not _reached(cfg, step):
        batches = epoch_batches(task.num_examples, cfg.batch_size, seed=cfg.seed, epoch=epoch, rank=rank,
                                world=world, drop_last=cfg.drop_last, order=task.epoch_order(cfg.seed, epoch))
        step, done, loss_sum, n = _run_epoch(task, optimizer, scaler, batches, cfg, epoch, step, skip, logbook,
                                             rank, use_amp)
        if done < len(batches):  # stopped by --max-steps inside the epoch: resumable from here
            save(epoch, done)
            break
        epoch, skip = epoch + 1, 0
        record = {"event": "epoch", "epoch": epoch, "step": step, "train_loss": loss_sum / max(n, 1),
                  "seconds": time.perf_counter() - start}
        if epoch % cfg.validate_every == 0 or epoch == cfg.epochs or _reached(cfg, step):
            score, val = task.validate()
            record.update(val=val, score=score)
            if best is None or score > best:
                best = score
                if rank == 0:
                    task.save_best(out / BEST_FILE, {"epoch": epoch, "step": step, "metrics": val})
                record["best"] = True
        logbook.write(**record)
        log.info("epoch %d: loss %.4f score %s", epoch, record["train_loss"], record.get("score"))
        save(epoch, 0)
    _check_ranks_agree(module, logbook, rank, world, torch.device(cfg.device))
    return {"step": step, "epoch": epoch, "best": best, "seconds": time.perf_counter() - start}


def _prepare_folder(out: Path, cfg: LoopConfig, resuming: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not resuming:  # a fresh run (checked: allowed to replace what is there) starts clean
        clear_run_folder(out)
    (out / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2, default=str))


def _total_steps(task: Task, cfg: LoopConfig) -> int:
    """Optimiser steps of the whole run (``--max-steps`` only pauses it: the schedule ignores it)."""
    per_epoch = epoch_batches(task.num_examples, cfg.batch_size, seed=0, epoch=0, rank=0, world=1,
                              drop_last=cfg.drop_last)
    return cfg.epochs * len(per_epoch)


def _reached(cfg: LoopConfig, step: int) -> bool:
    return cfg.max_steps is not None and step >= cfg.max_steps


def _run_epoch(task, optimizer, scaler, batches, cfg, epoch, step, skip, logbook, rank, use_amp):
    """Train on batches[skip:]; returns (step, batches done in this epoch, loss sum, count)."""
    total = _total_steps(task, cfg)
    bar = batches[skip:]
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
    loss_sum, n, done = 0.0, 0, skip
    for rows in bar:
        if _reached(cfg, step):
            break
        task.train_mode()
        factor = lr_factor(cfg.schedule, step, total)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            loss = task.loss(rows, step)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        step, done = step + 1, done + 1
        value = global_loss_value(loss)  # the whole batch's loss, not this rank's share
        loss_sum, n = loss_sum + value, n + 1
        logbook.write(event="step", epoch=epoch + 1, step=step, loss=value)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_sum / n:.4f}")
    return step, done, loss_sum, n


def _check_ranks_agree(module: torch.nn.Module, logbook: JsonlLog, rank: int, world: int,
                       device: torch.device) -> None:
    """Under DDP, record every rank's parameter checksum: they must be identical."""
    if world == 1:
        return
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")  # NCCL gathers CUDA tensors only
    checksum = torch.tensor([sum(float(p.detach().double().sum()) for p in module.parameters())],
                            dtype=torch.float64, device=on)
    gathered = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(gathered, checksum)
    logbook.write(event="ddp", checksums=[float(g) for g in gathered])
