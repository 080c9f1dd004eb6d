"""Stage 2: train the Combiner on frozen CLIP features, cached once.

The original re-encodes every batch with CLIP under ``no_grad``; CLIP is frozen and in eval
mode, so its features are the same every epoch and caching them changes no number while
making an epoch orders of magnitude cheaper (``cir_demo/bench/stage2_cache.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cir_demo.eval.protocol import build_query_set, load_eval_splits, score_sets
from cir_demo.model.checkpoint import save_checkpoint
from cir_demo.model.clip import ClipModel
from cir_demo.model.combiner import Combiner
from cir_demo.model.composers import CombinerComposer
from cir_demo.train.data import CachedTriplets, sample_variants
from cir_demo.train.distributed import gather_batch, global_cross_entropy
from cir_demo.train.groups import group_order
from cir_demo.train.loop import Task

log = logging.getLogger(__name__)


class Stage2Task(Task):
    def __init__(self, clip: ClipModel, combiner: Combiner, cache: CachedTriplets, val_sets, *, seed: int,
                 device: str, provenance: dict, save_dtype=None, groups=None, reference_negative: bool = False):
        self.clip, self.combiner, self.cache, self.val_sets = clip, combiner.to(device), cache, val_sets
        self.groups = groups  # rows of close triplets kept together in batches (hard negatives), or None
        # The reference is the gallery image nearest to most queries, and a FashionIQ gallery keeps it:
        # scoring it as a negative of its own query teaches the Combiner to move away from it.
        self.reference_negative = reference_negative
        self.seed, self.device, self.provenance, self.save_dtype = seed, device, provenance, save_dtype
        self.num_examples = cache.ref.shape[0]
        self.forward_module = self.combiner

    def trainable(self):
        return self.combiner

    def epoch_order(self, seed: int, epoch: int):
        return None if self.groups is None else group_order(self.groups, seed=seed, epoch=epoch)

    def loss(self, rows, step):
        variant = sample_variants(self.cache.n_variants, self.seed, step, rows)  # (b,) this rank's rows
        ref = self.cache.ref[rows].to(self.device)  # (b, D)
        text = self.cache.text[rows, variant].to(self.device)  # (b, D)
        # CLIP is frozen: the targets need no gradient, only the other ranks' rows as negatives
        targets, offset = gather_batch(self.cache.target[rows].to(self.device))  # (B, D) global batch
        candidates = torch.cat([targets, ref]) if self.reference_negative else targets  # (B [+ b], D)
        members = self.cache.members
        if members is None:
            logits = self.forward_module(ref, text, candidates)  # (b, B [+ b])
        else:  # each query also against its own reference set (one forward, as DDP wants)
            own = members[rows].to(self.device)  # (b, G, D)
            b, g = own.shape[:2]
            every = self.forward_module(ref, text, torch.cat([candidates, own.flatten(0, 1)]))  # (b, B [+ b] + bG)
            block = torch.arange(b, device=every.device)
            mine = every[:, -b * g:].view(b, b, g)[block, block]  # (b, G): row i against its own G members
            mine = mine.masked_fill(~self.cache.members_usable[rows].to(every.device), float("-inf"))
            logits = torch.cat([every[:, :-b * g], mine], dim=1)  # (b, B [+ b] + G)
        labels = offset + torch.arange(len(rows), device=logits.device)
        return global_cross_entropy(logits, labels, global_rows=len(targets))

    @torch.no_grad()
    def validate(self):
        self.combiner.eval()
        composer = CombinerComposer(self.combiner)
        summary = score_sets(self.val_sets, composer, device=self.device)
        return summary["selection"], summary

    def save_best(self, path: Path, provenance: dict):
        save_checkpoint(path, combiner=self.combiner, dtype=self.save_dtype,
                        provenance={**self.provenance, **provenance, "stage": 2})


def build_val_sets(clip: ClipModel, root, categories, *, batch_size: int, num_workers: int, progress: bool,
                   split: str = "val"):
    return [build_query_set(clip, ds, batch_size=batch_size, num_workers=num_workers, progress=progress)
            for ds in load_eval_splits(root, split, categories)]
