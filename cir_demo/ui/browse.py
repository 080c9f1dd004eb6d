"""The validation browser: every known triplet with its target's rank, filtered and sorted."""

from __future__ import annotations

from typing import Optional

from cir_demo.serve.catalog import Catalog
from cir_demo.serve.results import SplitRanks, TripletRank

OUTCOMES = ("all", "hits", "misses")
SORTS = ("worst first", "best first", "triplet order")
HEADERS = ["#", "rank", "reference", "target", "caption"]


def filter_rows(ranks: SplitRanks, *, outcome: str = "all", hit_at: int = 10, rank_min: Optional[int] = None,
                rank_max: Optional[int] = None, words: str = "", sort: str = "worst first") -> list[TripletRank]:
    """The triplets that pass every filter, in the chosen order (ties by triplet order)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}")
    if isinstance(hit_at, bool) or not isinstance(hit_at, int) or hit_at < 1:
        raise ValueError(f"hit_at must be a whole number >= 1, got {hit_at!r}")
    wanted = [w for w in (words or "").lower().split() if w]
    rows = []
    for row in ranks.rows:
        rank = row.rank if row.rank is not None else 10 ** 9
        if outcome == "hits" and rank > hit_at or outcome == "misses" and rank <= hit_at:
            continue
        if rank_min is not None and rank < rank_min or rank_max is not None and rank > rank_max:
            continue
        if wanted and not all(w in row.caption.lower() for w in wanted):
            continue
        rows.append(row)
    def rank(r: TripletRank) -> int:
        return r.rank if r.rank is not None else 10 ** 9
    if sort == "worst first":
        rows.sort(key=lambda r: (-rank(r), r.index))
    elif sort == "best first":
        rows.sort(key=lambda r: (rank(r), r.index))
    return rows


def table(ranks: SplitRanks, rows: list[TripletRank]) -> tuple[list[str], list[list]]:
    """(headers, rows) for a data frame; CIRR adds the rank within the reference's group, and a
    bundle served in reduced precision adds eval's fp32 rank beside the served one."""
    subset = any(r.subset_rank is not None for r in ranks.rows)
    reference = ranks.reference_summary is not None
    headers = HEADERS[:2] + (["fp32 rank"] if reference else []) + (["group rank"] if subset else []) + HEADERS[2:]
    body = [[r.index, r.rank] + ([r.reference_rank] if reference else []) + ([r.subset_rank] if subset else [])
            + [r.reference, r.target, r.caption] for r in rows]
    return headers, body


def _figures(summary: dict) -> str:
    return " · ".join(f"{key} **{value:.2f}**" for key, value in summary.items()
                      if key.startswith("R") and isinstance(value, float))


def summary_markdown(ranks: SplitRanks, shown: int) -> str:
    """The protocol's figures (equal to ``eval``'s when served in fp32) and how many triplets the filters keep."""
    text = (f"**{ranks.gallery}**, {len(ranks.rows)} validation triplets, {ranks.composer}: "
            f"{_figures(ranks.summary)} — showing {shown}")
    if ranks.reference_summary is not None:
        text += (f"\n\nThis bundle serves a reduced precision on this machine, so ranks can differ a little from "
                 f"eval's fp32 figures: {_figures(ranks.reference_summary)} (the *fp32 rank* column).")
    return text


def browse(catalog: Catalog, gallery: str, composer: str = "combiner", **filters):
    """(summary markdown, headers, rows) of the validation browser."""
    ranks = catalog.rank_split(gallery, composer)
    rows = filter_rows(ranks, **filters)
    headers, body = table(ranks, rows)
    return summary_markdown(ranks, len(rows)), headers, body
