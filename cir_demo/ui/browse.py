"""The validation browser: every known triplet with its target's rank, filtered and sorted."""

from __future__ import annotations

from typing import Optional

from cir_demo.serve.catalog import Catalog
from cir_demo.serve.checks import QueryError, whole
from cir_demo.serve.results import SplitRanks, TripletRank

OUTCOMES = ("all", "hits", "misses")
SORTS = ("worst first", "best first", "triplet order")
HEADERS = ["#", "rank", "reference", "target", "caption"]


def filter_rows(ranks: SplitRanks, *, outcome: str = "all", hit_at: int = 10, rank_min: Optional[int] = None,
                rank_max: Optional[int] = None, words: str = "", sort: str = "worst first") -> list[TripletRank]:
    """The triplets that pass every filter, in the chosen order (ties by triplet order)."""
    if outcome not in OUTCOMES:
        raise QueryError(f"outcome must be one of {', '.join(OUTCOMES)}")
    if sort not in SORTS:
        raise QueryError(f"sort must be one of {', '.join(SORTS)}")
    hit_at = whole(hit_at, "hit_at", 1, 10 ** 9)
    rank_min = None if rank_min is None else whole(rank_min, "the lowest rank", 1, 10 ** 9)
    rank_max = None if rank_max is None else whole(rank_max, "the highest rank", 1, 10 ** 9)
    if not isinstance(words, (str, type(None))) or len(words or "") > 200:
        raise QueryError("the caption words must be text of at most 200 characters")
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


SHOWN_ROWS = 120  # thumbnails on the page; the filters narrow the rest down


def browse_view(catalog: Catalog, gallery: str, composer: str = "combiner", **filters):
    """(summary markdown, the rows the page shows: at most SHOWN_ROWS) of the validation browser."""
    ranks = catalog.rank_split(gallery, composer)
    rows = filter_rows(ranks, **filters)
    text = summary_markdown(ranks, len(rows))
    if len(rows) > SHOWN_ROWS:
        text += f" (the first {SHOWN_ROWS} here; narrow them with the filters)"
    return text, rows[:SHOWN_ROWS]


def browse(catalog: Catalog, gallery: str, composer: str = "combiner", **filters):
    """(summary markdown, headers, rows) of the validation browser, every row (the API's answer)."""
    ranks = catalog.rank_split(gallery, composer)
    rows = filter_rows(ranks, **filters)
    headers, body = table(ranks, rows)
    return summary_markdown(ranks, len(rows)), headers, body
