"""Named API endpoints (``gradio_client``): the library's answers as plain JSON, one per user action.

Registered inside the Blocks with ``gr.api``; each raises ``gr.Error`` with a clear message on bad
input. Signatures (also in the README):

* ``galleries() -> list[dict]``
* ``page(gallery, page=1, per_page=24) -> {"names", "page", "pages", "total"}``
* ``random_reference(gallery) -> {"reference", "captions"}``
* ``captions(gallery, reference) -> list[str]``
* ``search(gallery, reference, caption, k=50, composer="combiner") -> SearchResult as a dict``
* ``compare(gallery, reference, caption, k=10) -> {composer: SearchResult as a dict}``
* ``why(gallery, reference, caption, hit, composer="combiner") -> {"hit", "score", "heatmap", "grid", "words", "ms"}``
* ``browse(gallery, composer="combiner", outcome="all", hit_at=10, words="", sort="worst first",
  rank_min=None, rank_max=None) -> {"summary", "headers", "rows"}``
"""

from __future__ import annotations

from typing import Optional

import gradio as gr

from cir_demo.serve.catalog import Catalog
from cir_demo.ui.browse import browse as browse_rows
from cir_demo.ui.guard import HEAVY
from cir_demo.ui.handlers import user_facing


def register(catalog: Catalog) -> None:
    """Add the endpoints to the Blocks being built (call inside ``with gr.Blocks()``); ``catalog``
    is the one the page uses (wrapped for ZeroGPU where that applies)."""

    @user_facing
    def galleries() -> list:
        """Every gallery: name, bundle, dataset, split, category, image and triplet counts."""
        return [g.to_dict() for g in catalog.galleries()]

    @user_facing
    def page(gallery: str, page: int = 1, per_page: int = 24) -> dict:
        """One page of a gallery's image names."""
        p = catalog.page(gallery, page, per_page)
        return {"names": p.names, "page": p.page, "pages": p.pages, "total": p.total}

    @user_facing
    def random_reference(gallery: str) -> dict:
        """A random reference (one with known triplets when the gallery has any) and its captions."""
        name = catalog.random_reference(gallery)
        return {"reference": name, "captions": catalog.suggestions(gallery, name)}

    @user_facing
    def captions(gallery: str, reference: str) -> list:
        """The dataset's captions for a reference image (as the evaluation phrases them)."""
        catalog.image_path(gallery, reference)  # refuses a name the gallery does not hold
        return catalog.suggestions(gallery, reference)

    @user_facing
    def search(gallery: str, reference: str, caption: str, k: int = 50, composer: str = "combiner") -> dict:
        """Top-K for a gallery reference + caption; a known triplet's target rank and group are filled in."""
        return catalog.search(gallery, reference=reference, caption=caption, k=k, composer=composer).to_dict()

    @user_facing
    def compare(gallery: str, reference: str, caption: str, k: int = 10) -> dict:
        """The same query under every composer the bundle has (Combiner, sum, image only, text only)."""
        results = catalog.compare(gallery, reference=reference, caption=caption, k=k)
        return {name: result.to_dict() for name, result in results.items()}

    @user_facing
    def browse(gallery: str, composer: str = "combiner", outcome: str = "all", hit_at: int = 10,
               words: str = "", sort: str = "worst first", rank_min: Optional[int] = None,
               rank_max: Optional[int] = None) -> dict:
        """Every validation triplet with its target's rank (filtered, sorted) and the summary figures."""
        _, headers, body = browse_rows(catalog, gallery, composer, outcome=outcome, hit_at=hit_at, words=words,
                                       sort=sort, rank_min=rank_min, rank_max=rank_max)
        return {"summary": catalog.rank_split(gallery, composer).summary, "headers": headers, "rows": body}

    @user_facing
    def why(gallery: str, reference: str, caption: str, hit: str, composer: str = "combiner") -> dict:
        """Why ``hit`` ranks where it does for this query: a heat map over the hit (where it agrees
        with the composed query) and each caption word's effect on its score."""
        return catalog.explain(gallery, reference=reference, caption=caption, hit=hit, composer=composer).to_dict()

    for fn in (galleries, page, random_reference, captions, search, compare, why):
        gr.api(fn, api_name=fn.__name__, concurrency_id="light", concurrency_limit=2)
    gr.api(browse, api_name="browse", concurrency_id=HEAVY, concurrency_limit=1)  # a batch pass when cold
