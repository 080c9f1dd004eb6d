"""Stage 1: fine-tune CLIP so that ``normalize(ref + caption)`` retrieves the target.

The workshop paper fine-tunes the text encoder only (``--encoder text``, the default);
``image`` and ``both`` are there for the journal version's setting. CLIP stays in eval
mode throughout (ResNet BatchNorm statistics frozen), as in the original. With a frozen
image encoder its features never change, so they are encoded once instead of every batch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cir_demo.eval.protocol import build_query_set, load_eval_splits, score_sets
from cir_demo.model.checkpoint import save_checkpoint
from cir_demo.model.clip import ClipModel
from cir_demo.model.composers import SumComposer
from cir_demo.pipeline.encode import open_image
from cir_demo.train.augment import insert_unknown
from cir_demo.train.data import (TrainTriplets, encode_image_names, flat_variants, member_names, member_table,
                                 sample_variants)
from cir_demo.train.distributed import gather_batch, global_cross_entropy
from cir_demo.train.groups import group_order, triplet_groups
from cir_demo.train.loop import Task

log = logging.getLogger(__name__)
ENCODERS = ("text", "image", "both")


class RawEncoder(nn.Module):
    """CLIP's raw (unnormalised) encoders behind one ``forward``, so DDP sees the calls."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images=None, tokens=None):
        image = self.model.encode_image(images) if images is not None else None
        text = self.model.encode_text(tokens) if tokens is not None else None
        return image, text


def freeze_for(clip: ClipModel, encoder: str) -> list[nn.Parameter]:
    """Leave trainable only the chosen encoder's parameters; return them."""
    if encoder not in ENCODERS:
        raise ValueError(f"--encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    for name, param in clip.model.named_parameters():
        is_image = name.startswith("visual.")
        param.requires_grad = (encoder == "both") or (is_image == (encoder == "image"))
        if name == "logit_scale":
            param.requires_grad = False  # unused by the stage-1 loss
    return [p for p in clip.model.parameters() if p.requires_grad]


class Stage1Task(Task):
    def __init__(self, clip: ClipModel, data: TrainTriplets, encoder: str, *, root, categories, seed: int,
                 device: str, provenance: dict, save_dtype=None, batch_size: int = 64, num_workers: int = 0,
                 progress: bool = True, group_batches: bool = False, unknown_rate: float = 0.0,
                 set_negatives: bool = False):
        self.clip, self.data, self.encoder, self.seed, self.device = clip, data, encoder, seed, device
        self.unknown_rate = unknown_rate
        if unknown_rate and not hasattr(clip.tokenizer, "unknown_id"):
            raise ValueError("--unknown-words needs a CLIP with a trimmed vocabulary (it has an unknown token)")
        # batches of whole groups: a query's negatives include its target's close variants
        self.groups = triplet_groups(data.triplets) if group_batches else None
        self.root, self.categories, self.provenance, self.save_dtype = root, categories, provenance, save_dtype
        self.encode_kwargs = {"batch_size": batch_size, "num_workers": num_workers, "progress": progress}
        self.num_examples = len(data.triplets)
        self.wrapper = RawEncoder(clip.model)
        self.forward_module = self.wrapper
        flat, width, self.n_variants = flat_variants(data.captions)
        self.tokens = clip.tokenize(flat).view(len(data.captions), width, -1)  # (T, V, L)
        self.image_cache = None
        self.val_image_cache: dict = {}
        if set_negatives and encoder != "text":
            raise ValueError("set negatives in stage 1 need --encoder text (the image set's features are cached)")
        if encoder == "text":  # frozen image tower: encode every training image once
            names = data.image_names + (member_names(data.triplets) if set_negatives else [])
            self.image_cache = encode_image_names(clip, names, data.path_of.__getitem__,
                                                  desc="train images", **self.encode_kwargs)
        self.members = None
        if set_negatives:  # (T, G, D) unit features of each reference's set but the target, and a mask
            table, self.members_usable = member_table(data.triplets, self.image_cache)
            self.members = F.normalize(table, dim=-1)

    def trainable(self):
        return self.wrapper

    def epoch_order(self, seed: int, epoch: int):
        return None if self.groups is None else group_order(self.groups, seed=seed, epoch=epoch)

    def train_mode(self):
        self.clip.model.eval()  # BatchNorm statistics stay frozen, dropout off: as the original

    def _images(self, names):
        if self.image_cache is not None:
            return torch.stack([self.image_cache[n] for n in names]).to(self.device), None
        pixels = torch.stack([self.clip.preprocess(open_image(self.data.path_of[n])) for n in names])
        return None, pixels.to(self.device)

    def loss(self, rows, step):
        variant = sample_variants(self.n_variants, self.seed, step, rows)  # (b,) this rank's rows
        tokens = self.tokens[rows, variant]  # (b, L)
        if self.unknown_rate:
            gen = torch.Generator().manual_seed(self.seed * 1_000_033 + step)  # deterministic in the step
            tokens = insert_unknown(tokens, self.clip.tokenizer.unknown_id, self.unknown_rate, gen)
        tokens = tokens.to(self.device)
        refs = [self.data.triplets[r].reference for r in rows.tolist()]
        tgts = [self.data.triplets[r].target for r in rows.tolist()]
        ref_feats, ref_pixels = self._images(refs)
        tgt_feats, tgt_pixels = self._images(tgts)
        if ref_pixels is not None:
            both, text = self.forward_module(torch.cat([ref_pixels, tgt_pixels]), tokens)
            ref_feats, tgt_feats = both.split(len(rows))
        else:
            _, text = self.forward_module(None, tokens)
        predicted = F.normalize(ref_feats + text, dim=-1)  # (b, D) this rank's queries
        targets, offset = gather_batch(F.normalize(tgt_feats, dim=-1))  # (B, D) the global batch's
        logits = 100 * predicted @ targets.T  # (b, B)
        if self.members is not None:  # each query also against its own reference set
            own = 100 * torch.einsum("bd,bgd->bg", predicted, self.members[rows].to(self.device))  # (b, G)
            own = own.masked_fill(~self.members_usable[rows].to(self.device), float("-inf"))
            logits = torch.cat([logits, own], dim=1)  # (b, B + G)
        return global_cross_entropy(logits, offset + torch.arange(len(rows), device=logits.device),
                                    global_rows=len(targets))

    @torch.no_grad()
    def validate(self):
        self.clip.model.eval()
        reuse = self.encoder == "text"
        sets = []
        for ds in load_eval_splits(self.root, "val", self.categories):
            qs = build_query_set(self.clip, ds, image_feats=self.val_image_cache if reuse else None,
                                 **self.encode_kwargs)
            if reuse:
                self.val_image_cache.update(zip(qs.gallery_names, qs.gallery_feats))
                self.val_image_cache.update((t.reference, f) for t, f in zip(qs.triplets, qs.ref_feats))
            sets.append(qs)
        summary = score_sets(sets, SumComposer(), device=self.device)
        return summary["selection"], summary

    def save_best(self, path: Path, provenance: dict):
        save_checkpoint(path, clip=self.clip, dtype=self.save_dtype,
                        provenance={**self.provenance, **provenance, "stage": 1, "encoder": self.encoder})
