"""The paper's evaluation, for any composer: encode a split once, then score each composer.

FashionIQ: per category, gallery = the category's split images, reference kept, R@10/R@50
and their averages. CIRR: gallery = all split images, reference removed, R@1/5/10/50 and
Recall_subset@1/2/3. CIRR test1 produces the two submission JSON files instead (``cir_demo.eval.submission``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from cir_demo.data.datasets import FASHIONIQ_CATEGORIES, CIRDataset, detect_layout, load_cirr, load_fashioniq
from cir_demo.data.records import Triplet, query_captions
from cir_demo.eval import metrics
from cir_demo.model.clip import ClipModel
from cir_demo.model.composers import Composer
from cir_demo.pipeline.encode import encode_names, encode_texts

log = logging.getLogger(__name__)


@dataclass
class QuerySet:
    """Everything the protocol needs for one gallery, as RAW features (CPU, float32)."""

    name: str                  # FashionIQ category, or "cirr"
    dataset: str               # "fashioniq" | "cirr"
    gallery_feats: torch.Tensor  # (N, D)
    gallery_names: list[str]
    ref_feats: torch.Tensor    # (Q, D)
    text_feats: torch.Tensor   # (Q, D)
    triplets: list[Triplet]

    @property
    def has_targets(self) -> bool:
        return all(t.target is not None for t in self.triplets)

    def unit_gallery(self, device: str | torch.device) -> torch.Tensor:
        """The normalised gallery (N, D) on ``device``, computed once per device."""
        key = str(device)
        if getattr(self, "_unit", (None, None))[0] != key:
            self._unit = (key, F.normalize(self.gallery_feats.to(device), dim=-1))
        return self._unit[1]


def build_query_set(clip: ClipModel, ds: CIRDataset, *, image_feats: Optional[Mapping[str, torch.Tensor]] = None,
                    batch_size: int = 64, num_workers: int = 0, progress: bool = False) -> QuerySet:
    """Encode a split's gallery, its references and its validation captions once.

    ``image_feats`` reuses already-computed image features ({name: (D,)}) where present,
    e.g. when only the text encoder changed between two validations.
    """
    wanted = list(dict.fromkeys([*ds.image_names, *(t.reference for t in ds.triplets)]))
    feats = dict(image_feats or {})
    missing = [n for n in wanted if n not in feats]
    if missing:
        feats.update(encode_names(clip, missing, ds.image_path, batch_size=batch_size, num_workers=num_workers,
                                  progress=progress, desc=f"{ds.category or ds.dataset} images"))
    captions = [query_captions(t, train=False)[0] for t in ds.triplets]
    text = encode_texts(clip, captions, progress=progress, desc="captions")
    return QuerySet(name=ds.category or ds.dataset, dataset=ds.dataset,
                    gallery_feats=torch.stack([feats[n] for n in ds.image_names]),
                    gallery_names=list(ds.image_names),
                    ref_feats=torch.stack([feats[t.reference] for t in ds.triplets]),
                    text_feats=text, triplets=list(ds.triplets))


@torch.no_grad()
def compose_queries(composer: Composer, ref_feats: torch.Tensor, text_feats: torch.Tensor, *,
                    device: str | torch.device = "cpu", chunk: int = 2048) -> torch.Tensor:
    """Normalised query features (Q, D) float32, composed in chunks on ``device``."""
    out = []
    for start in range(0, ref_feats.shape[0], chunk):
        ref = ref_feats[start:start + chunk].to(device)
        txt = text_feats[start:start + chunk].to(device)
        out.append(composer(ref, txt).float())
    return torch.cat(out) if out else torch.empty(0, ref_feats.shape[1])


def query_set_from_features(clip: ClipModel, ds: CIRDataset, gallery, *, name: Optional[str] = None,
                            batch_size: int = 256) -> QuerySet:
    """A QuerySet over a resident ``Gallery``'s stored features (references read from it, never
    re-encoded); only the validation captions are encoded, with ``clip`` as loaded (fp32)."""
    rows = gallery.rows_of([t.reference for t in ds.triplets])
    captions = [query_captions(t, train=False)[0] for t in ds.triplets]
    raw = gallery.raw_features(torch.arange(len(gallery), device=gallery.device)).float().cpu()  # (N, D)
    return QuerySet(name=name or ds.category or ds.dataset, dataset=ds.dataset, gallery_feats=raw,
                    gallery_names=list(gallery.names), ref_feats=raw[rows.cpu()],
                    text_feats=encode_texts(clip, captions, batch_size=batch_size), triplets=list(ds.triplets))


def rank_query_set(qs: QuerySet, composer: Composer, *, device: str | torch.device = "cpu"):
    """(target ranks (Q,), CIRR subset ranks (Q,) or None, the protocol's summary) for one composer.

    The one code path behind ``eval``'s numbers and the app's validation browser: the summary is
    computed from exactly these ranks.
    """
    if not qs.has_targets:
        raise ValueError(f"{qs.name}: this split has no targets; use cirr_test_submission")
    queries = compose_queries(composer, qs.ref_feats, qs.text_feats, device=device)  # (Q, D)
    gallery = qs.unit_gallery(device)  # (N, D)
    targets = [t.target for t in qs.triplets]
    if qs.dataset == "fashioniq":
        ranks = metrics.fashioniq_ranks(queries, gallery, qs.gallery_names, targets)
        return ranks, None, metrics.fashioniq_summary(ranks)
    ranks, subset_ranks = metrics.cirr_ranks(queries, gallery, qs.gallery_names, [t.reference for t in qs.triplets],
                                             targets, [t.group for t in qs.triplets])
    return ranks, subset_ranks, metrics.cirr_summary(ranks, subset_ranks)


def score_query_set(qs: QuerySet, composer: Composer, *, device: str | torch.device = "cpu") -> dict:
    """The protocol's recalls (percent) for one composer on one encoded split."""
    return rank_query_set(qs, composer, device=device)[2]


def summarise(dataset: str, per_set: Mapping[str, dict]) -> dict:
    """Add the averages and the model-selection score the paper uses."""
    if dataset == "fashioniq":
        summary = metrics.average_fashioniq(per_set)
        summary["selection"] = summary["average"]["avg"] if "average" in summary else summary.get("avg")
        return summary
    (name, result), = per_set.items()
    return {**dict(per_set), "selection": result["mean"]}


def score_sets(sets: Sequence[QuerySet], composer: Composer, *, device: str | torch.device = "cpu") -> dict:
    """One composer on every encoded split of a dataset, with averages and the selection score."""
    return summarise(sets[0].dataset, {qs.name: score_query_set(qs, composer, device=device) for qs in sets})


def load_eval_splits(root: str | Path, split: str, categories: Optional[Sequence[str]] = None) -> list[CIRDataset]:
    """The split's datasets: the FashionIQ categories asked for (default all), or the CIRR split."""
    if detect_layout(root) == "cirr":
        return [load_cirr(root, split)]
    return [load_fashioniq(root, c, split) for c in (categories or FASHIONIQ_CATEGORIES)]


def evaluate(clip: ClipModel, composers: Mapping[str, Composer], root: str | Path, *, split: str = "val",
             categories: Optional[Sequence[str]] = None, device: str = "cpu", batch_size: int = 64,
             num_workers: int = 0, progress: bool = False) -> dict:
    """{composer name: summary} on a dataset split; every composer sees the same features."""
    sets = [build_query_set(clip, ds, batch_size=batch_size, num_workers=num_workers, progress=progress)
            for ds in load_eval_splits(root, split, categories)]
    return {name: score_sets(sets, composer, device=device) for name, composer in composers.items()}
