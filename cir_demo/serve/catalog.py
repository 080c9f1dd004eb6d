"""The catalog: what a front end (the app, a script) sees of a deployment, without any UI code.

A catalog holds one or more bundles (an ``Engine``: one CLIP + Combiner with the galleries it
built) and routes every gallery name to its own bundle, so a FashionIQ gallery is always answered
with the FashionIQ checkpoint and a CIRR one with the CIRR checkpoint. Per gallery it lists and
pages images, picks a random reference, offers the dataset's captions for a reference, knows the
validation triplets (ground truth: the target, CIRR's group), resolves an image name to its file
(names only: no path from outside ever reaches the file system), runs queries with the ground
truth filled in, and ranks every known triplet in one batch through the same code as ``eval``.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from PIL import Image

from cir_demo.data.records import Triplet, query_captions
from cir_demo.index import GalleryIndex
from cir_demo.pipeline.encode import open_upload
from cir_demo.serve.checks import MAX_NAME_CHARS, QueryError, choice, image_name, whole
from cir_demo.serve.engine import Engine
from cir_demo.serve.results import GalleryInfo, Page, SearchResult, SplitRanks, TripletRank

log = logging.getLogger(__name__)

MAX_PER_PAGE = 200


def _summary(metrics, ranks: list, subset_ranks: Optional[list]) -> dict:
    """The protocol's figures from served ranks (a missing rank counts as a miss)."""
    worst = 10 ** 9
    ranks_t = torch.tensor([worst if r is None else r for r in ranks])
    if subset_ranks is None:
        return metrics.fashioniq_summary(ranks_t)
    return metrics.cirr_summary(ranks_t, torch.tensor([worst if r is None else r for r in subset_ranks]))


def normalise_caption(caption: str) -> str:
    """How captions are compared when matching a query to a known triplet."""
    return " ".join(str(caption).split()).strip(".?, ").lower()


@dataclass
class _GalleryRecord:
    info: GalleryInfo
    engine: Engine
    dataset: object = None                    # CIRDataset, when the gallery is a dataset split
    image_root: Optional[Path] = None         # plain folders: names are paths relative to it
    triplets: list[Triplet] = field(default_factory=list)
    by_reference: dict[str, list[int]] = field(default_factory=dict)
    ranks: dict[str, SplitRanks] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # this gallery's batch ranks, made once
    curated: dict = field(default_factory=dict)


class Catalog:
    """Galleries of one or more bundles, by name; every method raises ``QueryError`` on bad input."""

    def __init__(self, *, title: str = "Composed image retrieval", public_url: Optional[str] = None):
        self.title, self.public_url = title, public_url
        self.bundles: dict[str, Engine] = {}
        self._galleries: dict[str, _GalleryRecord] = {}

    # ---- building -------------------------------------------------------------------------
    def add_bundle(self, engine: Engine) -> Engine:
        if engine.name in self.bundles and self.bundles[engine.name] is not engine:
            raise ValueError(f"a bundle named {engine.name!r} is already in the catalog")
        self.bundles[engine.name] = engine
        return engine

    def add_gallery(self, bundle: str, name: str, index: GalleryIndex, *, dataset=None,
                    exclude_reference: Optional[bool] = None, label: Optional[str] = None) -> GalleryInfo:
        """Serve ``index`` as gallery ``name`` with bundle ``bundle``'s model (refused if it did not build it)."""
        if name in self._galleries:
            raise ValueError(f"a gallery named {name!r} is already in the catalog")
        engine = self.bundles[bundle]
        entry = engine.add_gallery(name, index, exclude_reference=exclude_reference, dataset=dataset)
        triplets = [t for t in (dataset.triplets if dataset is not None else []) if t.target is not None]
        info = GalleryInfo(name=name, bundle=bundle, dataset=getattr(dataset, "dataset", None) or
                           index.manifest.get("dataset"), split=getattr(dataset, "split", None),
                           category=getattr(dataset, "category", None), count=len(entry.gallery),
                           triplets=len(triplets), exclude_reference=entry.exclude_reference,
                           label=label or name)
        root = index.manifest.get("image_root")
        record = _GalleryRecord(info, engine, dataset, Path(root) if root and dataset is None else None, triplets)
        for i, t in enumerate(triplets):
            record.by_reference.setdefault(t.reference, []).append(i)
        self._galleries[name] = record
        return info

    def warm_up(self) -> None:
        """One query per bundle (and one image encoding), so the first visitor does not pay for lazy set-up."""
        for engine in self.bundles.values():
            gallery = next((name for name in engine.galleries), None)
            if gallery is None:
                continue
            reference = self.names(gallery)[0]
            for composer in engine.composers:
                engine.search(gallery, reference=reference, caption="warm up", k=1, composer=composer)
            engine.image_features(Image.new("RGB", (32, 32)))

    # ---- listing --------------------------------------------------------------------------
    def galleries(self) -> list[GalleryInfo]:
        return [r.info for r in self._galleries.values()]

    def info(self, gallery: str) -> GalleryInfo:
        return self._record(gallery).info

    def engine_for(self, gallery: str) -> Engine:
        return self._record(gallery).engine

    def names(self, gallery: str) -> list[str]:
        record = self._record(gallery)
        return record.engine.galleries[gallery].gallery.names

    def page(self, gallery: str, page: int = 1, per_page: int = 24) -> Page:
        """Names on 1-based ``page`` (clamped into range) of ``per_page`` (1..MAX_PER_PAGE)."""
        names = self.names(gallery)
        per_page = whole(per_page, "images per page", 1, MAX_PER_PAGE)
        pages = max(1, math.ceil(len(names) / per_page))
        page = min(max(whole(page, "page", -10 ** 9, 10 ** 9), 1), pages)
        start = (page - 1) * per_page
        return Page(names[start:start + per_page], page, pages, len(names))

    def has_image(self, gallery: str, name: str) -> bool:
        row_of = self._record(gallery).engine.galleries[gallery].gallery.row_of
        return isinstance(name, str) and len(name) <= MAX_NAME_CHARS and name in row_of

    def image_path(self, gallery: str, name: str) -> Path:
        """The file of gallery image ``name``; only names in the gallery resolve (no paths from outside)."""
        record = self._record(gallery)
        image_name(name, record.engine.galleries[gallery].gallery.row_of, gallery)
        if record.dataset is not None:
            return Path(record.dataset.image_path(name))
        if record.image_root is None:
            raise QueryError(f"gallery {gallery!r} has no image files (features only)")
        return record.image_root / name

    def image_roots(self) -> list[Path]:
        """Every folder that holds gallery images (what a web server may serve, and nothing else)."""
        roots = set()
        for record in self._galleries.values():
            if record.dataset is not None:
                names = record.engine.galleries[record.info.name].gallery.names
                roots.update(Path(record.dataset.image_path(n)).parent.resolve() for n in names)
            elif record.image_root is not None:
                roots.add(record.image_root.resolve())
        return sorted(roots)

    def open_upload(self, gallery: str, data: bytes) -> Image.Image:
        """An uploaded photo (its bytes) as an upright RGB image, decoded at about the size
        ``gallery``'s model needs (``cir_demo.pipeline.encode.open_upload``: formats, scans and
        pixels are checked before any pixel is decoded); a bad file raises ``ImageReadError``."""
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise QueryError("the uploaded file is empty: it holds no image")
        return open_upload(bytes(data), min_side=self.engine_for(gallery).clip.image_size)

    def upload_features(self, gallery: str, image: Image.Image) -> torch.Tensor:
        """Raw features (1, D) on the CPU of an uploaded image, by ``gallery``'s model."""
        return self.engine_for(gallery).image_features(image).cpu()

    def encode_upload(self, gallery: str, data: bytes) -> torch.Tensor:
        """``upload_features`` of ``open_upload(data)``."""
        return self.upload_features(gallery, self.open_upload(gallery, data))

    def open_image(self, gallery: str, name: str) -> Image.Image:
        with Image.open(self.image_path(gallery, name)) as image:
            return image.convert("RGB")

    # ---- references, captions, ground truth ------------------------------------------------
    def random_reference(self, gallery: str, *, rng: Optional[random.Random] = None,
                         with_triplet: bool = True) -> str:
        """A random image; with ``with_triplet`` one that is the reference of a known triplet when any is."""
        record, rng = self._record(gallery), rng or random.Random()
        pool = sorted(record.by_reference) if with_triplet and record.by_reference else self.names(gallery)
        for _ in range(8):  # a gallery in Milvus may have unused rows (files that failed to decode)
            try:
                return pool[rng.randrange(len(pool))]
            except IndexError:
                continue
        raise QueryError(f"gallery {gallery!r} has no images to draw from")

    def triplets_for(self, gallery: str, reference: str) -> list[Triplet]:
        """The known (validation) triplets whose reference is ``reference``."""
        record = self._record(gallery)
        return [record.triplets[i] for i in record.by_reference.get(reference, [])]

    def suggestions(self, gallery: str, reference: str) -> list[str]:
        """The dataset's captions for ``reference``, as the evaluation phrases them (FashionIQ: "C1 and c2")."""
        return list(dict.fromkeys(query_captions(t, train=False)[0] for t in self.triplets_for(gallery, reference)))

    def find_triplet(self, gallery: str, reference: str, caption: str) -> Optional[Triplet]:
        """The known triplet this query is, if any: same reference, same caption up to case/spacing."""
        wanted = normalise_caption(caption)
        for t in self.triplets_for(gallery, reference):
            if any(normalise_caption(c) == wanted for c in [query_captions(t, train=False)[0], *t.captions]):
                return t
        return None

    @staticmethod
    def query_caption(triplet: Triplet) -> str:
        """The caption a search for ``triplet`` uses (as the evaluation phrases it)."""
        return query_captions(triplet, train=False)[0]

    def curated(self, gallery: str, *, max_chars: int = 70, **search_options) -> Optional[tuple[str, str]]:
        """(reference, caption) of a validation triplet this gallery's model answers with its target
        first (short captions preferred; in triplet order, so every visitor sees the same one), or
        the best answered of the first few; None for a gallery without triplets. Cached."""
        record = self._record(gallery)
        if not record.triplets:
            return None
        key = repr(sorted(search_options.items()))
        if key not in record.curated:
            best = None
            for i, t in enumerate(record.triplets[:200]):
                caption = self.query_caption(t)
                if len(caption) > max_chars:
                    continue
                rank = self.search(gallery, reference=t.reference, caption=caption, k=1,
                                   **search_options).target_rank or 10 ** 9
                if best is None or rank < best[0]:
                    best = (rank, t.reference, caption)
                if rank == 1:
                    break
            t = record.triplets[0]
            record.curated[key] = best[1:] if best else (t.reference, self.query_caption(t))
        return record.curated[key]

    def triplet(self, gallery: str, index: int) -> Triplet:
        record = self._record(gallery)
        index = whole(index, "triplet index", 0, max(0, len(record.triplets) - 1))
        if not record.triplets:
            raise QueryError(f"gallery {gallery!r} has no known triplets")
        return record.triplets[index]

    # ---- queries --------------------------------------------------------------------------
    def search(self, gallery: str, *, reference: Union[str, Image.Image], caption: str, k: int = 50,
               composer: str = "combiner", target: Optional[str] = None, **kwargs) -> SearchResult:
        """One query; for a known triplet (gallery reference + its caption) the target's rank and,
        for CIRR, the group ranking are filled in unless ``target`` is given."""
        engine = self.engine_for(gallery)
        extra = self._ground_truth(gallery, reference, caption, target)
        return engine.search(gallery, reference=reference, caption=caption, k=k, composer=composer,
                             **extra, **kwargs)

    def compare(self, gallery: str, *, reference: Union[str, Image.Image, None], caption: str, k: int = 50,
                composers: Optional[Sequence[str]] = None, target: Optional[str] = None,
                **kwargs) -> dict[str, SearchResult]:
        """The same query under several composers (default: all the bundle has); ``kwargs`` as for
        ``Engine.compare`` (e.g. ``upload_features`` with ``reference=None``)."""
        engine = self.engine_for(gallery)
        extra = self._ground_truth(gallery, reference, caption, target)
        return engine.compare(gallery, reference=reference, caption=caption, k=k, composers=composers,
                              **extra, **kwargs)

    def explain(self, gallery: str, *, reference, caption: str, hit: str, composer: str = "combiner",
                upload_features: Optional[torch.Tensor] = None):
        """Why ``hit`` ranks where it does for this query: heat map and word weights (``Explanation``)."""
        from cir_demo.serve.explain import explain

        with Image.open(self.image_path(gallery, hit)) as image:
            picture = image.convert("RGB")
        return explain(self.engine_for(gallery), gallery, reference=reference, caption=caption, hit=hit,
                       hit_image=picture, composer=composer, upload_features=upload_features)

    def _ground_truth(self, gallery: str, reference, caption, target: Optional[str]) -> dict:
        if target is not None:
            return {"target": target}
        if not isinstance(reference, str) or not isinstance(caption, str):
            return {}
        known = self.find_triplet(gallery, reference, caption)
        if known is None:
            return {}
        return {"target": known.target, "subset": list(known.group) or None}

    # ---- the validation browser -----------------------------------------------------------
    def rank_split(self, gallery: str, composer: str = "combiner") -> SplitRanks:
        """Every known triplet with its target's rank, cached per (gallery, composer).

        Each query is made exactly as ``search`` makes it (``Engine.rank_known``), so the rank
        listed for a triplet is the rank a search for it shows. When the bundle serves a reduced
        precision (``not engine.exact``), eval's own fp32 ranks and figures come along
        (``reference_rank``, ``reference_summary``): they may differ by a little.
        """
        record = self._record(gallery)
        engine = record.engine
        engine._composer(composer)  # validates the name
        if not record.triplets:
            raise QueryError(f"gallery {gallery!r} has no known triplets to rank")
        if composer in record.ranks:
            return record.ranks[composer]
        with record.lock:  # one gallery's cold pass does not hold up another's
            if composer not in record.ranks:
                record.ranks[composer] = self._rank_split(record, gallery, composer)
            return record.ranks[composer]

    def _rank_split(self, record: _GalleryRecord, gallery: str, composer: str) -> SplitRanks:
        from cir_demo.eval import metrics

        engine, triplets = record.engine, record.triplets
        captions = [query_captions(t, train=False)[0] for t in triplets]
        cirr = record.info.dataset == "cirr"
        ranks, subset_ranks = engine.rank_known(gallery, [t.reference for t in triplets], captions,
                                                [t.target for t in triplets], composer=composer,
                                                subsets=[t.group for t in triplets] if cirr else None)
        summary = _summary(metrics, ranks, subset_ranks)
        reference, reference_summary = [None] * len(triplets), None
        if not engine.exact:
            reference, reference_subset, reference_summary = self._eval_ranks(record, gallery, composer)
        rows = [TripletRank(i, t.reference, c, t.target, r, None if subset_ranks is None else subset_ranks[i],
                            t.pair_id, reference_rank=reference[i])
                for i, (t, c, r) in enumerate(zip(triplets, captions, ranks))]
        return SplitRanks(gallery, composer, rows, summary, reference_summary=reference_summary)

    def _eval_ranks(self, record: _GalleryRecord, gallery: str, composer: str):
        """eval's fp32 ranks of the same triplets (its own batched code path)."""
        from cir_demo.eval.protocol import query_set_from_features, rank_query_set

        engine = record.engine
        qs = query_set_from_features(engine.clip, record.dataset, engine.galleries[gallery].gallery, name=gallery)
        ranks, subset_ranks, summary = rank_query_set(qs, engine.reference_composer(composer))
        return ranks.tolist(), None if subset_ranks is None else subset_ranks.tolist(), summary

    # ---- helpers --------------------------------------------------------------------------
    def _record(self, gallery: str) -> _GalleryRecord:
        return self._galleries[choice(gallery, self._galleries, "gallery", self._galleries)]


