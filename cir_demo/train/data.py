"""Training data for the stages: triplets of a split, and their cached CLIP features."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch

from cir_demo.data.datasets import CIRDataset
from cir_demo.data.records import Triplet, query_captions
from cir_demo.eval.protocol import load_eval_splits
from cir_demo.model.clip import ClipModel
from cir_demo.pipeline.encode import encode_image_files, encode_texts
from cir_demo.train.distributed import encode_sharded

log = logging.getLogger(__name__)

TEXT_BATCH = 256  # captions per encoding batch (and per shard unit under DDP)


@dataclass
class TrainTriplets:
    """The training triplets of a dataset (all FashionIQ categories together, as the paper)."""

    dataset: str
    triplets: list[Triplet]
    captions: list[list[str]]          # per triplet, its caption variants (FashionIQ 4, CIRR 1)
    path_of: dict[str, Path]           # image name -> file

    @property
    def image_names(self) -> list[str]:
        return list(dict.fromkeys(n for t in self.triplets for n in (t.reference, t.target)))


def load_train_triplets(root: str | Path, categories: Optional[Sequence[str]] = None,
                        split: str = "train") -> TrainTriplets:
    datasets: list[CIRDataset] = load_eval_splits(root, split, categories)
    triplets, path_of = [], {}
    for ds in datasets:
        usable = [t for t in ds.triplets if t.target is not None]
        triplets += usable
        for t in usable:
            for name in (t.reference, t.target, *t.group):
                path_of[name] = ds.image_path(name)
    if not triplets:
        raise ValueError(f"{root}: no training triplets with targets in split {split!r}")
    captions = [query_captions(t, train=True) for t in triplets]
    return TrainTriplets(datasets[0].dataset, triplets, captions, path_of)


def sample_variants(n_variants: torch.Tensor, seed: int, step: int,
                    rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Which caption variant each row uses at this step (deterministic in seed and step).

    With ``rows``, ``n_variants`` counts every example's variants (T,) and the draw belongs to
    the example, not to its position in a batch: under DDP a row gets the same caption
    whichever process's shard holds it, as it would in one process.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    draw = torch.rand(n_variants.shape[0], generator=gen)  # (T,) or (B,)
    if rows is None:
        return (draw * n_variants).long()  # (B,)
    return (draw[rows] * n_variants[rows]).long()  # (b,)


def flat_variants(captions: list[list[str]]) -> tuple[list[str], int, torch.Tensor]:
    """Every triplet's variants padded to the same count V (repeating its last one), flattened
    row-major; returns (T * V captions, V, variants per triplet (T,))."""
    width = max(len(c) for c in captions)
    flat = [v for row in captions for v in row + [row[-1]] * (width - len(row))]
    return flat, width, torch.tensor([len(c) for c in captions])


@dataclass
class CachedTriplets:
    """Stage 2's cache: every triplet's image features and ALL its caption variants, encoded once."""

    ref: torch.Tensor       # (T, D) raw
    target: torch.Tensor    # (T, D) raw
    text: torch.Tensor      # (T, V, D) raw; rows with fewer variants repeat their last one
    n_variants: torch.Tensor  # (T,)
    members: Optional[torch.Tensor] = None         # (T, G, D) raw: the reference's image set but the target
    members_usable: Optional[torch.Tensor] = None  # (T, G) bool: False where a row has fewer members


def encode_image_names(clip: ClipModel, names: Sequence[str], path_of: Callable[[str], Path], *,
                       batch_size: int = 64, num_workers: int = 0, progress: bool = False,
                       desc: str = "images") -> dict[str, torch.Tensor]:
    """``encode_names``, with the images shared out over the DDP processes (each encodes whole
    batches of its share) and gathered once: every rank gets every feature, no rank encodes all."""
    unique = list(dict.fromkeys(names))

    def encode(rows: list[int]) -> torch.Tensor:  # (n_r, D): this rank's whole batches
        return encode_image_files(clip, [path_of(unique[r]) for r in rows], batch_size=batch_size,
                                  num_workers=num_workers, progress=progress, desc=desc)

    return dict(zip(unique, encode_sharded(encode, len(unique), batch_size)))  # N x (D,)


def set_members(triplet: Triplet) -> list[str]:
    """The images of a triplet's reference set (CIRR ``img_set``, reference included) other than its
    target: the look-alikes a query must rank below its target. [] without a set (FashionIQ)."""
    return [n for n in triplet.group if n != triplet.target]


def member_names(triplets: Sequence[Triplet]) -> list[str]:
    """Every image some triplet's :func:`set_members` names (what set negatives must encode)."""
    return [n for t in triplets for n in set_members(t)]


def member_table(triplets: Sequence[Triplet], feats: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each triplet's :func:`set_members` features, padded: ((T, G, D), usable (T, G) bool)."""
    members = [set_members(t) for t in triplets]
    size = max((len(row) for row in members), default=0)
    if size == 0:
        raise ValueError("set negatives need image sets (CIRR's img_set); these triplets have none")
    blank = torch.zeros_like(next(iter(feats.values())))
    table = torch.stack([torch.stack([feats[n] for n in row] + [blank] * (size - len(row))) for row in members])
    return table, torch.tensor([[i < len(row) for i in range(size)] for row in members])


def cache_triplet_features(clip: ClipModel, data: TrainTriplets, *, batch_size: int = 64, num_workers: int = 0,
                           progress: bool = True, text_batch_size: int = TEXT_BATCH,
                           with_members: bool = False) -> CachedTriplets:
    """Stage 2's cache. Under DDP each rank encodes a share of the images and captions; the
    shares are gathered once, so every rank holds the whole cache (its batches index any row).
    ``with_members`` also caches each triplet's :func:`set_members`."""
    names = data.image_names + (member_names(data.triplets) if with_members else [])
    feats = encode_image_names(clip, names, data.path_of.__getitem__, batch_size=batch_size,
                               num_workers=num_workers, progress=progress, desc="train images")
    captions, width, n_var = flat_variants(data.captions)

    def encode(rows: list[int]) -> torch.Tensor:  # (n_r, D): this rank's whole caption batches
        return encode_texts(clip, [captions[r] for r in rows], batch_size=text_batch_size, progress=progress,
                            desc="train captions")

    flat = encode_sharded(encode, len(captions), text_batch_size)  # (T * V, D)
    cache = CachedTriplets(
        ref=torch.stack([feats[t.reference] for t in data.triplets]),
        target=torch.stack([feats[t.target] for t in data.triplets]),
        text=flat.view(len(data.captions), width, -1), n_variants=n_var)
    if with_members:
        cache.members, cache.members_usable = member_table(data.triplets, feats)  # (T, G, D), (T, G)
    return cache
