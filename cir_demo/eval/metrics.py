"""The paper's evaluation protocol on features: FashionIQ and CIRR recalls, CIRR test submissions.

Inputs are L2-normalised query features (Q, D) and gallery features (N, D) (CPU or CUDA; scored
in fp32, blocked over queries so Q~10k x N~100k stays within a few hundred MB) plus names.
Recalls are percentages. Rankings follow the one tie rule of `cir_demo.index.kernels`: score
descending, then gallery row ascending, so a rank is 1 + the rows scoring higher + the rows
scoring the same with a lower gallery row (the original sorts with argsort, which breaks exact
ties arbitrarily). Subset rankings and the submission lists use the same order. Scores are one
fp32 GEMM per query block, and ties are exact equalities of those scores.

Reference behaviour (CLIP4Cir `validate.py`, `cirr_test_submission.py`):
* FashionIQ: the reference image stays in the gallery; Recall@10/50 per category; model
  selection uses (mean R@10 + mean R@50) / 2 over the categories (`average_fashioniq` "avg").
* CIRR: the reference is removed from its own ranking; Recall@{1,5,10,50}; Recall_subset@{1,2,3}
  ranks the target among the query's img_set members minus the reference. CLIP4Cir keeps the
  best model by the arithmetic mean of these 7 numbers ("mean"; it also saves the harmonic and
  geometric means' best); the CIRR leaderboard's "Avg" is (R@5 + Rs@1) / 2 ("avg").
"""

from __future__ import annotations

import logging
import math
import statistics
from typing import Any, Iterable, Mapping, Sequence

import torch

from cir_demo.index import kernels as K

logger = logging.getLogger(__name__)

CIRR_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)


def _rows(names: Iterable[str], row_of: Mapping[str, int], what: str, device) -> torch.Tensor:
    try:
        return torch.tensor([row_of[n] for n in names], dtype=torch.long, device=device)
    except KeyError as err:
        raise ValueError(f"{what} {err.args[0]!r} is not in the gallery") from None


def _prepare(query_feats: torch.Tensor, gallery_feats: torch.Tensor, gallery_names: Sequence[str],
             n_per_query: Mapping[str, int]) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    if query_feats.ndim != 2 or gallery_feats.ndim != 2 or query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f"need (Q, D) queries and (N, D) gallery, got {tuple(query_feats.shape)} "
                         f"and {tuple(gallery_feats.shape)}")
    if len(gallery_names) != gallery_feats.shape[0]:
        raise ValueError(f"{len(gallery_names)} gallery names for {gallery_feats.shape[0]} gallery rows")
    for what, n in n_per_query.items():
        if n != query_feats.shape[0]:
            raise ValueError(f"{n} {what} for {query_feats.shape[0]} queries")
    row_of = {name: i for i, name in enumerate(gallery_names)}
    if len(row_of) != len(gallery_names):
        raise ValueError("gallery names must be unique")
    gallery = gallery_feats.float()  # (N, D) fp32
    return query_feats.to(gallery.device, torch.float32), gallery, row_of


def recall_at(ranks: torch.Tensor, k: int) -> float:
    """Percentage of 1-based ranks that are <= k."""
    return 100.0 * int((ranks <= k).sum()) / ranks.numel()


def fashioniq_ranks(query_feats: torch.Tensor, gallery_feats: torch.Tensor, gallery_names: Sequence[str],
                    target_names: Sequence[str]) -> torch.Tensor:
    """1-based rank (Q,) of each query's target in its FashionIQ ranking (the reference is NOT removed)."""
    q, g, row_of = _prepare(query_feats, gallery_feats, gallery_names, {"target names": len(target_names)})
    return K.exact_ranks(q, g, _rows(target_names, row_of, "target", g.device))  # (Q,)


def fashioniq_summary(ranks: torch.Tensor, ks: Sequence[int] = (10, 50)) -> dict[str, float]:
    """{"R@10": ..., "R@50": ...} (percent; one key per k in ks) from target ranks."""
    return {f"R@{k}": recall_at(ranks, k) for k in ks}


def fashioniq_recalls(query_feats: torch.Tensor, gallery_feats: torch.Tensor, gallery_names: Sequence[str],
                      target_names: Sequence[str], ks: Sequence[int] = (10, 50)) -> dict[str, float]:
    """FashionIQ Recall@k (percent) for one category; the reference is NOT removed.

    Returns {"R@10": ..., "R@50": ...} (one key per k in ks).
    """
    return fashioniq_summary(fashioniq_ranks(query_feats, gallery_feats, gallery_names, target_names), ks)


def average_fashioniq(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Add the average over categories: returns {**per_category, "average": {...}}.

    "average" holds the mean of every recall key shared by all categories (e.g. "R@10",
    "R@50") and "avg", the mean of those means: CLIP4Cir's model-selection number.
    """
    if not per_category:
        raise ValueError("no categories to average")
    keys = [k for k in next(iter(per_category.values())) if all(k in m for m in per_category.values())]
    average = {k: statistics.fmean(m[k] for m in per_category.values()) for k in keys}
    average["avg"] = statistics.fmean(average.values())
    return {**{cat: dict(m) for cat, m in per_category.items()}, "average": average}


def _group_rows(groups: Sequence[Sequence[str]], reference_names: Sequence[str], row_of: Mapping[str, int],
                device) -> torch.Tensor:
    """(Q, G) rows of each query's group minus its reference (deduplicated; -1 pads)."""
    lists = []
    for members, ref in zip(groups, reference_names):
        kept = list(dict.fromkeys(m for m in members if m != ref))
        lists.append(_rows(kept, row_of, "group member", "cpu").tolist())
    width = max(1, max(len(r) for r in lists))
    return torch.tensor([r + [-1] * (width - len(r)) for r in lists], dtype=torch.long, device=device)


def _cirr_blocks(q: torch.Tensor, g: torch.Tensor, ref_rows: torch.Tensor, members: torch.Tensor):
    """Yield (a, b, scores (B, N) with the reference at -inf, member scores (B, G) with pads at -inf)."""
    for a, b in K.query_blocks(q.shape[0], g.shape[0]):
        scores = K.mask_rows(q[a:b] @ g.T, ref_rows[a:b])  # (B, N)
        m = members[a:b]
        member_scores = scores.gather(1, m.clamp_min(0)).masked_fill(m < 0, float("-inf"))  # (B, G)
        yield a, b, scores, member_scores


def cirr_ranks(query_feats: torch.Tensor, gallery_feats: torch.Tensor, gallery_names: Sequence[str],
               reference_names: Sequence[str], target_names: Sequence[str],
               groups: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(global ranks (Q,), subset ranks (Q,)) of each query's target, the reference removed.

    groups[q] are the img_set members of query q (6 in CIRR, reference included); the subset
    rank is the target's rank among them minus the reference.
    """
    counts = {"reference names": len(reference_names), "target names": len(target_names), "groups": len(groups)}
    q, g, row_of = _prepare(query_feats, gallery_feats, gallery_names, counts)
    refs = _rows(reference_names, row_of, "reference", g.device)
    targets = _rows(target_names, row_of, "target", g.device)
    if bool((refs == targets).any()):
        raise ValueError("a query's target is its own reference")
    members = _group_rows(groups, reference_names, row_of, g.device)  # (Q, G)
    in_group = (members == targets[:, None]).any(dim=1)
    if not bool(in_group.all()):
        bad = int(torch.nonzero(~in_group)[0])
        raise ValueError(f"target {target_names[bad]!r} of query {bad} is not in its group {list(groups[bad])}")
    ranks, subset_ranks = [], []
    for a, b, scores, member_scores in _cirr_blocks(q, g, refs, members):
        t = targets[a:b]
        target = scores.gather(1, t[:, None])[:, 0]  # (B,)
        ranks.append(K.rank_among(scores, target, t))
        subset_ranks.append(K.rank_among(member_scores, target, t, members[a:b]))
    return torch.cat(ranks), torch.cat(subset_ranks)


def cirr_summary(ranks: torch.Tensor, subset_ranks: torch.Tensor) -> dict[str, float]:
    """CIRR's figures (percent) from target ranks: "R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3",
    "mean" (arithmetic mean of those 7, CLIP4Cir's selection number), "harmonic_mean",
    "geometric_mean" and "avg" = (R@5 + Rs@1) / 2 (the leaderboard's)."""
    out = {f"R@{k}": recall_at(ranks, k) for k in CIRR_KS}
    out.update({f"Rs@{k}": recall_at(subset_ranks, k) for k in CIRR_SUBSET_KS})
    values = list(out.values())
    out["mean"] = statistics.fmean(values)
    out["harmonic_mean"] = 0.0 if min(values) <= 0 else statistics.harmonic_mean(values)
    out["geometric_mean"] = 0.0 if min(values) <= 0 else math.exp(statistics.fmean(map(math.log, values)))
    out["avg"] = (out["R@5"] + out["Rs@1"]) / 2
    return out


def cirr_recalls(query_feats: torch.Tensor, gallery_feats: torch.Tensor, gallery_names: Sequence[str],
                 reference_names: Sequence[str], target_names: Sequence[str],
                 groups: Sequence[Sequence[str]]) -> dict[str, float]:
    """CIRR validation metrics (percent), the reference removed from each ranking (see ``cirr_summary``)."""
    return cirr_summary(*cirr_ranks(query_feats, gallery_feats, gallery_names, reference_names, target_names,
                                    groups))


def cirr_submission(query_feats: torch.Tensor, gallery_feats: torch.Tensor, gallery_names: Sequence[str],
                    reference_names: Sequence[str], pair_ids: Sequence[Any], groups: Sequence[Sequence[str]],
                    version: str = "rc2", top_k: int = 50, subset_k: int = 3) -> tuple[dict, dict]:
    """CIRR test-server predictions: ({"version", "metric": "recall", "<pairid>": [top-50 names]},
    {"version", "metric": "recall_subset", "<pairid>": [top-3 names of group minus reference]}).

    The reference is removed from both rankings, as in CLIP4Cir's cirr_test_submission.py; both
    lists are in ranking order (score descending, then gallery row ascending).
    """
    counts = {"reference names": len(reference_names), "pair ids": len(pair_ids), "groups": len(groups)}
    q, g, row_of = _prepare(query_feats, gallery_feats, gallery_names, counts)
    refs = _rows(reference_names, row_of, "reference", g.device)
    members = _group_rows(groups, reference_names, row_of, g.device)  # (Q, G)
    keys = [p if isinstance(p, str) else str(int(p)) for p in pair_ids]
    if len(set(keys)) != len(keys):
        raise ValueError("pair ids must be unique")
    k = K.check_k(top_k, g.shape[0], excluding=True)
    recall = {"version": version, "metric": "recall"}
    subset = {"version": version, "metric": "recall_subset"}
    for a, b, scores, member_scores in _cirr_blocks(q, g, refs, members):
        top = K.topk_by_rule(scores, k)[1].cpu().tolist()  # (B, k)
        ranked = K.order_by_rule(member_scores, members[a:b])[1].cpu().tolist()  # (B, G), pads last
        for i, key in enumerate(keys[a:b]):
            recall[key] = [gallery_names[r] for r in top[i]]
            subset[key] = [gallery_names[r] for r in ranked[i] if r >= 0][:subset_k]
    return recall, subset
