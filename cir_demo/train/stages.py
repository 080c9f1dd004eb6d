"""Each stage's typed configuration and its wiring: load what it needs, build its Task and
optimiser, call ``fit``.

The configs are the library's interface (``run_stage2(Stage2Config(data=..., out=..., clip=...))``);
their defaults are the paper's reference hyper-parameters (PAPER.md) and the CLI's
(``commands/train.py`` builds its options from these fields).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from cir_demo.model.combiner import Combiner
from cir_demo.model.factory import load_clip
from cir_demo.train.distributed import distributed
from cir_demo.train.loop import LoopConfig, fit

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What every stage shares. ``batch_size`` is the GLOBAL batch whatever the number of processes;
    ``save_dtype`` None keeps fp32; ``categories`` None takes every FashionIQ category."""
    data: Union[PathLike, Sequence[PathLike]]
    out: PathLike
    epochs: int
    batch_size: int
    lr: float
    categories: Optional[Sequence[str]] = None
    schedule: str = "constant"
    seed: int = 0
    max_steps: Optional[int] = None
    resume: bool = False
    overwrite: bool = False
    validate_every: int = 1
    device: str = "cpu"
    num_workers: int = 0
    save_dtype: Optional[torch.dtype] = None
    progress: bool = True

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be constant or cosine, not {self.schedule!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")
        for name in ("epochs", "batch_size", "validate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(RunConfig):
    """Contrastive pre-training of a small CLIP from random initialisation (``data``: several roots)."""
    epochs: int = 20
    batch_size: int = 128
    lr: float = 5e-4
    model: str = "cir-tiny"
    weight_decay: float = 0.1
    trim_vocabulary: bool = False
    hard_negatives: int = 0
    group_batches: bool = False
    attribute_loss: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Stage1Config(RunConfig):
    """Stage 1: fine-tune CLIP's ``encoder`` with the normalised element-wise sum (paper: text)."""
    clip: PathLike
    clip_model: str = "RN50x4"
    epochs: int = 100
    batch_size: int = 512
    lr: float = 2e-6
    encoder: str = "text"
    weight_decay: float = 0.01
    grad_checkpointing: bool = False
    unknown_words: float = 0.0
    group_batches: bool = False
    set_negatives: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.encoder not in ("text", "image", "both"):
            raise ValueError(f"encoder must be text, image or both, not {self.encoder!r}")


@dataclass(frozen=True, kw_only=True)
class Stage2Config(RunConfig):
    """Stage 2: train the Combiner on the frozen stage-1 CLIP's cached features; the Combiner's widths
    default to 4x and 8x the CLIP feature dimension."""
    clip: PathLike
    clip_model: str = "RN50x4"
    epochs: int = 300
    batch_size: int = 4096
    lr: float = 2e-5
    projection_dim: Optional[int] = None
    hidden_dim: Optional[int] = None
    group_batches: bool = False
    reference_negative: bool = False
    set_negatives: bool = False


def _loop_config(cfg: RunConfig, **extra) -> LoopConfig:
    rank, _ = distributed()
    return LoopConfig(out_dir=cfg.out, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                      max_steps=cfg.max_steps, resume=cfg.resume, overwrite=cfg.overwrite,
                      validate_every=cfg.validate_every, schedule=cfg.schedule,
                      device=cfg.device, progress=cfg.progress and rank == 0, extra=extra)


def _encode_kwargs(cfg: RunConfig) -> dict:
    rank, _ = distributed()
    return {"batch_size": 64, "num_workers": cfg.num_workers, "progress": cfg.progress and rank == 0}


def _provenance(cfg: RunConfig, stage) -> dict:
    data = cfg.data if isinstance(cfg.data, (list, tuple)) else [cfg.data]
    return {"data": [str(d) for d in data], "seed": cfg.seed, "lr": cfg.lr, "batch_size": cfg.batch_size,
            "command": f"python -m cir_demo train {stage}"}


STAGES = {"clip-pretrain": PretrainConfig, "stage1": Stage1Config, "stage2": Stage2Config}  # CLI name: config


def run(cfg: RunConfig) -> dict:
    """Run the stage ``cfg`` configures (its type says which)."""
    runner = {PretrainConfig: run_pretrain, Stage1Config: run_stage1, Stage2Config: run_stage2}.get(type(cfg))
    if runner is None:
        raise TypeError(f"not a stage config: {type(cfg).__name__}")
    return runner(cfg)


def run_pretrain(cfg: PretrainConfig) -> dict:
    from cir_demo.train.groups import image_groups
    from cir_demo.train.negatives import load_lexicon, negative_captions
    from cir_demo.train.pretrain import (PretrainTask, attribute_targets, captioned_images, new_clip, preload_pixels,
                                         training_texts)

    torch.manual_seed(cfg.seed)  # the run's initialisation depends on its seed alone
    clip = new_clip(cfg.model, device=cfg.device,
                    trim_from=training_texts(cfg.data, "train") if cfg.trim_vocabulary else None)
    paths, captions = captioned_images(cfg.data, "train")
    val_paths, val_captions = captioned_images(cfg.data, "val")
    enc = _encode_kwargs(cfg)
    pixels = preload_pixels(clip, paths, num_workers=cfg.num_workers, progress=enc["progress"])
    val_pixels = preload_pixels(clip, val_paths[:1024], num_workers=cfg.num_workers, progress=False)
    groups = image_groups(cfg.data, "train", paths) if cfg.group_batches else None
    log.info("clip-pretrain on %d captioned images (%d held out)%s", len(paths), len(val_pixels),
             f", batches of whole groups ({len(groups)} groups)" if groups else "")
    negatives = None
    if cfg.hard_negatives:  # each world's captions swap words of its own lexicon ("star": a shape, or a print)
        negatives = [row for root in cfg.data
                     for row in negative_captions(captioned_images([root], "train")[1], load_lexicon([root]),
                                                  per_caption=cfg.hard_negatives, seed=cfg.seed)]
    task = PretrainTask(clip, pixels, captions, device=cfg.device, provenance=_provenance(cfg, "clip-pretrain"),
                        val_pixels=val_pixels, val_captions=val_captions[:1024], save_dtype=cfg.save_dtype,
                        groups=groups, negatives=negatives, seed=cfg.seed,
                        attributes=attribute_targets(cfg.data, "train") if cfg.attribute_loss else None,
                        attribute_weight=cfg.attribute_loss)
    named = list(task.trainable().named_parameters())  # CLIP and, with --attribute-loss, its heads
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    return fit(task, optimizer, _loop_config(cfg))


def run_stage1(cfg: Stage1Config) -> dict:
    from cir_demo.train.data import load_train_triplets
    from cir_demo.train.stage1 import Stage1Task, freeze_for

    torch.manual_seed(cfg.seed)  # the run's initialisation depends on its seed alone
    data_root = cfg.data
    clip = load_clip(cfg.clip_model, cfg.clip, device=cfg.device)
    if cfg.grad_checkpointing:
        clip.model.set_grad_checkpointing(True)
    params = freeze_for(clip, cfg.encoder)
    data = load_train_triplets(data_root, cfg.categories)
    task = Stage1Task(clip, data, cfg.encoder, root=data_root, categories=cfg.categories, seed=cfg.seed,
                      device=cfg.device, provenance=_provenance(cfg, "stage1"), save_dtype=cfg.save_dtype,
                      group_batches=cfg.group_batches, unknown_rate=cfg.unknown_words,
                      set_negatives=cfg.set_negatives, **_encode_kwargs(cfg))
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-7, weight_decay=cfg.weight_decay)
    return fit(task, optimizer, _loop_config(cfg, encoder=cfg.encoder))


def run_stage2(cfg: Stage2Config) -> dict:
    from cir_demo.train.data import cache_triplet_features, load_train_triplets
    from cir_demo.train.groups import triplet_groups
    from cir_demo.train.stage2 import Stage2Task, build_val_sets

    torch.manual_seed(cfg.seed)  # the run's initialisation depends on its seed alone
    data_root = cfg.data
    clip = load_clip(cfg.clip_model, cfg.clip, device=cfg.device)
    for p in clip.model.parameters():
        p.requires_grad = False
    enc = _encode_kwargs(cfg)
    data = load_train_triplets(data_root, cfg.categories)
    cache = cache_triplet_features(clip, data, with_members=cfg.set_negatives, **enc)
    val_sets = build_val_sets(clip, data_root, cfg.categories, **enc)
    dim = clip.feature_dim
    combiner = Combiner(dim, cfg.projection_dim or 4 * dim, cfg.hidden_dim or 8 * dim)
    provenance = {**_provenance(cfg, "stage2"), "clip": str(cfg.clip)}
    task = Stage2Task(clip, combiner, cache, val_sets, seed=cfg.seed, device=cfg.device, provenance=provenance,
                      save_dtype=cfg.save_dtype, groups=triplet_groups(data.triplets) if cfg.group_batches else None,
                      reference_negative=cfg.reference_negative)
    optimizer = torch.optim.Adam(combiner.parameters(), lr=cfg.lr)
    return fit(task, optimizer, _loop_config(cfg))
