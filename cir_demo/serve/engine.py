"""The retrieval engine: one model (CLIP + Combiner) bound to the galleries it built -> ranked hits.

An engine is a bundle: a query can only ever meet the model that made its gallery, because
``add_gallery`` refuses an index whose recorded model identity (architecture, image tower,
preprocessing: ``ClipModel.fingerprint``) or feature dimension differs from the engine's, and a
Combiner whose input width differs from the CLIP's is refused at construction. Serve several
checkpoints side by side with one engine each (``cir_demo.serve.catalog``).

Per query it answers the ranked top K with scores, lambda, a per-stage timing breakdown,
and optionally the rank of a given image (even beyond K) and the ranking of a subset (CIRR's
group). Ties are broken by gallery row order, in hits and ranks alike. Gallery references reuse
their stored features (never re-encoded); caption features are cached (LRU); the gallery stays
normalised on the device. Knows no UI and no training.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from PIL import Image

from cir_demo.config.runtime import cpu_description, default_device
from cir_demo.index import Gallery, GalleryIndex, IndexMismatchError, rebuild_hint
from cir_demo.model.clip import ClipModel
from cir_demo.model.combiner import Combiner, check_compatible
from cir_demo.model.composers import COMPOSER_NAMES, Composer, make_composer
from cir_demo.pipeline.encode import encode_pil_images
from cir_demo.serve import checks
from cir_demo.serve.cache import LRUCache
from cir_demo.serve.checks import MAX_K, QueryError  # noqa: F401 - re-exported for callers
from cir_demo.serve.plan import LATENCY_BUDGET_MS, fp32_cost_ms, module_fingerprint, read_record, record_key, write_record
from cir_demo.serve.precision import (PROBE_CAPTIONS, build_combiner_variant, choose_combiner_precision,
                                     resolve_precision)
from cir_demo.serve.results import Hit, SearchResult
from cir_demo.serve.text_tower import make_text_tower

log = logging.getLogger(__name__)

@dataclass
class GalleryEntry:
    gallery: Gallery
    exclude_reference: bool           # CIRR protocol removes the reference; FashionIQ keeps it
    dataset: object = None            # the CIRDataset it came from (triplets, image paths), if any


class _Clock:
    """Stage timings in ms; synchronises CUDA so each stage is charged its own work."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.times: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times[stage] = self.times.get(stage, 0.0) + (now - self._last) * 1000
        self._last = now

    def total(self) -> dict:
        self.times["total"] = (self._last - self._start) * 1000
        return self.times


class Engine:
    """Serve composed queries over named galleries, all built by this engine's CLIP."""

    def __init__(self, clip: ClipModel, combiner: Optional[Combiner] = None, *, device: Optional[str] = None,
                 text_precision: str = "auto", compose_precision: str = "auto", cuda_graphs: Optional[bool] = None,
                 capture: str = "lazy", text_cache_size: int = 4096, name: str = "default",
                 precision_record: Optional[Path] = None, latency_budget_ms: float = LATENCY_BUDGET_MS):
        """``text_precision`` / ``compose_precision``: precision of the caption tower and the Combiner.
        "auto": fp16 on CUDA; on a CPU fp32, unless fp32 misses ``latency_budget_ms`` per query
        (caption tower + Combiner), then the fastest precision whose outputs stay within cosine
        0.999 of fp32 (``cir_demo.serve.plan``). The decision is kept in ``precision_record`` (a JSON
        file, per machine and model), so later starts serve exactly what the first one chose.
        In fp32 on a CPU every rank equals the validation browser's and ``eval``'s. ``cuda_graphs``:
        replay captured graphs for single captions on CUDA (default on there), captured on first
        use (``capture="lazy"``: no CUDA work at construction, as ZeroGPU needs). The image tower
        stays as loaded, so uploads match indexed features. ``name`` labels the bundle in messages."""
        check_compatible(clip, combiner)
        self.name = name
        self.device = default_device(device)
        self.clip = clip.to(self.device)
        self.clip.model.eval()
        probe_tokens = [self.clip.tokenize([c]) for c in PROBE_CAPTIONS]
        text_precision, compose_precision, self.plan = self._plan(
            text_precision, compose_precision, combiner, probe_tokens, precision_record, latency_budget_ms)
        self.text_tower = make_text_tower(self.clip.model, self.device, text_precision, cuda_graphs,
                                          capture=capture, probe_tokens=probe_tokens)
        self.combiner, self.compose_choice = None, None
        if combiner is not None:
            probe_text = None
            if resolve_precision(compose_precision, self.device) == "auto":  # CPU probe only: no CUDA work
                with torch.inference_mode():
                    probe_text = self.text_tower(torch.cat(probe_tokens))
            self.compose_choice = choose_combiner_precision(combiner, self.device, compose_precision,
                                                            text_features=probe_text)
            self.combiner = self.compose_choice.module
        if self.plan is not None and not self.plan["recorded"]:
            self.plan.update(text=self.text_tower.choice.name,
                             compose=self.compose_choice.name if self.compose_choice else "fp32")
            write_record(precision_record, self.plan["key"], {k: v for k, v in self.plan.items() if k != "recorded"})
        self._reference_combiner = combiner  # as given (fp32 as loaded): eval's own figures, when they differ
        self.composers: dict[str, Composer] = {
            name: make_composer(name, self.combiner) for name in COMPOSER_NAMES
            if name != "combiner" or self.combiner is not None}
        self.galleries: dict[str, GalleryEntry] = {}
        self._text_cache = LRUCache(text_cache_size)  # thread-safe: Gradio serves requests concurrently

    def _plan(self, text: str, compose: str, combiner, probe_tokens, record: Optional[Path], budget: float):
        """(text precision, compose precision, plan) where "auto" on a CPU becomes fp32 when fp32 is
        within the budget, or what the record says; plan is None where nothing was automatic."""
        auto_text = resolve_precision(text, self.device) == "auto"
        auto_compose = combiner is not None and resolve_precision(compose, self.device) == "auto"
        if not (auto_text or auto_compose):
            return text, compose, None
        key = record_key(json.dumps([self.clip.fingerprint(), module_fingerprint(combiner)]))
        entry = read_record(record, key)
        if entry is not None:
            return (entry["text"] if auto_text else text, entry["compose"] if auto_compose else compose,
                    {**entry, "key": key, "recorded": True})
        fp32_tower = make_text_tower(self.clip.model, self.device, "fp32", False)
        fp32_combiner = build_combiner_variant(combiner, "fp32", self.device) if combiner is not None else None
        cost = fp32_cost_ms(fp32_tower, probe_tokens, fp32_combiner)
        within = cost["text"] + cost["compose"] <= budget
        plan = {"key": key, "recorded": False, "fp32_ms": cost, "budget_ms": budget, "machine": cpu_description(),
                "reason": "fp32 is within the latency budget" if within else "fp32 misses the latency budget"}
        if within:
            text, compose = ("fp32" if auto_text else text), ("fp32" if auto_compose else compose)
        return text, compose, plan

    def precisions(self) -> dict:
        """What the caption tower and the Combiner run in, and why (the plan, the probe's timings)."""
        return {"text": self.text_tower.choice.describe(),
                "compose": self.compose_choice.describe() if self.compose_choice else None,
                "plan": {k: v for k, v in self.plan.items() if k != "machine"} if self.plan else None}

    @property
    def exact(self) -> bool:
        """True when queries are composed in fp32 on a CPU: ranks equal ``eval``'s figures there."""
        names = [self.text_tower.choice.name] + ([self.compose_choice.name] if self.compose_choice else [])
        return self.device.type == "cpu" and all(n == "fp32" for n in names)

    def clear_caches(self) -> None:
        """Forget cached caption features (e.g. between benchmark runs)."""
        self._text_cache.clear()

    # ---- galleries ------------------------------------------------------------------------
    def index_mismatch(self, index: GalleryIndex) -> Optional[str]:
        """Why ``index`` cannot serve with this engine's model (None when it can)."""
        manifest = index.manifest
        if not index.fingerprint:
            return "its manifest records no model fingerprint, so nothing shows which model made it"
        if index.dim != self.clip.feature_dim:
            return f"its features are {index.dim}-d but the model {self.clip.name!r} makes {self.clip.feature_dim}-d ones"
        if index.fingerprint != self.clip.fingerprint():
            return (f"it was built by model {manifest.get('model_name')!r} (fingerprint {index.fingerprint}), "
                    f"not by the loaded {self.clip.name!r} ({self.clip.fingerprint()}): the architecture, "
                    f"image-tower weights or preprocessing differ")
        return None

    def add_gallery(self, name: str, index: GalleryIndex, *, exclude_reference: Optional[bool] = None,
                    dataset=None) -> GalleryEntry:
        """Make an index searchable as ``name``; refuses an index this engine's model did not build.
        ``index`` may also be a gallery already (``cir_demo.index.milvus.MilvusGallery``)."""
        why = self.index_mismatch(index)
        if why is not None:
            where = f" at {index.path}" if index.path else ""
            raise IndexMismatchError(f"gallery {name!r}{where} cannot be used with bundle {self.name!r}: {why}; "
                                     f"{rebuild_hint(index.manifest)}")
        if exclude_reference is None:
            exclude_reference = index.manifest.get("dataset") == "cirr"
        gallery = index if hasattr(index, "topk") else Gallery.from_index(index, device=self.device)
        entry = GalleryEntry(gallery, exclude_reference, dataset)
        self.galleries[name] = entry
        return entry

    def entry(self, name: str) -> GalleryEntry:
        return self.galleries[checks.choice(name, self.galleries, "gallery", self.galleries)]

    # ---- features -------------------------------------------------------------------------
    @torch.inference_mode()
    def text_features(self, captions: Sequence[str]) -> torch.Tensor:
        """Raw caption features (B, D) float32 on the device, through the LRU cache."""
        def encode(missing: list) -> list:
            return list(torch.cat([self.text_tower(self.clip.tokenize(missing[i:i + 256]))  # (M, D) float32
                                   for i in range(0, len(missing), 256)]))
        return torch.stack(self._text_cache.get_or_compute_many(captions, encode))

    @torch.inference_mode()
    def image_features(self, image: Image.Image) -> torch.Tensor:
        """Raw features (1, D) of an uploaded image (encoded now, never stored)."""
        return encode_pil_images(self.clip, [image]).to(self.device)

    @staticmethod
    def rows_of(entry: GalleryEntry, names: Sequence[str]) -> torch.Tensor:
        for name in names:
            checks.image_name(name, entry.gallery.row_of)
        return entry.gallery.rows_of(names)

    def reference_features(self, entry: GalleryEntry, references: Sequence[str]) -> torch.Tensor:
        return entry.gallery.raw_features(self.rows_of(entry, references)).float()  # (B, D) stored, not re-encoded

    # ---- search ---------------------------------------------------------------------------
    @torch.inference_mode()
    def search(self, gallery: str, *, reference: Union[str, Image.Image, None], caption: str, k: int = 50,
               composer: str = "combiner", exclude_reference: Optional[bool] = None,
               target: Optional[str] = None, subset: Optional[Sequence[str]] = None,
               upload_features: Optional[torch.Tensor] = None) -> SearchResult:
        """One composed query. ``reference``: a gallery image name or an uploaded PIL image
        (``upload_features``, from ``image_features``, skips re-encoding the same upload; with
        them, ``reference`` may be None: the upload itself need not be kept)."""
        entry, comp = self.entry(gallery), self._composer(composer)
        k = self._check_k(k, len(entry.gallery))
        exclude = entry.exclude_reference if exclude_reference is None else exclude_reference
        if exclude and isinstance(reference, str) and len(entry.gallery) < 2:
            raise QueryError("this gallery holds only the reference image itself")
        caption = self._check_caption(caption, comp)
        clock = _Clock(self.device)
        query, lam, ref_row = self._compose_one(entry, comp, reference, caption, upload_features, clock)
        excl_row = ref_row if exclude else None
        scores, rows = entry.gallery.topk(query[None], k, exclude_rows=excl_row)
        scores, rows = scores[0].tolist(), rows[0].tolist()
        clock.lap("search")
        result = SearchResult(
            hits=[Hit(i + 1, entry.gallery.names[r], s) for i, (r, s) in enumerate(zip(rows, scores))],
            composer=comp.name, lam=lam, target=target)
        if target is not None:
            result.target_rank = self._target_rank(entry, query[None], target, excl_row)[0]
            if exclude != entry.exclude_reference:  # what the dataset's evaluation protocol would say
                protocol_excl = ref_row if entry.exclude_reference else None
                result.protocol_rank = self._target_rank(entry, query[None], target, protocol_excl)[0]
        if subset:
            result.subset = self._subset_hits(entry, query, subset, reference if isinstance(reference, str) else None)
        clock.lap("extras")
        result.timings_ms = clock.total()
        return result

    def _compose_one(self, entry: GalleryEntry, comp: Composer, reference, caption: str,
                     upload_features: Optional[torch.Tensor], clock: Optional["_Clock"] = None):
        """(query (D,) float32, lambda or None, reference row or None): the one way a query is made,
        for ``search`` and for ``rank_known`` alike (so both give every triplet the same rank)."""
        lap = clock.lap if clock is not None else (lambda stage: None)
        text = self.text_features([caption]) if comp.needs_text else None  # (1, D), single caption: cached
        lap("text")
        ref_row = self.rows_of(entry, [reference]) if isinstance(reference, str) else None  # checks the name
        if ref_row is not None:
            image = entry.gallery.raw_features(ref_row).float()  # (1, D) stored, never re-encoded
        elif isinstance(reference, Image.Image) or (reference is None and upload_features is not None):
            if upload_features is None and comp.needs_image:
                upload_features = self.image_features(reference)
            image = upload_features.to(self.device) if comp.needs_image else None
        else:
            raise QueryError("the reference must be a gallery image name or an image")
        lap("image")
        composition = comp.compose(image, text)
        lap("compose")
        lam = float(composition.lam[0]) if composition.lam is not None else None
        return composition.features[0].float(), lam, ref_row

    def _subset_hits(self, entry: GalleryEntry, query: torch.Tensor, subset: Sequence[str],
                     reference: Optional[str]) -> list[Hit]:
        """The subset (reference left out, repeats once) ranked by the query's scores."""
        members = list(dict.fromkeys(m for m in subset if m != reference))
        rows, scores = entry.gallery.subset_ranking(query, self.rows_of(entry, members))
        return [Hit(i + 1, entry.gallery.names[r], s) for i, (r, s) in enumerate(zip(rows.tolist(), scores.tolist()))]

    @torch.inference_mode()
    def rank_known(self, gallery: str, references: Sequence[str], captions: Sequence[str], targets: Sequence[str], *,
                   composer: str = "combiner", subsets: Optional[Sequence[Sequence[str]]] = None):
        """(target ranks [Q], subset ranks [Q] or None) of known triplets, each query made exactly as
        ``search`` makes it (one caption at a time, through the served precision), then ranked by the
        gallery's one scorer: the rank ``search`` reports for a triplet is the rank listed here."""
        entry, comp = self.entry(gallery), self._composer(composer)
        queries, excl = [], []
        for reference, caption in zip(references, captions):
            query, _, ref_row = self._compose_one(entry, comp, reference, self._check_caption(caption, comp), None)
            queries.append(query)
            excl.append(int(ref_row[0]) if entry.exclude_reference else -1)
        if not queries:
            return [], None
        batch = torch.stack(queries)  # (Q, D)
        exclude = torch.tensor(excl, dtype=torch.long, device=batch.device)
        ranks = self._target_rank(entry, batch, targets, exclude)
        subset_ranks = None
        if subsets is not None:
            subset_ranks = []
            for query, reference, target, subset in zip(queries, references, targets, subsets):
                names = [h.name for h in self._subset_hits(entry, query, subset, reference)]
                subset_ranks.append(names.index(target) + 1 if target in names else None)
        return ranks, subset_ranks

    def compare(self, gallery: str, *, reference: Union[str, Image.Image], caption: str, k: int = 50,
                composers: Optional[Sequence[str]] = None, **kwargs) -> dict[str, SearchResult]:
        """The same query under several composers (an upload is encoded once, captions are cached)."""
        if isinstance(reference, Image.Image) and "upload_features" not in kwargs:
            kwargs["upload_features"] = self.image_features(reference)
        return {name: self.search(gallery, reference=reference, caption=caption, k=k, composer=name, **kwargs)
                for name in (composers or list(self.composers))}

    @torch.inference_mode()
    def search_batch(self, gallery: str, references: Sequence[str], captions: Sequence[str], *, k: int = 50,
                     composer: str = "combiner", exclude_reference: Optional[bool] = None):
        """Many gallery-reference queries at once: (scores (Q, k), names [Q][k])."""
        if len(references) != len(captions):
            raise QueryError("references and captions must have the same length")
        entry, comp = self.entry(gallery), self._composer(composer)
        k = self._check_k(k, len(entry.gallery))
        image = self.reference_features(entry, references)
        text = self.text_features([self._check_caption(c, comp) for c in captions])
        queries = comp(image, text).float()  # (Q, D)
        exclude = entry.exclude_reference if exclude_reference is None else exclude_reference
        excl = self.rows_of(entry, references) if exclude else None
        scores, rows = entry.gallery.topk(queries, k, exclude_rows=excl)
        names = [[entry.gallery.names[r] for r in row] for row in rows.tolist()]
        return scores.cpu(), names

    def reference_composer(self, name: str) -> Composer:
        """Composer ``name`` at the precision it was loaded in (fp32), as ``eval`` runs it."""
        self._composer(name)  # validates the name
        if name != "combiner":
            return self.composers[name]
        ref = self._reference_combiner
        param = next(ref.parameters())
        if param.dtype != torch.float32 or param.device.type != "cpu":  # never change the caller's module
            ref = copy.deepcopy(ref).to("cpu", torch.float32)
        return make_composer(name, ref.eval())

    # ---- checks ---------------------------------------------------------------------------
    def _composer(self, name: str) -> Composer:
        if name == "combiner" and name not in self.composers:
            raise QueryError(f"unknown composer 'combiner' (no Combiner loaded); available: {', '.join(self.composers)}")
        return self.composers[checks.choice(name, self.composers, "composer", self.composers)]

    @staticmethod
    def _check_k(k, size: int) -> int:
        return min(checks.top_k(k), size)

    @staticmethod
    def _check_caption(caption, composer: Composer) -> str:
        return checks.caption_text(caption, needed=composer.needs_text)

    def _target_rank(self, entry: GalleryEntry, queries: torch.Tensor, targets, exclude_rows) -> list:
        """1-based rank of each query's target (None where the target is missing or excluded)."""
        targets = [targets] if isinstance(targets, str) else list(targets)
        rows = [entry.gallery.row_of.get(t) for t in targets]
        excluded = [-1] * len(rows) if exclude_rows is None else [int(r) for r in exclude_rows.reshape(-1).tolist()]
        valid = [i for i, (row, ex) in enumerate(zip(rows, excluded)) if row is not None and row != ex]
        out: list = [None] * len(rows)
        if valid:
            index = torch.tensor(valid, device=queries.device)
            excl = None if exclude_rows is None else exclude_rows.reshape(-1)[index]
            ranks = entry.gallery.rank_of(queries[index], torch.tensor([rows[i] for i in valid], device=queries.device),
                                          exclude_rows=excl)
            for i, rank in zip(valid, ranks.tolist()):
                out[i] = int(rank)
        return out
