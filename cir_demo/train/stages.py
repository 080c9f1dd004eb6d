"""Wiring of each stage: load what it needs, build its Task and optimiser, call ``fit``."""

from __future__ import annotations

import logging

import torch

from cir_demo.model.combiner import Combiner
from cir_demo.model.factory import load_clip
from cir_demo.train.distributed import distributed
from cir_demo.train.loop import LoopConfig, fit

log = logging.getLogger(__name__)


def _loop_config(args, **extra) -> LoopConfig:
    rank, _ = distributed()
    return LoopConfig(out_dir=args.out, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                      max_steps=args.max_steps, resume=args.resume, overwrite=args.overwrite,
                      validate_every=args.validate_every, schedule=args.schedule,
                      device=args.device, progress=not args.no_progress and rank == 0, extra=extra)


def _encode_kwargs(args) -> dict:
    rank, _ = distributed()
    return {"batch_size": 64, "num_workers": args.num_workers, "progress": not args.no_progress and rank == 0}


def _provenance(args, stage) -> dict:
    data = args.data if isinstance(args.data, list) else [args.data]
    return {"data": [str(d) for d in data], "seed": args.seed, "lr": args.lr, "batch_size": args.batch_size,
            "command": f"python -m cir_demo train {stage}"}


def run_pretrain(args) -> dict:
    from cir_demo.train.groups import image_groups
    from cir_demo.train.negatives import load_lexicon, negative_captions
    from cir_demo.train.pretrain import PretrainTask, captioned_images, new_clip, preload_pixels, training_texts

    clip = new_clip(args.model, device=args.device,
                    trim_from=training_texts(args.data, "train") if args.trim_vocabulary else None)
    paths, captions = captioned_images(args.data, "train")
    val_paths, val_captions = captioned_images(args.data, "val")
    enc = _encode_kwargs(args)
    pixels = preload_pixels(clip, paths, num_workers=args.num_workers, progress=enc["progress"])
    val_pixels = preload_pixels(clip, val_paths[:1024], num_workers=args.num_workers, progress=False)
    groups = image_groups(args.data, "train", paths) if args.group_batches else None
    log.info("clip-pretrain on %d captioned images (%d held out)%s", len(paths), len(val_pixels),
             f", batches of whole groups ({len(groups)} groups)" if groups else "")
    negatives = None
    if args.hard_negatives:  # each world's captions swap words of its own lexicon ("star": a shape, or a print)
        negatives = [row for root in args.data
                     for row in negative_captions(captioned_images([root], "train")[1], load_lexicon([root]),
                                                  per_caption=args.hard_negatives, seed=args.seed)]
    task = PretrainTask(clip, pixels, captions, device=args.device, provenance=_provenance(args, "clip-pretrain"),
                        val_pixels=val_pixels, val_captions=val_captions[:1024], save_dtype=args.save_dtype,
                        groups=groups, negatives=negatives, seed=args.seed)
    decay = [p for n, p in clip.model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in clip.model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    return fit(task, optimizer, _loop_config(args))


def run_stage1(args) -> dict:
    from cir_demo.train.data import load_train_triplets
    from cir_demo.train.stage1 import Stage1Task, freeze_for

    data_root = args.data
    clip = load_clip(args.clip_model, args.clip, device=args.device)
    if args.grad_checkpointing:
        clip.model.set_grad_checkpointing(True)
    params = freeze_for(clip, args.encoder)
    data = load_train_triplets(data_root, args.categories)
    task = Stage1Task(clip, data, args.encoder, root=data_root, categories=args.categories, seed=args.seed,
                      device=args.device, provenance=_provenance(args, "stage1"), save_dtype=args.save_dtype,
                      group_batches=args.group_batches, unknown_rate=args.unknown_words, **_encode_kwargs(args))
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-7, weight_decay=args.weight_decay)
    return fit(task, optimizer, _loop_config(args, encoder=args.encoder))


def run_stage2(args) -> dict:
    from cir_demo.train.data import cache_triplet_features, load_train_triplets
    from cir_demo.train.groups import triplet_groups
    from cir_demo.train.stage2 import Stage2Task, build_val_sets

    data_root = args.data
    clip = load_clip(args.clip_model, args.clip, device=args.device)
    for p in clip.model.parameters():
        p.requires_grad = False
    enc = _encode_kwargs(args)
    data = load_train_triplets(data_root, args.categories)
    cache = cache_triplet_features(clip, data, **enc)
    val_sets = build_val_sets(clip, data_root, args.categories, **enc)
    dim = clip.feature_dim
    combiner = Combiner(dim, args.projection_dim or 4 * dim, args.hidden_dim or 8 * dim)
    provenance = {**_provenance(args, "stage2"), "clip": str(args.clip)}
    task = Stage2Task(clip, combiner, cache, val_sets, seed=args.seed, device=args.device, provenance=provenance,
                      save_dtype=args.save_dtype, groups=triplet_groups(data.triplets) if args.group_batches else None,
                      reference_negative=args.reference_negative)
    optimizer = torch.optim.Adam(combiner.parameters(), lr=args.lr)
    return fit(task, optimizer, _loop_config(args))
