"""What each user action does: the catalog's answers as widget values keyed by component.

Every handler is safe to call by anyone, in any order, with any payload (Gradio lets a client
call any event by ``fn_index``): inputs go through the library's checks, library errors become a
one-line ``gr.Error`` and anything unexpected is logged and answered with a short apology.
``Handlers.outputs(name)`` lists the components a handler may return, for the event that calls it.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
from typing import Optional
from urllib.parse import quote

import gradio as gr

from cir_demo.config.text import shown
from cir_demo.serve.checks import MAX_CAPTION_CHARS, MAX_K, USER_ERRORS, QueryError, top_k, whole
from cir_demo.serve.results import SearchResult
from cir_demo.ui import session as S
from cir_demo.ui.browse import browse_view
from cir_demo.ui.grid import item
from cir_demo.ui.links import parse_link, public_url, query_string
from cir_demo.ui.qr import share_html
from cir_demo.ui.why import why_html

log = logging.getLogger(__name__)

UI_MAX_K = min(MAX_K, 200)
COMPARE_MAX_K = 12
COMPOSER_ORDER = ("combiner", "sum", "image", "text")
COMPOSER_LABELS = {"combiner": "Combiner", "sum": "Sum (stage 1)", "image": "Image only", "text": "Text only"}
# Edits the bundled models answer most often from any reference (python -m cir_demo visitor measures
# edits; tests check every word here is in the models' vocabulary).
EXAMPLES = {"fashioniq": ["make it red", "has no sleeves", "has stripes", "has long sleeves"],
            "cirr": ["change the background to pink", "remove the cubes", "add a small red ball on the left",
                     "make the ball red"]}
THUMB_PX = 160  # an upload is shown as a small in-memory thumbnail; the photo itself is not kept
TAP_MODES = ("refines from it", "explains why it ranks there")


def user_facing(fn):
    """Decorator: library errors -> gr.Error(message); anything else -> logged, generic gr.Error."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except USER_ERRORS as err:  # toasts render HTML: a stranger's input is shown as text
            raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from None
        except Exception:  # noqa: BLE001 - a public demo must keep serving and must not leak internals
            log.exception("handler %s failed", getattr(fn, "__name__", "?"))
            raise gr.Error("Sorry, something went wrong on our side; please try again.",
                           print_exception=False) from None
    return wrapper


def _state(value) -> dict:
    """A session state as the handlers expect it (a stranger's event may arrive before any other)."""
    if not isinstance(value, dict) or not isinstance(value.get("gallery"), str):
        raise QueryError("this page has expired; please reload it")
    return value


def image_html(src: str, alt: str) -> str:
    return (f'<img src="{html.escape(src, quote=True)}" alt="{html.escape(alt, quote=True)}" '
            f'class="reference-image">')


def thumbnail_url(image) -> str:
    """A small JPEG of ``image`` as a data: URL (made in memory, never written)."""
    thumb = image.copy()
    thumb.thumbnail((THUMB_PX, THUMB_PX))
    buffer = io.BytesIO()
    thumb.save(buffer, "JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def hit_items(catalog, gallery: str, hits, target: Optional[str]) -> list[dict]:
    """Grid items of ranked hits: rank and score as the badge, the target marked (framed)."""
    return [item(catalog.image_path(gallery, h.name), h.name, f"#{h.rank} · {h.score:.2f}", h.name == target)
            for h in hits]


def status_markdown(result: SearchResult, shown_k: int, size: int, *, left_out: bool = False) -> str:
    """Where the target is (beyond the results shown too), or what is shown, in plain words."""
    ms = result.timings_ms.get("total", 0.0)
    if result.target is not None and result.target_rank is not None:
        where = "" if result.target_rank <= shown_k else f" (beyond the {shown_k} shown)"
        text = f"**Target found at #{result.target_rank}** of {size}{where} · {ms:.0f} ms"
        if result.protocol_rank is not None and result.protocol_rank != result.target_rank:
            text += f" · #{result.protocol_rank} counting the reference, as the validation table does"
    else:
        text = f"Top {len(result.hits)} of {size} · {ms:.0f} ms"
    if left_out:
        text += " · your reference itself is left out of the results"
    return text


def details_html(result: SearchResult, precision: str) -> str:
    """λ and per-stage timings, folded away."""
    t = result.timings_ms
    stages = " · ".join(f"{s} {t[s]:.1f} ms" for s in ("text", "image", "compose", "search") if s in t)
    lam = f"λ = {result.lam:.2f} (how much the caption weighs) · " if result.lam is not None else ""
    label = html.escape(COMPOSER_LABELS.get(result.composer, result.composer))
    return (f"<details><summary>How this ranking was made</summary><p>{label} · {lam}{stages} · "
            f"served in {html.escape(precision)}</p></details>")


class Handlers:
    """The app's behaviour over one catalog and one page of components."""

    def __init__(self, catalog, page, *, public: Optional[str] = None):
        self.catalog, self.p, self.public = catalog, page, public
        self.first = catalog.galleries()[0].name
        p = page
        ref = [p.state, p.reference, p.crumbs, p.suggestions, p.back]
        pages = [p.state, p.picker, p.page_names, p.page_label]
        search = [p.results, p.hit_names, p.status, p.details, p.group_md, p.group, p.results_json, p.link, p.why,
                  p.last_query]
        browse = [p.browse_md, p.triplets, p.browsed]
        gallery = [*ref, *pages[1:], *search, *browse, p.caption, p.examples, p.upload_note, p.composer, p.gallery,
                   p.k]
        compare = [*p.compare_md.values(), *p.compare_galleries.values()]
        self._outputs = {
            "arrive": [*gallery, *compare, p.share_md, p.qr], "switch_gallery": [*gallery, *compare],
            "pick": ref, "random": ref, "back": ref, "upload": ref, "tap_result": [*ref, p.why],
            "previous_page": pages, "next_page": pages, "search": search, "compare": compare, "browse": browse,
            "load_triplet": [*ref, *search, p.caption, p.tabs]}
        for name in self._outputs:  # every handler answers with a message, never a stack trace
            setattr(self, name, user_facing(getattr(self, name)))

    def outputs(self, name: str) -> list:
        return list(dict.fromkeys(self._outputs[name]))

    # ---- views ----------------------------------------------------------------------------
    def _reference(self, state: dict) -> dict:
        p, step = self.p, S.current(state)
        gallery, name = state["gallery"], S.reference_name(state)
        if name is not None:
            picture = image_html(f"gradio_api/file={quote(str(self.catalog.image_path(gallery, name)))}", name)
        elif step is not None:
            picture = image_html(step.get("thumb", ""), "your upload")
        else:
            picture = ""
        suggestions = self.catalog.suggestions(gallery, name) if name else []
        return {p.state: state, p.reference: picture, p.crumbs: S.crumbs(state),
                p.suggestions: gr.update(choices=suggestions, value=None, visible=bool(suggestions)),
                p.back: gr.update(interactive=len(state.get("chain", [])) > 1)}

    def _page(self, state: dict) -> dict:
        page = self.catalog.page(state["gallery"], state.get("page", 1))
        items = [item(self.catalog.image_path(state["gallery"], n), n) for n in page.names]
        return {self.p.state: state, self.p.picker: items, self.p.page_names: page.names,
                self.p.page_label: f"page {page.page} / {page.pages}"}

    def _no_results(self, gallery: str) -> dict:
        p = self.p
        return {p.results: [], p.hit_names: [], p.status: "", p.details: "", p.why: "", p.last_query: None,
                p.group_md: gr.update(visible=False),
                p.group: gr.update(visible=False, value=[]), p.results_json: None,
                p.link: query_string(gallery, None, "", 50, "combiner")}

    def _results(self, state: dict, caption: str, k, composer: str) -> dict:
        """The search's widgets; a FashionIQ reference is left out of its own results (and said so)."""
        p, gallery = self.p, state["gallery"]
        k = min(top_k(k), UI_MAX_K)
        info = self.catalog.info(gallery)
        leave_out = not info.exclude_reference  # FashionIQ keeps it in the protocol; a visitor wants other images
        query = self._query(state)
        result = self.catalog.search(gallery, caption=caption, k=k, composer=composer,
                                     exclude_reference=True if leave_out and query["reference"] else None, **query)
        subset = hit_items(self.catalog, gallery, result.subset, result.target)
        ref = S.reference_name(state)  # an upload has no shareable reference: no link then
        precision = self.catalog.engine_for(gallery).precisions()["text"]["precision"]
        return {p.results: hit_items(self.catalog, gallery, result.hits, result.target),
                p.hit_names: [h.name for h in result.hits],
                p.status: status_markdown(result, k, info.count, left_out=leave_out and bool(ref)),
                p.details: details_html(result, precision),
                p.group_md: gr.update(visible=bool(subset)), p.group: gr.update(visible=bool(subset), value=subset),
                p.results_json: {"gallery": gallery, "reference": ref or "(uploaded image)",
                                 "caption": caption.strip(), **result.to_dict()},
                p.link: query_string(gallery, ref, caption.strip(), k, composer) if ref else "", p.why: "",
                p.last_query: {"caption": caption.strip(), "composer": composer, "state": state}}

    def _query(self, state: dict) -> dict:
        step = S.current(state)
        if step is None:
            raise QueryError("pick a reference image first (gallery, random or upload)")
        if "name" in step:
            return {"reference": step["name"]}
        return {"reference": None, "upload_features": step["upload"]}

    def _composer(self, gallery: str, current: Optional[str]):
        """The composers this gallery's bundle has (a bundle may lack a Combiner), keeping ``current``."""
        names = list(self.catalog.engine_for(gallery).composers)
        value = current if current in names else ("combiner" if "combiner" in names else names[0])
        return gr.update(choices=names, value=value), value

    def _gallery_view(self, gallery: str, composer: Optional[str], k, link: Optional[dict] = None) -> dict:
        """A gallery opened on a retrieval: the link's query, else the gallery's curated one."""
        p, info = self.p, self.catalog.info(gallery)
        composer_update, composer = self._composer(gallery, composer)
        link = link or {}
        if "ref" in link:
            reference, caption = link["ref"], link.get("q", "")[:MAX_CAPTION_CHARS]
        else:
            curated = self.catalog.curated(gallery, exclude_reference=True if not info.exclude_reference else None)
            reference, caption = curated or (self.catalog.random_reference(gallery), "")
        state = S.restart({}, gallery, {"name": reference})
        out = {**self._reference(state), **self._page(state), **self._no_results(gallery), **self._blank_compare()}
        examples = EXAMPLES.get(info.dataset or "", [])
        out.update({p.caption: caption, p.examples: gr.update(choices=examples, value=None, visible=bool(examples)),
                    p.upload_note: self._upload_note(gallery), p.composer: composer_update,
                    p.gallery: gr.update(value=gallery), p.k: k, p.browse_md: self._browse_intro(gallery),
                    p.triplets: [], p.browsed: None})
        if caption.strip():
            out.update(self._results(state, caption, k, composer))
        elif not info.triplets:
            out[p.status] = (f"**{info.label}** has no validation triplets, so no target is known: write how the "
                             f"wanted image should differ, then Search.")
        return out

    def _blank_compare(self) -> dict:
        return {**{md: f"**{COMPOSER_LABELS[name]}**" for name, md in self.p.compare_md.items()},
                **{g: [] for g in self.p.compare_galleries.values()}}

    def _upload_note(self, gallery: str) -> str:
        info = self.catalog.info(gallery)
        where = f"the **{info.label}** category" if info.dataset == "fashioniq" else f"**{info.label}**"
        return f"A photo you upload is searched in {where}; only its features are kept, for this visit."

    def _browse_intro(self, gallery: str) -> str:
        info = self.catalog.info(gallery)
        if not info.triplets:
            return f"**{info.label}** has no validation triplets (no ground truth), so there is nothing to rank."
        return f"Ranks the {info.triplets} validation triplets of **{info.label}**, each as a search ranks it."

    # ---- arrival and galleries ---------------------------------------------------------------
    def arrive(self, request: gr.Request):
        """The page opens on a retrieval: the link's, else the first gallery's curated query."""
        params = parse_link(dict(request.query_params)) if request else {}
        names = [g.name for g in self.catalog.galleries()]
        gallery = params.get("gallery", self.first)
        if gallery not in names:
            gr.Warning(html.escape(f"This link names an unknown gallery {shown(gallery)}; showing {self.first!r} "
                                   f"instead.", quote=False))
            gallery, params = self.first, {}
        if "ref" in params and not self.catalog.has_image(gallery, params["ref"]):
            gr.Warning(html.escape(f"This link's reference image {shown(params['ref'])} is not in {gallery!r}: "
                                   f"pick one, then search.", quote=False))  # never quietly run another query
            params = {"ref": self.catalog.random_reference(gallery)}
        k = whole(int(params["k"]), "K", 1, UI_MAX_K) if params.get("k", "").isdecimal() and len(params["k"]) < 5 else 50
        out = self._gallery_view(gallery, params.get("composer"), k, params)
        base = str(request.request.base_url) if request and getattr(request, "request", None) else None
        url = public_url(self.public or self.catalog.public_url, base)
        out[self.p.share_md] = f"Open **{url}** on a phone, or scan the code." if url else "No public URL known."
        out[self.p.qr] = share_html(url)
        return out

    def switch_gallery(self, gallery, composer, k):
        return self._gallery_view(self.catalog.info(gallery).name, composer, top_k(k))

    # ---- references ---------------------------------------------------------------------------
    def pick(self, state, page_names, evt: gr.SelectData):
        state = _state(state)
        if not isinstance(page_names, list) or not isinstance(evt.index, int) or not 0 <= evt.index < len(page_names):
            raise QueryError("pick an image of the gallery page")
        return self._reference(S.push(state, {"name": page_names[evt.index]}))

    def random(self, state):
        state = _state(state)
        return self._reference(S.push(state, {"name": self.catalog.random_reference(state["gallery"])}))

    def back(self, state):
        return self._reference(S.back(_state(state)))

    def upload(self, data: Optional[bytes], state):
        """Encode an uploaded photo (its bytes: the file is already gone); only its features stay."""
        state = _state(state)
        if data is None:
            return self._reference(state)
        image = self.catalog.open_upload(state["gallery"], data)
        features = self.catalog.upload_features(state["gallery"], image)
        step = {"upload": features, "label": "your upload", "thumb": thumbnail_url(image)}
        return self._reference(S.push(state, step))

    def tap_result(self, state, hits, mode, last_query, evt: gr.SelectData):
        """A tapped result: the new reference, or (in the other tap mode) why it ranks where it does."""
        state = _state(state)
        if not isinstance(hits, list) or not isinstance(evt.index, int) or not 0 <= evt.index < len(hits):
            raise QueryError("run a search first")
        if mode != TAP_MODES[1]:
            return self._reference(S.push(state, {"name": hits[evt.index]}))
        if not isinstance(last_query, dict):
            raise QueryError("run a search first")
        asked = last_query["state"]  # the query these results answer (the reference may have moved on)
        why = self.catalog.explain(asked["gallery"], caption=last_query["caption"], hit=hits[evt.index],
                                   composer=last_query["composer"], **self._query(asked))
        return {self.p.why: why_html(why, evt.index + 1)}

    def previous_page(self, state):
        return self._turn(_state(state), -1)

    def next_page(self, state):
        return self._turn(_state(state), 1)

    def _turn(self, state: dict, delta: int):
        page = self.catalog.page(state["gallery"], state.get("page", 1) + delta).page
        return self._page(S.with_page(state, page))

    # ---- search, compare, browse -----------------------------------------------------------------
    def search(self, state, caption, k, composer):
        return self._results(_state(state), caption, k, composer)

    def compare(self, state, caption, k):
        state = _state(state)
        gallery = state["gallery"]
        k = min(top_k(k), COMPARE_MAX_K)
        results = self.catalog.compare(gallery, caption=caption, k=k, **self._query(state))
        out = {}
        for name in COMPOSER_ORDER:
            md, gal = self.p.compare_md[name], self.p.compare_galleries[name]
            result = results.get(name)
            if result is None:
                out.update({md: f"**{COMPOSER_LABELS[name]}**: not available in this bundle", gal: []})
                continue
            lam = f" · λ {result.lam:.2f}" if result.lam is not None else ""
            rank = f" · target #{result.target_rank}" if result.target_rank is not None else ""
            out[md] = f"**{COMPOSER_LABELS[name]}**{lam}{rank} · {result.timings_ms.get('total', 0):.0f} ms"
            out[gal] = hit_items(self.catalog, gallery, result.hits, result.target)
        return out

    def browse(self, gallery, composer, outcome, hit_at, words, sort, rank_from, rank_to):
        summary, rows = browse_view(self.catalog, gallery, composer, outcome=outcome, hit_at=hit_at, words=words,
                                    sort=sort, rank_min=rank_from or None, rank_max=rank_to or None)  # 0: none
        items = [item(self.catalog.image_path(gallery, r.reference), r.caption, f"rank {r.rank}") for r in rows]
        return {self.p.browse_md: summary, self.p.triplets: items,
                self.p.browsed: {"gallery": gallery, "rows": [r.index for r in rows]}}

    def load_triplet(self, browsed, k, composer, evt: gr.SelectData):
        """A tapped triplet of the validation browser, searched in the Search tab."""
        if not isinstance(browsed, dict) or not isinstance(evt.index, int) \
                or not 0 <= evt.index < len(browsed.get("rows", [])):
            raise QueryError("rank the validation triplets first, then tap one")
        gallery = browsed["gallery"]
        triplet = self.catalog.triplet(gallery, browsed["rows"][evt.index])
        caption = self.catalog.query_caption(triplet)
        state = S.restart({}, gallery, {"name": triplet.reference})
        return {**self._reference(state), **self._results(state, caption, k, composer), self.p.caption: caption,
                self.p.tabs: gr.Tabs(selected="search")}
