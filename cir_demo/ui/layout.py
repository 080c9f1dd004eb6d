"""The Gradio Blocks page: components (``Page``) and which handler each user action calls.

One user action is one server event (a search, a tap on a result, a gallery switch); what only
changes the page (filling the caption from a suggestion, the address bar, the JSON download,
showing names) runs in the browser. Handlers return values keyed by component; all behaviour
lives in ``cir_demo.ui.handlers``. Light events (searches, taps) and heavy ones (uploads, batch
ranking) run in separate concurrency groups, so a heavy call never stalls the searches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from cir_demo.serve.catalog import Catalog
from cir_demo.serve.checks import MAX_CAPTION_CHARS
from cir_demo.ui import api, guard
from cir_demo.ui import session as S
from cir_demo.ui.browse import OUTCOMES, SORTS
from cir_demo.ui.grid import thumb_grid
from cir_demo.ui.handlers import COMPOSER_ORDER, TAP_MODES, UI_MAX_K, Handlers
from cir_demo.ui.uploads import UploadPhoto
from cir_demo.ui.zerogpu import gpu_catalog

CSS_FILE = Path(__file__).with_name("style.css")
PRIVATE = {"api_visibility": "undocumented"}
LIGHT = {"concurrency_id": "light", "concurrency_limit": 2, **PRIVATE}
HEAVY = {"concurrency_id": guard.HEAVY, "concurrency_limit": 1, **PRIVATE}

# What runs in the browser only (no server round trip).
URL_JS = ("(q) => { if (!q || q.startsWith('http')) { return q; } history.replaceState(null, '', '?' + q); "
          "return location.origin + location.pathname + '?' + q; }")
DOWNLOAD_JS = ("(data) => { if (!data) { return; } const blob = new Blob([JSON.stringify(data, null, 1)], "
               "{type: 'application/json'}); const a = document.createElement('a'); "
               "a.href = URL.createObjectURL(blob); a.download = 'results-' + (data.gallery || 'query') + '.json'; "
               "document.body.appendChild(a); a.click(); a.remove(); "
               "setTimeout(() => URL.revokeObjectURL(a.href), 10000); }")
NAMES_JS = ("(on) => { for (const id of ['results', 'group']) { const e = document.getElementById(id); "
            "if (e) { e.classList.toggle('names', on); } } return on; }")
COPY_JS = "(v) => v"
# Only a drawn explanation is scrolled to: the panel also changes (to a hint, or empty) on arrival and
# on every search, and scrolling then would move a phone's first screen away from the query.
SHOW_WHY_JS = ("() => { const e = document.querySelector('#why .why-panel'); "
               "if (e) { e.scrollIntoView({behavior: 'smooth', block: 'nearest'}); } }")


@dataclass
class Page:
    """Every component a handler reads or writes, by name."""

    state: gr.State
    page_names: gr.State
    hit_names: gr.State
    browsed: gr.State
    title: gr.Markdown
    gallery: gr.Dropdown
    composer: gr.Dropdown
    k: gr.Slider
    tabs: gr.Tabs
    reference: gr.HTML
    upload: gr.UploadButton
    upload_note: gr.Markdown
    crumbs: gr.Markdown
    random: gr.Button
    back: gr.Button
    picker: gr.HTML
    prev: gr.Button
    next: gr.Button
    page_label: gr.Markdown
    caption: gr.Textbox
    search: gr.Button
    suggestions: gr.Radio
    examples: gr.Radio
    status: gr.Markdown
    details: gr.HTML
    names: gr.Checkbox
    tap_mode: gr.Radio
    why: gr.HTML
    last_query: gr.State
    results: gr.HTML
    group_md: gr.Markdown
    group: gr.HTML
    download: gr.Button
    results_json: gr.JSON
    link: gr.Textbox
    compare_btn: gr.Button
    compare_md: dict
    compare_galleries: dict
    browse_md: gr.Markdown
    outcome: gr.Radio
    hit_at: gr.Number
    words: gr.Textbox
    rank_from: gr.Number
    rank_to: gr.Number
    sort: gr.Dropdown
    browse_btn: gr.Button
    triplets: gr.HTML
    share_md: gr.Markdown
    qr: gr.HTML


def _search_tab(first: str, composers: list) -> dict:
    with gr.Row(equal_height=False):
        with gr.Column(min_width=280):
            reference = gr.HTML(elem_id="reference")
            crumbs = gr.Markdown(S.crumbs(S.new_state(first)), elem_id="crumbs")
            with gr.Row(elem_classes="tap-row"):
                random = gr.Button("Random", size="sm", elem_id="random", min_width=70)
                back = gr.Button("Back", size="sm", interactive=False, elem_id="back", min_width=70)
                upload = UploadPhoto("Upload or take a photo", file_types=["image"], size="sm",
                                     elem_id="upload", min_width=120)
            with gr.Accordion("Pick a reference from the gallery", open=False, elem_id="picker-box"):
                picker = thumb_grid("picker", min_px=84)
                with gr.Row(elem_classes="tap-row"):
                    prev = gr.Button("Previous", size="sm", min_width=80)
                    page_label = gr.Markdown("page 1")
                    next_ = gr.Button("Next", size="sm", min_width=80)
        with gr.Column(min_width=280):
            caption = gr.Textbox(label="How should the wanted image differ?", lines=2, max_lines=4,
                                 placeholder="is darker and has orange lettering", elem_id="caption",
                                 max_length=MAX_CAPTION_CHARS)
            search = gr.Button("Search", variant="primary", elem_id="search-btn")
            with gr.Row():
                suggestions = gr.Dropdown([], label="The dataset's captions for it", visible=False,
                                          elem_id="suggestions", min_width=160)
                examples = gr.Dropdown([], label="Try an edit", elem_id="examples", min_width=160)
            with gr.Accordion("Options: composer, number of results, names", open=False, elem_id="options"):
                composer = gr.Dropdown(composers, value="combiner" if "combiner" in composers else composers[0],
                                       label="Composer", elem_id="composer")
                k = gr.Slider(1, UI_MAX_K, value=50, step=1, label="Top K", elem_id="top-k")
                names = gr.Checkbox(False, label="Show image names on the results", elem_id="show-names")
            upload_note = gr.Markdown(elem_id="upload-note")
    status = gr.Markdown(elem_id="status")
    details = gr.HTML(elem_id="details")
    tap_mode = gr.Radio(list(TAP_MODES), value=TAP_MODES[0], label="Tapping a result", elem_id="tap-mode")
    why = gr.HTML(elem_id="why")
    results = thumb_grid("results")
    group_md = gr.Markdown("The reference's group, ranked (CIRR's subset protocol):", visible=False,
                           elem_id="group-label")
    group = thumb_grid("group", visible=False)
    with gr.Row(elem_classes="tap-row"):
        download = gr.Button("Results as JSON", size="sm", elem_id="download", min_width=120)
        link = gr.Textbox(label="Link to this query", interactive=False, elem_id="link", scale=3, buttons=["copy"])
    results_json = gr.JSON(visible=False)
    return dict(reference=reference, crumbs=crumbs, random=random, back=back, upload=upload, composer=composer,
                k=k, names=names, upload_note=upload_note, picker=picker, prev=prev, next=next_,
                page_label=page_label, caption=caption, search=search, suggestions=suggestions, examples=examples,
                status=status, details=details, tap_mode=tap_mode, why=why, results=results, group_md=group_md, group=group, download=download,
                link=link, results_json=results_json)


def _compare_tab() -> dict:
    compare_btn = gr.Button("Compare composers on this query", variant="primary", elem_id="compare-btn")
    md, galleries = {}, {}
    with gr.Row(equal_height=False):
        for name in COMPOSER_ORDER:
            with gr.Column(min_width=170):
                md[name] = gr.Markdown(f"**{name}**")
                galleries[name] = thumb_grid(f"compare-{name}", min_px=72)
    return dict(compare_btn=compare_btn, compare_md=md, compare_galleries=galleries)


def _browse_tab() -> dict:
    browse_md = gr.Markdown("Ranks every validation triplet of the gallery, as a search ranks it.")
    with gr.Row():
        outcome = gr.Radio(list(OUTCOMES), value="all", label="Show", min_width=200)
        sort = gr.Dropdown(list(SORTS), value="worst first", label="Order", min_width=130)
    with gr.Row():
        hit_at = gr.Number(10, label="hit = rank ≤", precision=0, min_width=90)
        rank_from = gr.Number(None, label="ranks from", precision=0, min_width=90)  # empty or 0: no bound
        rank_to = gr.Number(None, label="to", precision=0, min_width=90)
        words = gr.Textbox(label="Caption contains", min_width=140)
    browse_btn = gr.Button("Rank the validation triplets", elem_id="browse-btn")
    triplets = thumb_grid("triplets", min_px=150, names=True)
    gr.Markdown("Tap a triplet to load it into the Search tab.")
    return dict(browse_md=browse_md, outcome=outcome, sort=sort, hit_at=hit_at, rank_from=rank_from,
                rank_to=rank_to, words=words, browse_btn=browse_btn, triplets=triplets)


def build_page(catalog: Catalog) -> Page:
    """The components, inside an open ``gr.Blocks``."""
    galleries = catalog.galleries()
    first = galleries[0].name
    composers = list(catalog.engine_for(first).composers)
    title = gr.Markdown(f"### {catalog.title}", elem_id="title")
    gallery = gr.Dropdown([(g.label, g.name) for g in galleries], value=first, label="Gallery", elem_id="gallery")
    parts: dict = {}
    with gr.Tabs() as tabs:
        with gr.Tab("Search", id="search"):
            parts.update(_search_tab(first, composers))
        with gr.Tab("Compare", id="compare"):
            parts.update(_compare_tab())
        with gr.Tab("Validation browser", id="browse"):
            parts.update(_browse_tab())
        with gr.Tab("Share", id="share"):
            parts["share_md"] = gr.Markdown()
            parts["qr"] = gr.HTML(elem_id="qr")
    gr.Markdown("Baldrati et al., *Conditioned and Composed Image Retrieval Combining and Partially "
                "Fine-Tuning CLIP-based Features* (CVPR 2022 workshop): CLIP features and a Combiner network.",
                elem_id="footnote")
    return Page(state=gr.State(S.new_state(first)), page_names=gr.State([]), hit_names=gr.State([]),
                last_query=gr.State(None),
                browsed=gr.State(None), title=title, gallery=gallery, tabs=tabs, **parts)


def wire(p: Page, h: Handlers, demo: gr.Blocks) -> None:
    """Every user action: one event, named ``ui_<handler>`` (undocumented, but callable: strangers will)."""
    def on(triggers, name: str, inputs, group: dict):
        gr.on(triggers, getattr(h, name), inputs, h.outputs(name), api_name=f"ui_{name}", **group)

    on([demo.load], "arrive", None, LIGHT)
    on([p.gallery.select], "switch_gallery", [p.gallery, p.composer, p.k], LIGHT)
    on([p.picker.select], "pick", [p.state, p.page_names], LIGHT)
    on([p.prev.click], "previous_page", [p.state], LIGHT)
    on([p.next.click], "next_page", [p.state], LIGHT)
    on([p.random.click], "random", [p.state], LIGHT)
    on([p.back.click], "back", [p.state], LIGHT)
    on([p.upload.upload], "upload", [p.upload, p.state], HEAVY)
    on([p.search.click, p.caption.submit], "search", [p.state, p.caption, p.k, p.composer], LIGHT)
    on([p.results.select], "tap_result", [p.state, p.hit_names, p.tap_mode, p.last_query], LIGHT)
    on([p.compare_btn.click], "compare", [p.state, p.caption, p.k], LIGHT)
    on([p.browse_btn.click, p.outcome.change, p.sort.change, p.words.submit, p.hit_at.submit, p.rank_from.submit,
        p.rank_to.submit], "browse",
       [p.gallery, p.composer, p.outcome, p.hit_at, p.words, p.sort, p.rank_from, p.rank_to], HEAVY)
    on([p.triplets.select], "load_triplet", [p.browsed, p.k, p.composer], HEAVY)
    # In the browser only (no server round trip):
    p.suggestions.select(None, [p.suggestions], [p.caption], js=COPY_JS)
    p.examples.select(None, [p.examples], [p.caption], js=COPY_JS)
    p.link.change(None, [p.link], [p.link], js=URL_JS)
    p.download.click(None, [p.results_json], None, js=DOWNLOAD_JS)
    p.names.change(None, [p.names], [p.names], js=NAMES_JS)
    p.why.change(None, None, None, js=SHOW_WHY_JS)


def build_demo(catalog: Catalog, *, public: str | None = None) -> gr.Blocks:
    """The app over ``catalog``; ``public`` is the URL the QR code encodes (else the Space's / request's)."""
    catalog = gpu_catalog(catalog)  # every model call wrapped for ZeroGPU (a no-op elsewhere)
    # Gradio's folder (uploads a client never used) is swept every 5 minutes of files older than 10.
    with gr.Blocks(title=catalog.title, delete_cache=(300, 600)) as demo:
        page = build_page(catalog)
        handlers = Handlers(catalog, page, public=public)
        wire(page, handlers, demo)
        api.register(catalog)
    return demo


def css() -> str:
    return CSS_FILE.read_text(encoding="utf-8")
