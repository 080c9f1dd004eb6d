"""The Gradio Blocks page: one query flow on one screen (phones first), wired to ``Handlers``."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from cir_demo.data.records import query_captions
from cir_demo.serve.catalog import Catalog
from cir_demo.config.text import shown
from cir_demo.serve.checks import MAX_CAPTION_CHARS, MAX_K, QueryError
from cir_demo.ui import api
from cir_demo.ui import session as S
from cir_demo.ui.browse import OUTCOMES, SORTS, browse
from cir_demo.ui.handlers import EXAMPLES, Handlers, user_facing
from cir_demo.ui.links import parse_link, public_url
from cir_demo.ui.qr import qr_data_url
from cir_demo.ui.uploads import UploadImage

CSS_FILE = Path(__file__).with_name("style.css")
UI_MAX_K = min(MAX_K, 200)
PRIVATE = {"api_visibility": "undocumented"}
# The results JSON is made by the browser from the search's own answer: no file on the server.
DOWNLOAD_JS = ("(data) => { if (!data) { return; } const blob = new Blob([JSON.stringify(data, null, 1)], "
               "{type: 'application/json'}); const a = document.createElement('a'); "
               "a.href = URL.createObjectURL(blob); a.download = 'results-' + (data.gallery || 'query') + '.json'; "
               "document.body.appendChild(a); a.click(); a.remove(); "
               "setTimeout(() => URL.revokeObjectURL(a.href), 10000); }")


def share_html(url: str | None) -> str:
    """The QR code of ``url`` inline (a data: URL, made in memory) with a PNG download link."""
    if not url:
        return ""
    src = qr_data_url(url)
    return (f'<img src="{src}" alt="QR code of this app" style="width:260px;max-width:100%;image-rendering:pixelated">'
            f'<p><a href="{src}" download="cir-demo-qr.png">⬇ QR code (PNG, for posters)</a></p>')


def build_demo(catalog: Catalog, *, public: str | None = None) -> gr.Blocks:
    """The app over ``catalog``; ``public`` is the URL the QR code encodes (else the Space's / request's)."""
    h = Handlers(catalog)
    galleries = catalog.galleries()
    first = galleries[0].name
    composers = list(catalog.engine_for(first).composers)
    # Gradio's folder (uploads a client never used) is swept every 5 minutes of files older than 10.
    with gr.Blocks(title=catalog.title, delete_cache=(300, 600)) as demo:
        state = gr.State(S.new_state(first))
        page_names, hit_names = gr.State([]), gr.State([])
        gr.Markdown(f"## {catalog.title}\nShow a reference image, say how the wanted image differs, "
                    f"get a ranked gallery (Baldrati et al., CVPR 2022 workshop: CLIP + Combiner).")
        with gr.Row(equal_height=False):
            gallery_dd = gr.Dropdown([(g.label, g.name) for g in galleries], value=first, label="Gallery", elem_id="gallery",
                                     min_width=160, scale=2)
            composer_dd = gr.Dropdown(composers, value="combiner" if "combiner" in composers else composers[0],
                                      label="Composer", min_width=140, scale=1)
            k_slider = gr.Slider(1, UI_MAX_K, value=50, step=1, label="Top K", min_width=160, scale=2)
        with gr.Tabs() as tabs:
            with gr.Tab("Search", id="search"):
                with gr.Row(equal_height=False):
                    with gr.Column(min_width=280):
                        ref_img = UploadImage(label="Reference (or upload / take a photo)", type="filepath",
                                              sources=["upload", "webcam", "clipboard"], height=260,
                                              elem_id="reference")
                        upload_note = gr.Markdown(h.upload_note(first))
                        crumbs = gr.Markdown(S.crumbs(S.new_state(first)), elem_id="crumbs")
                        with gr.Row():
                            random_btn = gr.Button("Random reference", size="sm", elem_id="random")
                            back_btn = gr.Button("← Back", size="sm", interactive=False, elem_id="back")
                        with gr.Accordion("Pick from the gallery", open=False, elem_id="picker-box"):
                            picker = gr.Gallery(columns=4, height=330, allow_preview=False, show_label=False,
                                                elem_id="picker")
                            with gr.Row():
                                prev_btn = gr.Button("‹ Prev", size="sm")
                                page_md = gr.Markdown("page 1")
                                next_btn = gr.Button("Next ›", size="sm")
                    with gr.Column(min_width=280):
                        caption = gr.Textbox(label="How should the wanted image differ?", lines=2, max_lines=4,
                                             placeholder="is darker and has orange lettering", elem_id="caption",
                                             max_length=MAX_CAPTION_CHARS)
                        suggestions = gr.Radio([], label="The dataset's captions for this reference",
                                               visible=False, elem_id="suggestions")
                        examples = gr.Radio(EXAMPLES.get(galleries[0].dataset or "", []), label="Examples")
                        search_btn = gr.Button("Search", variant="primary", elem_id="search-btn")
                status = gr.Markdown(elem_id="status")
                frame = gr.HTML(elem_id="frame")
                results = gr.Gallery(label="Results (click one to refine from it)", columns=5, height="auto",
                                     allow_preview=False, elem_id="results")
                group = gr.Gallery(label="The reference's group, ranked (CIRR subset protocol)", columns=5,
                                   height="auto", allow_preview=False, visible=False, elem_id="group")
                with gr.Row():
                    download = gr.Button("⬇ Results as JSON", size="sm", elem_id="download")
                    results_json = gr.JSON(visible=False)
                    link = gr.Textbox(label="Link to this query", interactive=False, elem_id="link", scale=3,
                                      buttons=["copy"])
            with gr.Tab("Compare", id="compare"):
                compare_btn = gr.Button("Compare composers on this query", variant="primary", elem_id="compare-btn")
                compare_out = []
                with gr.Row(equal_height=False):
                    for name in ("combiner", "sum", "image", "text"):
                        with gr.Column(min_width=170):
                            compare_out.append(gr.Markdown(f"**{name}**"))
                            compare_out.append(gr.Gallery(columns=2, height="auto", allow_preview=False,
                                                          show_label=False, elem_id=f"compare-{name}"))
            with gr.Tab("Validation browser", id="browse"):
                browse_md = gr.Markdown("Ranks every validation triplet of the gallery in one batch.")
                with gr.Row():
                    outcome = gr.Radio(list(OUTCOMES), value="all", label="Show", min_width=200)
                    hit_at = gr.Number(10, label="hit = rank ≤", precision=0, minimum=1, min_width=90)
                    words = gr.Textbox(label="Caption contains", min_width=140)
                    sort = gr.Dropdown(list(SORTS), value="worst first", label="Order", min_width=130)
                browse_btn = gr.Button("Rank the validation triplets", elem_id="browse-btn")
                table = gr.Dataframe(interactive=False, wrap=True, max_height=520, elem_id="triplets")
                gr.Markdown("Select a row to load that triplet into the Search tab.")
            with gr.Tab("Share", id="share"):
                share_md = gr.Markdown()
                qr = gr.HTML(elem_id="qr")
        api.register(catalog)

        ref_out = [state, ref_img, crumbs, suggestions, back_btn]
        page_out = [picker, page_names, page_md]
        search_out = [results, hit_names, status, frame, group, results_json, link]
        search_in = [state, caption, k_slider, composer_dd]
        # The address bar follows the query, and the link box gets the full URL (empty for uploads).
        url_js = ("(q) => { if (!q) { return q; } history.replaceState(null, '', '?' + q); "
                  "return location.origin + location.pathname + '?' + q; }")

        def run_search(event):  # .success: a failed step (bad row, bad link) does not search the old state
            return (event.success(h.search, search_in, search_out, api_name="ui_search", **PRIVATE)
                    .success(None, [link], [link], js=url_js))

        (gallery_dd.input(h.switch_gallery, [gallery_dd, composer_dd],
                          [*ref_out, *page_out, examples, upload_note, results, hit_names, status, frame, group,
                           results_json, link, browse_md, table, composer_dd], api_name="ui_gallery", **PRIVATE)
         .success(None, [link], [link], js=url_js))
        picker.select(h.pick, [state, page_names], ref_out, api_name="ui_pick", **PRIVATE)
        prev_btn.click(lambda s: h.turn_page(s, -1), [state], [state, *page_out], api_name="ui_prev", **PRIVATE)
        next_btn.click(lambda s: h.turn_page(s, 1), [state], [state, *page_out], api_name="ui_next", **PRIVATE)
        random_btn.click(h.random, [state], ref_out, api_name="ui_random", **PRIVATE)
        back_btn.click(h.back, [state], ref_out, api_name="ui_back", **PRIVATE)
        ref_img.upload(h.upload, [ref_img, state], ref_out, api_name="ui_upload", **PRIVATE)
        suggestions.select(lambda v: v, [suggestions], [caption], api_name=False, **PRIVATE)
        examples.select(lambda v: v, [examples], [caption], api_name=False, **PRIVATE)
        run_search(search_btn.click(lambda: None, None, None, api_name=False, **PRIVATE))
        run_search(caption.submit(lambda: None, None, None, api_name=False, **PRIVATE))
        results.select(h.result_click, [state, hit_names], ref_out, api_name="ui_refine", **PRIVATE)
        download.click(None, [results_json], None, js=DOWNLOAD_JS)
        compare_btn.click(h.compare, [state, caption, k_slider], compare_out, api_name="ui_compare", **PRIVATE)

        browse_in = [gallery_dd, composer_dd, outcome, hit_at, words, sort]
        browsed = gr.State(None)  # the gallery the table was ranked for (the dropdown may have moved on)

        @user_facing
        def do_browse(gallery, composer, outcome_v, hit_v, words_v, sort_v):
            md, headers, body = browse(catalog, gallery, composer, outcome=outcome_v, hit_at=int(hit_v or 10),
                                       words=words_v, sort=sort_v)
            return md, gr.update(value=body, headers=headers), gallery

        for trigger in (browse_btn.click, outcome.change, sort.change, words.submit, hit_at.submit):
            trigger(do_browse, browse_in, [browse_md, table, browsed], api_name=False, **PRIVATE)

        @user_facing
        def load_triplet(gallery, evt: gr.SelectData):
            row = evt.row_value or []
            if not gallery or not row or not str(row[0]).strip().isdecimal():
                raise QueryError("select a row of the ranked triplets")
            triplet = catalog.triplet(gallery, int(row[0]))
            st = S.restart({}, gallery, {"name": triplet.reference})
            return (gallery, *h.reference_view(st), query_captions(triplet, train=False)[0],
                    gr.Tabs(selected="search"))

        run_search(table.select(load_triplet, [browsed], [gallery_dd, *ref_out, caption, tabs],
                                api_name="ui_triplet", **PRIVATE))

        @user_facing
        def on_load(request: gr.Request):
            params = parse_link(dict(request.query_params)) if request else {}
            gallery = params.get("gallery", first).strip()
            if gallery not in {g.name for g in galleries}:
                gr.Warning(f"This link names an unknown gallery {shown(gallery)}; showing {first!r} instead.")
                gallery, params = first, {}
            info = catalog.info(gallery)
            ref, autosearch = params.get("ref"), True
            if ref is not None and not catalog.has_image(gallery, ref):
                gr.Warning(f"This link's reference image {shown(ref)} is not in {gallery!r}: pick one, then search.")
                autosearch = False  # never quietly run another query than the link describes
            if ref is None or not catalog.has_image(gallery, ref):
                ref = catalog.random_reference(gallery)
            st = {**S.restart({}, gallery, {"name": ref}), "autosearch": autosearch}
            base = str(request.request.base_url) if request and getattr(request, "request", None) else None
            url = public_url(public or catalog.public_url, base)
            share = f"Open **{url}** on a phone, or scan the code." if url else "No public URL known."
            k = int(params["k"]) if params.get("k", "").isdecimal() and params["k"].isascii() else 50
            composer = params.get("composer", "combiner")
            examples_v = gr.update(choices=EXAMPLES.get(info.dataset or "", []), value=None)
            return (gr.update(value=gallery), *h.reference_view(st), *h.page_view(st), params.get("q", "")[:MAX_CAPTION_CHARS],
                    min(max(k, 1), UI_MAX_K), h.composer_update(gallery, composer),
                    examples_v, h.upload_note(gallery), share, share_html(url))

        load_out = [gallery_dd, *ref_out, *page_out, caption, k_slider, composer_dd, examples, upload_note,
                    share_md, qr]
        loaded = demo.load(on_load, None, load_out, api_name=False, **PRIVATE)
        (loaded.success(h.search_if_caption, search_in, search_out, api_name=False, **PRIVATE)
         .success(None, [link], [link], js=url_js))
    return demo


def css() -> str:
    return CSS_FILE.read_text(encoding="utf-8")
