"""The app in a real browser (Debian chromium + playwright), on a desktop and a 390 x 844 phone viewport.

The whole query flow: load, pick a reference from the gallery, type a caption, see K results,
refine from a result, go back, switch gallery, load a triplet from the validation browser, open
a deep link. Set CIR_DEMO_SCREENSHOTS=DIR to keep screenshots (the README's come from here).
"""

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
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert errors == []


def open_app(page, url):
    page.goto(url, wait_until="load")
    page.wait_for_selector("#search-btn")
    page.wait_for_function("document.querySelector('#crumbs') && "
                           "document.querySelector('#crumbs').innerText.includes('Reference:')")


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
    return page.locator("#results .grid-container .thumbnail-item").count()


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def tap(page, selector):
    page.locator(selector).first.scroll_into_view_if_needed()
    page.locator(selector).first.click()


def test_query_flow(page, app):
    _, catalog, base = app
    open_app(page, base)
    assert no_horizontal_scroll(page)
    # pick a reference from the paged gallery
    tap(page, "#picker-box button")
    page.locator("#picker .grid-container .thumbnail-item").nth(2).click()
    picked = catalog.page("dress", 1).names[2]
    page.wait_for_function(f"document.querySelector('#crumbs').innerText.includes('{picked}')")
    # type a caption and search: K (default 50) results, scores and names in captions
    page.fill("#caption textarea", "is darker and has long sleeves")
    tap(page, "#search-btn")
    page.wait_for_function("document.querySelectorAll('#results .grid-container .thumbnail-item').length === 50")
    want = catalog.search("dress", reference=picked, caption="is darker and has long sleeves", k=50)
    first = page.locator("#results .grid-container .thumbnail-item").first.inner_text()
    assert want.hits[0].name in first and "#1" in first
    assert "λ =" in page.inner_text("#status")
    assert "gallery=dress" in page.evaluate("window.location.search")
    assert no_horizontal_scroll(page)
    shot(page, "search")
    # the results download is made by the browser from the answer it already has
    with page.expect_download() as download:
        tap(page, "#download")
    saved = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert [h["name"] for h in saved["hits"]] == [h.name for h in want.hits] and saved["reference"] == picked
    # refine: a clicked result becomes the reference; back returns
    page.locator("#results .grid-container .thumbnail-item").nth(4).click()
    page.wait_for_function(f"document.querySelector('#crumbs').innerText.includes('{want.hits[4].name}')")
    assert picked in crumbs(page) and "→" in crumbs(page)
    tap(page, "#back")
    page.wait_for_function(f"!document.querySelector('#crumbs').innerText.includes('{want.hits[4].name}')")
    assert picked in crumbs(page)
    # switch gallery
    tap(page, "#gallery input")
    page.get_by_role("option", name="scenes (CIRR-style)").click()
    page.wait_for_function("document.querySelector('#crumbs').innerText.includes('val-')")
    assert result_count(page) == 0  # the other gallery's results are cleared
    assert "scenes" in page.inner_text("#gallery") or page.input_value("#gallery input").startswith("scenes")


def test_share_tab_shows_a_qr_code_of_the_page(page, app):
    import base64
    import io

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


def test_validation_browser_loads_a_triplet(page, app):
    _, catalog, base = app
    open_app(page, base)
    open_hidden_tab(page, "Validation browser")
    tap(page, "#browse-btn")
    page.wait_for_function("document.querySelectorAll('#triplets [role=row]').length > 10")
    ranks = catalog.rank_split("dress")
    summary = page.content()
    assert f"R@10 <strong>{ranks.summary['R@10']:.2f}</strong>" in summary
    assert f"R@50 <strong>{ranks.summary['R@50']:.2f}</strong>" in summary
    worst = max(ranks.rows, key=lambda r: (r.rank, -r.index))
    first = page.locator("#triplets [role=row]").nth(1)  # row 0 is the header
    assert first.locator("[role=gridcell]").nth(0).inner_text().strip() == str(worst.index)
    first.locator("[role=gridcell]").nth(2).click()
    page.wait_for_function(f"document.querySelector('#crumbs').innerText.includes('{worst.reference}')")
    page.wait_for_function("document.querySelector('#status').innerText.includes('target')")
    assert f"rank {worst.rank}" in page.inner_text("#status")
    assert page.input_value("#caption textarea") == worst.caption


def open_hidden_tab(page, name):
    """On a phone Gradio folds the later tabs into a '⋯' menu."""
    tab = page.get_by_role("tab", name=name)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    page.locator(".tab-container button:has-text('⋯'), button.overflow-menu, .overflow-menu button").first.click()
    page.get_by_role("tab", name=name).or_(page.locator(f"button:has-text('{name}')")).last.click()


def test_deep_link_reopens_a_retrieval(page, app):
    _, catalog, base = app
    row = next(r for r in catalog.rank_split("scenes").rows if 2 <= r.rank <= 12)
    triplet = catalog.triplet("scenes", row.index)
    caption = row.caption
    open_app(page, base + "?" + urlencode({"gallery": "scenes", "ref": triplet.reference, "q": caption, "k": 12}))
    page.wait_for_function("document.querySelectorAll('#results .grid-container .thumbnail-item').length === 12")
    want = catalog.search("scenes", reference=triplet.reference, caption=caption, k=12)
    assert triplet.reference in crumbs(page)
    assert f"rank **{want.target_rank}**".replace("**", "") in page.inner_text("#status")
    assert page.locator("#group .grid-container .thumbnail-item").count() == len(want.subset)
    # the ground-truth target is framed where it appears among the results
    target_item = page.locator("#results .grid-container .thumbnail-item").nth(want.target_rank - 1)
    assert triplet.target in target_item.inner_text()
    assert "solid" in target_item.evaluate("e => getComputedStyle(e).outlineStyle")
    assert no_horizontal_scroll(page)
    shot(page, "scenes", scroll_to="#results")
    # a FashionIQ triplet whose target is in the top 50: the README's screenshots
    row = next(r for r in catalog.rank_split("dress").rows if 3 <= r.rank <= 8)
    open_app(page, base + "?" + urlencode({"gallery": "dress", "ref": row.reference, "q": row.caption}))
    page.wait_for_function("document.querySelectorAll('#results .grid-container .thumbnail-item').length === 50")
    assert f"rank {row.rank}" in page.inner_text("#status")
    shot(page, "search", scroll_to="#status")
    # a link whose reference is unknown is not quietly run with another reference
    open_app(page, base + "?" + urlencode({"gallery": "dress", "ref": "no-such-image", "q": row.caption}))
    page.wait_for_timeout(1500)
    assert result_count(page) == 0 and "no-such-image" in page.content()
