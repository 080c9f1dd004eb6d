"""Result records the serving layer returns: plain dataclasses a front end turns into widgets or JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Hit:
    """One ranked gallery image: 1-based rank, name and cosine score."""
    rank: int
    name: str
    score: float


@dataclass
class SearchResult:
    """One composed query's answer.

    ``target_rank``: rank of ``target`` in the full ranking (beyond K too), None without a target.
    ``subset``: the given subset (CIRR's img_set minus the reference) ranked by the same scores.
    ``timings_ms``: per stage ("text", "image", "compose", "search", "extras", "total").
    ``protocol_rank``: with ``exclude_reference`` against the dataset's protocol (the app leaves a
    FashionIQ reference out of its own results), the rank the protocol (and ``eval``) gives.
    """
    hits: list[Hit]
    composer: str
    lam: Optional[float] = None
    timings_ms: dict = field(default_factory=dict)
    target: Optional[str] = None
    target_rank: Optional[int] = None
    subset: list[Hit] = field(default_factory=list)
    protocol_rank: Optional[int] = None  # the target's rank under the dataset's protocol, where the
    #                                      search left the reference out and the protocol keeps it

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Explanation:
    """Why one hit ranks where it does (``cir_demo.serve.explain``).

    ``heat``: (h, w) cosine of each location of the hit's image with the composed query, over
    ``view`` (the S x S picture the model saw); ``words``: (word, how much less the hit wins over
    the reference without it) in caption order; ``score``: the hit's score for the full query; ``ms``: time taken.
    """
    hit: str
    score: float
    heat: list
    words: list
    view: object = field(default=None, repr=False)
    ms: float = 0.0

    def to_dict(self) -> dict:
        return {"hit": self.hit, "score": self.score, "heatmap": self.heat,
                "grid": [len(self.heat), len(self.heat[0]) if self.heat else 0],
                "words": [{"word": w, "delta": d} for w, d in self.words], "ms": self.ms}


@dataclass(frozen=True)
class GalleryInfo:
    """What a front end needs to list a gallery."""
    name: str
    bundle: str
    dataset: Optional[str]       # "fashioniq" | "cirr" | None (a plain image folder)
    split: Optional[str]
    category: Optional[str]
    count: int
    triplets: int                # known (validation) triplets with targets
    exclude_reference: bool      # CIRR protocol: the reference is not ranked
    label: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Page:
    """One page of a gallery's image names."""
    names: list[str]
    page: int                    # 1-based
    pages: int
    total: int


@dataclass(frozen=True)
class TripletRank:
    """A known triplet with its target's rank under one composer (and its subset rank for CIRR)."""
    index: int
    reference: str
    caption: str
    target: str
    rank: Optional[int]                   # as ``search`` reports it (None: the target cannot be ranked)
    subset_rank: Optional[int] = None
    pair_id: Optional[int] = None
    reference_rank: Optional[int] = None  # eval's fp32 rank, when the bundle serves a reduced precision


@dataclass
class SplitRanks:
    """Every known triplet of a gallery ranked in one batch, and the protocol's summary figures."""
    gallery: str
    composer: str
    rows: list[TripletRank]
    summary: dict                # FashionIQ {"R@10", "R@50"}; CIRR {"R@1", ..., "Rs@3", "mean", "avg"}
    reference_summary: Optional[dict] = None  # eval's fp32 figures, when they may differ from the served ones
