"""The app in a real browser (Debian chromium + playwright), on a desktop and a 390 x 844 phone viewport.

Arrival on a retrieval, the whole query flow (pick, caption, search, download, refine, back, gallery
switch, upload), one server event per action, the validation browser, deep links, the QR code.
Set CIR_DEMO_SCREENSHOTS=DIR to keep screenshots (the README's come from here).
"""

import io
import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlencode

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")]
# As the browser probe on these machines: no background traffic, no sandbox (root), no GPU.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
RESULTS = "#results .thumb"


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(params=list(VIEWPORTS))
def page(request, browser):
    phone = request.param == "phone"
    context = browser.new_context(viewport=VIEWPORTS[request.param], is_mobile=phone, has_touch=phone)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.kind = request.param
    page.joins = []  # every server event the page sends
    page.on("request", lambda r: page.joins.append(r.url) if "queue/join" in r.url else None)
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert errors == []


def open_app(page, url, results: bool = True):
    page.goto(url, wait_until="load")
    page.wait_for_selector("#search-btn")
    page.wait_for_function("document.querySelector('#crumbs') && "
                           "document.querySelector('#crumbs').innerText.includes('Reference:')")
    if results:
        page.wait_for_function(f"document.querySelectorAll('{RESULTS}').length > 0")


def shot(page, name, scroll_to=None):
    folder = os.environ.get("CIR_DEMO_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        if scroll_to:
            page.locator(scroll_to).scroll_into_view_if_needed()
        page.wait_for_timeout(500)  # thumbnails load lazily
        page.screenshot(path=str(Path(folder) / f"{name}-{page.kind}.png"), full_page=page.kind == "desktop")


def crumbs(page) -> str:
    return page.inner_text("#crumbs")


def result_count(page) -> int:
    return page.locator(RESULTS).count()


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def tap(page, selector):
    page.locator(selector).first.scroll_into_view_if_needed()
    page.locator(selector).first.click()


def shown_names(page, grid: str = "#results") -> list:
    return page.evaluate(f"[...document.querySelectorAll('{grid} .thumb')].map(e => e.title)")


def events_during(page, action) -> int:
    """How many server events one user action sends (waits for the page to settle)."""
    before = len(page.joins)
    action()
    page.wait_for_timeout(800)
    return len(page.joins) - before


def test_arrival_shows_a_retrieval_with_the_query_in_the_first_screen(page, app):
    _, catalog, base = app
    open_app(page, base)
    assert len(page.joins) == 1  # arriving is one server event, and it brings the results
    reference, caption = catalog.curated("dress", exclude_reference=True)
    assert reference in crumbs(page) and page.input_value("#caption textarea") == caption
    assert result_count(page) == 50 and "Target found at #1" in page.inner_text("#status")
    screen = VIEWPORTS[page.kind]["height"]
    assert page.evaluate("window.scrollY") == 0  # the first screen is the top of the page
    for selector in ("#reference img", "#caption textarea", "#search-btn"):
        box = page.locator(selector).first.bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= screen, (selector, box)
    # results flow in the page: nothing scrolls inside the gallery
    inner = page.evaluate("""() => [...document.querySelectorAll('#results, #results *')].filter(e =>
        e.scrollHeight > e.clientHeight + 2 && ['auto', 'scroll'].includes(getComputedStyle(e).overflowY)).length""")
    assert inner == 0
    # the badge leaves the picture visible: one line, a small part of the thumbnail
    item = page.locator(RESULTS).first
    badge, thumb = item.locator(".badge").bounding_box(), item.bounding_box()
    assert badge["height"] <= 20 and badge["height"] * badge["width"] < 0.25 * thumb["height"] * thumb["width"]
    assert reference not in shown_names(page)  # a FashionIQ reference is left out, and said so
    assert "left out" in page.inner_text("#status")
    for selector in ("#search-btn", "#random", "#back", "#upload", "#download"):
        assert page.locator(selector).first.bounding_box()["height"] >= 44, selector
    assert "🎯" not in page.content() and no_horizontal_scroll(page)
    shot(page, "arrival")


def test_query_flow(page, app):
    _, catalog, base = app
    open_app(page, base)
    # pick a reference from the paged gallery
    tap(page, "#picker-box button")
    page.locator("#picker .thumb").nth(2).click()
    picked = catalog.page("dress", 1).names[2]
    page.wait_for_function(f"document.querySelector('#crumbs').innerText.includes('{picked}')")
    # type a caption and search: one server event, K (default 50) results with rank and score badges
    page.fill("#caption textarea", "is darker and has long sleeves")
    assert events_during(page, lambda: tap(page, "#search-btn")) == 1
    want = catalog.search("dress", reference=picked, caption="is darker and has long sleeves", k=50,
                          exclude_reference=True)
    page.wait_for_function(f"document.querySelectorAll('{RESULTS}').length === 50 && "
                           f"document.querySelector('{RESULTS}').title === '{want.hits[0].name}'")
    assert shown_names(page) == [h.name for h in want.hits] and picked not in shown_names(page)
    assert page.locator(RESULTS).first.inner_text().startswith("#1")
    assert "Top 50 of 490" in page.inner_text("#status") and "λ =" in page.locator("#details").text_content()
    assert "gallery=dress" in page.evaluate("window.location.search")
    assert no_horizontal_scroll(page)
    # the results download is made by the browser from the answer it already has: no server event
    with page.expect_download() as download:
        assert events_during(page, lambda: tap(page, "#download")) == 0
    saved = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert [h["name"] for h in saved["hits"]] == [h.name for h in want.hits] and saved["reference"] == picked
    # refine: a tapped result becomes the reference; back returns
    assert events_during(page, lambda: page.locator(RESULTS).nth(4).click()) == 1
    page.wait_for_function(f"document.querySelector('#crumbs').innerText.includes('{want.hits[4].name}')")
    assert picked in crumbs(page) and "→" in crumbs(page)
    tap(page, "#back")
    page.wait_for_function(f"!document.querySelector('#crumbs').innerText.includes('{want.hits[4].name}')")
    assert picked in crumbs(page)
    # switch gallery: one event, and the new gallery opens on its own retrieval
    tap(page, "#gallery input")
    switch = lambda: page.get_by_role("option", name="scenes").first.click()  # noqa: E731
    assert events_during(page, switch) == 1
    page.wait_for_function("document.querySelector('#crumbs').innerText.includes('val-')")
    page.wait_for_function(f"document.querySelector('{RESULTS}') && "
                           f"document.querySelector('{RESULTS}').title.startsWith('val-')")
    scenes_ref, _ = catalog.curated("scenes")
    assert scenes_ref in crumbs(page) and "Target found" in page.inner_text("#status")


def test_an_upload_becomes_the_reference_without_stale_breadcrumbs(page, app, tmp_path):
    import numpy as np
    from PIL import Image

    _, _, base = app
    open_app(page, base)
    photo = tmp_path / "my-photo.jpg"
    Image.fromarray((np.random.default_rng(3).random((120, 90, 3)) * 255).astype(np.uint8)).save(photo)
    with page.expect_file_chooser() as chooser:
        tap(page, "#upload")
    chooser.value.set_files(str(photo))
    page.wait_for_function("document.querySelector('#crumbs').innerText.includes('your upload')")
    src = page.get_attribute("#reference img", "src")
    assert src.startswith("data:image/jpeg;base64,")  # a thumbnail made in memory, not a file
    page.fill("#caption textarea", "is red")
    tap(page, "#search-btn")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Top 50')")
    assert page.input_value("#link input, #link textarea") == ""  # an upload has no shareable link


def open_hidden_tab(page, name):
    """On a phone Gradio folds the later tabs into a menu."""
    tab = page.get_by_role("tab", name=name)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    page.locator(".tab-container button:has-text('⋯'), button.overflow-menu, .overflow-menu button").first.click()
    page.get_by_role("tab", name=name).or_(page.locator(f"button:has-text('{name}')")).last.click()


def test_validation_browser_loads_a_triplet(page, app):
    _, catalog, base = app
    open_app(page, base)
    open_hidden_tab(page, "Validation browser")
    tap(page, "#browse-btn")
    page.wait_for_function("document.querySelectorAll('#triplets .thumb').length > 10")
    ranks = catalog.rank_split("dress")
    summary = page.content()
    assert f"R@10 <strong>{ranks.summary['R@10']:.2f}</strong>" in summary
    worst = max(ranks.rows, key=lambda r: (r.rank, -r.index))
    first = page.locator("#triplets .thumb").first
    assert f"rank {worst.rank}" in first.inner_text()
    assert no_horizontal_scroll(page)
    first.click()
    page.wait_for_function(f"document.querySelector('#crumbs').innerText.includes('{worst.reference}')")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Target')")
    status = page.inner_text("#status")
    # the same rank as the table: shown as is, or beside the search's own when the reference is left out
    assert f"#{worst.rank}" in status, status
    assert page.input_value("#caption textarea") == worst.caption


def test_deep_link_reopens_a_retrieval(page, app):
    _, catalog, base = app
    row = next(r for r in catalog.rank_split("scenes").rows if 2 <= r.rank <= 12)
    triplet = catalog.triplet("scenes", row.index)
    open_app(page, base + "?" + urlencode({"gallery": "scenes", "ref": triplet.reference, "q": row.caption, "k": 12}))
    page.wait_for_function(f"document.querySelectorAll('{RESULTS}').length === 12")
    want = catalog.search("scenes", reference=triplet.reference, caption=row.caption, k=12)
    assert triplet.reference in crumbs(page)
    assert f"Target found at #{want.target_rank}" in page.inner_text("#status") and want.target_rank == row.rank
    assert page.locator("#group .thumb").count() == len(want.subset)
    # the ground-truth target is framed where it appears among the results
    target_item = page.locator(RESULTS).nth(want.target_rank - 1)
    assert "solid" in target_item.evaluate("e => getComputedStyle(e).outlineStyle")
    assert page.locator("#results .thumb.target").count() == 1
    assert not target_item.locator(".name").is_visible()
    tap(page, "#options button")
    page.check("#show-names input")  # names on demand
    assert target_item.locator(".name").is_visible() and triplet.target in target_item.inner_text()
    assert no_horizontal_scroll(page)
    shot(page, "scenes", scroll_to="#results")
    # a link whose reference is unknown is not quietly run with another reference
    open_app(page, base + "?" + urlencode({"gallery": "dress", "ref": "no-such-image", "q": "is red"}), results=False)
    page.wait_for_timeout(1500)
    assert result_count(page) == 0 and "no-such-image" in page.content()


def test_share_tab_shows_a_qr_code_of_the_page(page, app):
    import base64

    from PIL import Image

    from cir_demo.ui.qr import qr_png

    _, _, base = app
    open_app(page, base)
    open_hidden_tab(page, "Share")
    page.wait_for_selector("#qr img")
    src = page.get_attribute("#qr img", "src")
    assert src.startswith("data:image/png;base64,") and base64.b64decode(src.split(",", 1)[1]) == qr_png(base)
    Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert page.get_attribute("#qr a[download]", "href") == src


def test_a_link_cannot_put_markup_on_the_page(page, app):
    """Names from a link are echoed in a warning as text: no element of a stranger's making appears."""
    _, _, base = app
    evil = '<a id="evil-link" href="https://evil.example/login">log in again</a><b id="evil-b">x</b>'
    open_app(page, base + "?" + urlencode({"gallery": evil, "ref": '<img id="evil-img" src="x">'}))
    page.wait_for_function("document.body.innerText.includes('unknown gallery')")
    assert page.locator("#evil-link, #evil-b, #evil-img").count() == 0
    assert '<a id="evil-link"' in page.locator("body").inner_text()  # shown as the text it is


@pytest.fixture
def folder_base(request):
    return request.getfixturevalue("folder_app")[2]


def test_a_folder_gallery_on_the_page(page, folder_base):
    """Your own images: the page opens on them, says there is no ground truth, and searches them."""
    open_app(page, folder_base, results=False)
    page.wait_for_function("document.querySelector('#crumbs').innerText.includes('.jpg')")
    assert "no validation triplets" in page.inner_text("#status")
    assert result_count(page) == 0 and not page.locator("#examples").is_visible()
    page.fill("#caption textarea", "is brighter")
    tap(page, "#search-btn")
    page.wait_for_function(f"document.querySelectorAll('{RESULTS}').length === 8")  # 9 images, the reference left out
    assert "Top 8 of 9" in page.inner_text("#status") and "Target" not in page.inner_text("#status")
    page.locator(RESULTS).nth(2).click()  # refine from a result
    page.wait_for_function("document.querySelector('#crumbs').innerText.includes('→')")
    assert no_horizontal_scroll(page)


def test_why_a_result_ranks_where_it_does(page, app):
    _, catalog, base = app
    open_app(page, base)
    page.get_by_label("explains why it ranks there").check()
    before = crumbs(page)
    assert events_during(page, lambda: page.locator(RESULTS).nth(1).click()) == 1
    page.wait_for_selector("#why .why-panel img")
    assert page.get_attribute("#why .why-panel img", "src").startswith("data:image/jpeg;base64,")
    words = page.locator("#why .why-word").all_inner_texts()
    assert words == page.input_value("#caption textarea").split() and crumbs(page) == before  # not refined
    assert "Why #2" in page.inner_text("#why") and no_horizontal_scroll(page)
    shot(page, "why", scroll_to="#why")
