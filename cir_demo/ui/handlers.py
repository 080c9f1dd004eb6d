"""Event handlers: turn the catalog's answers into widget values (no layout here).

Every handler catches the library's user errors and re-raises them as ``gr.Error`` so people see
a message, never a stack trace; anything unexpected is logged and answered with a short apology.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Optional

import gradio as gr

from cir_demo.pipeline.encode import ImageReadError
from cir_demo.serve.catalog import Catalog
from cir_demo.serve.engine import QueryError
from cir_demo.serve.results import SearchResult
from cir_demo.ui import session as S
from cir_demo.ui.links import query_string
from cir_demo.ui.zerogpu import gpu

log = logging.getLogger(__name__)

USER_ERRORS = (QueryError, ImageReadError, ValueError)
SEARCH_OUTPUTS = 7  # results, hit names, status, frame, group, results JSON, link (see ``search``)
EXAMPLES = {"fashioniq": ["is darker", "has long sleeves and is red", "is more fitted with a v-neck",
                          "has a floral pattern"],
            "cirr": ["change the background to pink", "add a small red ball on the left",
                     "remove the cubes", "make the objects larger"]}


def user_facing(fn):
    """Decorator: library errors -> gr.Error(message); anything else -> logged, generic gr.Error."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except USER_ERRORS as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception:  # noqa: BLE001 - a public demo must keep serving and must not leak internals
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error("Sorry, something went wrong on our side; please try again.",
                           print_exception=False) from None
    return wrapper


class Handlers:
    """The app's behaviour over one catalog."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        for name in ("search", "compare", "upload"):  # the calls that run the models
            setattr(self, name, gpu(getattr(self, name)))

    # ---- references ---------------------------------------------------------------------------
    def reference_view(self, state: dict):
        """(state, reference image, breadcrumbs, caption suggestions, back enabled) for ``state``."""
        gallery, step = state["gallery"], S.current(state)
        name = step.get("name") if step else None
        image = str(self.catalog.image_path(gallery, name)) if name else gr.update()
        suggestions = self.catalog.suggestions(gallery, name) if name else []
        return (state, image, S.crumbs(state),
                gr.update(choices=suggestions, value=None, visible=bool(suggestions)),
                gr.update(interactive=len(state.get("chain", [])) > 1))

    @user_facing
    def pick(self, state: dict, page_names: list, evt: gr.SelectData):
        name = page_names[evt.index]
        return self.reference_view(S.push(state, {"name": name}))

    @user_facing
    def random(self, state: dict):
        return self.reference_view(S.push(state, {"name": self.catalog.random_reference(state["gallery"])}))

    @user_facing
    def back(self, state: dict):
        return self.reference_view(S.back(state))

    @user_facing
    def upload(self, data: Optional[bytes], state: dict):
        """Encode an uploaded photo (its bytes: the file is already gone); only its features stay."""
        if data is None:  # the picture was cleared
            return self.reference_view(state)
        features = self.catalog.encode_upload(state["gallery"], data)
        return self.reference_view(S.push(state, {"upload": features, "label": "your upload"}))

    @user_facing
    def result_click(self, state: dict, hits: list, evt: gr.SelectData):
        """Refine: the clicked result becomes the new reference."""
        if not hits or evt.index >= len(hits):
            raise QueryError("run a search first")
        return self.reference_view(S.push(state, {"name": hits[evt.index]}))

    # ---- gallery and picker -------------------------------------------------------------------
    @user_facing
    def switch_gallery(self, gallery: str, composer: Optional[str] = None):
        state = S.restart({}, gallery, {"name": self.catalog.random_reference(gallery)})
        info = self.catalog.info(gallery)
        examples = EXAMPLES.get(info.dataset or "", [])
        cleared = ([], [], "", "", gr.update(visible=False, value=None), None,
                   query_string(gallery, None, "", 50, "combiner"))  # the old gallery's results and link
        return (*self.reference_view(state), *self.page_view(state),
                gr.update(choices=examples, value=None), self.upload_note(gallery), *cleared,
                "Ranks every validation triplet of the gallery in one batch.", gr.update(value=None),
                self.composer_update(gallery, composer))

    def composer_update(self, gallery: str, current: Optional[str] = None):
        """The composers this gallery's bundle has (a bundle may lack a Combiner), keeping ``current``."""
        names = list(self.catalog.engine_for(gallery).composers)
        value = current if current in names else ("combiner" if "combiner" in names else names[0])
        return gr.update(choices=names, value=value)

    def upload_note(self, gallery: str) -> str:
        info = self.catalog.info(gallery)
        if info.dataset == "fashioniq":
            return f"An uploaded photo is searched in the **{info.label}** category (switch above to change)."
        return f"An uploaded photo is searched in **{info.label}**."

    def page_view(self, state: dict):
        """(picker gallery items, its names, page label) for the state's page."""
        page = self.catalog.page(state["gallery"], state.get("page", 1))
        items = [(str(self.catalog.image_path(state["gallery"], n)), n) for n in page.names]
        return items, page.names, f"page {page.page} / {page.pages}"

    @user_facing
    def turn_page(self, state: dict, delta: int):
        page = self.catalog.page(state["gallery"], state.get("page", 1) + delta).page
        state = S.with_page(state, page)
        return (state, *self.page_view(state))

    # ---- search -------------------------------------------------------------------------------
    def _query(self, state: dict) -> dict:
        step = S.current(state)
        if step is None:
            raise QueryError("pick a reference image first (gallery, random or upload)")
        if "name" in step:
            return {"reference": step["name"]}
        return {"reference": None, "upload_features": step["upload"]}

    @user_facing
    def search(self, state: dict, caption: str, k, composer: str):
        start = time.perf_counter()
        gallery = state["gallery"]
        result = self.catalog.search(gallery, caption=caption, k=_int(k), composer=composer, **self._query(state))
        view = self.results_view(gallery, result)
        ref = S.reference_name(state)  # an upload has no shareable reference: no link then
        link = query_string(gallery, ref, caption, _int(k), composer) if ref else ""
        payload = {"gallery": gallery, "reference": ref or "(uploaded image)", "caption": caption.strip(),
                   **result.to_dict()}  # downloaded by the browser itself: no file on the server
        log.debug("search handler %.1f ms", (time.perf_counter() - start) * 1000)
        return (*view, payload, link)

    def search_if_caption(self, state: dict, caption: str, k, composer: str):
        """A deep link's search: run only when the link carried a caption."""
        if not (caption or "").strip() or not state.get("autosearch", True):
            return tuple(gr.update() for _ in range(SEARCH_OUTPUTS))
        return self.search(state, caption, k, composer)

    def results_view(self, gallery: str, result: SearchResult):
        """(results items, hit names, status markdown, target frame CSS, group gallery update)."""
        items, names, frame = [], [], ""
        for hit in result.hits:
            mark = "🎯 " if hit.name == result.target else ""
            items.append((str(self.catalog.image_path(gallery, hit.name)), f"{mark}#{hit.rank} · {hit.score:.3f} · {hit.name}"))
            names.append(hit.name)
            if mark:
                frame = target_frame_css(hit.rank)
        group = gr.update(visible=False, value=None)
        if result.subset:
            group = gr.update(visible=True, value=[
                (str(self.catalog.image_path(gallery, h.name)),
                 f"{'🎯 ' if h.name == result.target else ''}#{h.rank} in group · {h.score:.3f}")
                for h in result.subset])
        return items, names, status_markdown(result, len(result.hits)), frame, group

    @user_facing
    def compare(self, state: dict, caption: str, k):
        gallery = state["gallery"]
        k = min(_int(k), 12)
        results = self.catalog.compare(gallery, caption=caption, k=k, **self._query(state))
        out = []
        for name in ("combiner", "sum", "image", "text"):
            result = results.get(name)
            if result is None:
                out += [f"**{name}**: not available in this bundle", []]
                continue
            items = [(str(self.catalog.image_path(gallery, h.name)),
                      f"{'🎯 ' if h.name == result.target else ''}#{h.rank} · {h.score:.3f}") for h in result.hits]
            out += [status_markdown(result, k, short=True), items]
        return tuple(out)


def _int(value) -> int:
    """Slider values arrive as int or float; anything else is left for the engine to refuse."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def target_frame_css(rank: int) -> str:
    """A style element framing the ``rank``-th result thumbnail (the ground-truth target)."""
    return (f"<style>#results .grid-container > .gallery-item:nth-child({int(rank)}) > button "
            f"{{outline: 4px solid #16a34a; outline-offset: -4px; border-radius: 6px;}}</style>")


COMPOSER_LABELS = {"combiner": "Combiner", "sum": "Sum (stage 1)", "image": "Image only", "text": "Text only"}


def status_markdown(result: SearchResult, shown: int, short: bool = False) -> str:
    """λ, timings and the target's rank (even beyond the top K shown) in one or two lines."""
    parts = [f"**{COMPOSER_LABELS.get(result.composer, result.composer)}**"]
    if result.lam is not None:
        parts.append(f"λ = {result.lam:.2f} (caption weight)")
    t = result.timings_ms
    stages = " · ".join(f"{s} {t[s]:.1f}" for s in ("text", "image", "compose", "search") if s in t)
    parts.append(f"{t.get('total', 0):.1f} ms" if short else f"{stages} · **total {t.get('total', 0):.1f} ms**")
    if result.target is not None and result.target_rank is not None:
        where = "" if result.target_rank <= shown else " (beyond the results shown)"
        parts.append(f"🎯 target `{result.target}` at rank **{result.target_rank}**{where}")
    return " · ".join(parts)
