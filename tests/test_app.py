"""The app's named API endpoints through gradio_client, checked against the library's own answers;
upload privacy and which files the server serves."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cir_demo.config import PROJECT_DIR

pytestmark = pytest.mark.slow  # a launched app


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[2], verbose=False)


def test_endpoints_are_named_and_documented(client):
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/search", "/compare", "/random_reference", "/captions", "/browse", "/galleries", "/page", "/why"} <= named


def test_why_through_the_api_equals_the_catalog(client, app):
    _, catalog, _ = app
    triplet = catalog.triplet("scenes", 2)
    caption = catalog.query_caption(triplet)
    got = client.predict("scenes", triplet.reference, caption, triplet.target, "combiner", api_name="/why")
    want = catalog.explain("scenes", reference=triplet.reference, caption=caption, hit=triplet.target)
    assert got["grid"] == [len(want.heat), len(want.heat[0])] and got["hit"] == triplet.target
    assert [w["word"] for w in got["words"]] == caption.split()
    assert got["score"] == pytest.approx(want.score, abs=1e-6)
    assert torch.allclose(torch.tensor(got["heatmap"]), torch.tensor(want.heat), atol=1e-5)


def test_galleries_page_captions_and_random(client, app):
    _, catalog, _ = app
    galleries = client.predict(api_name="/galleries")
    assert [g["name"] for g in galleries] == ["dress", "shirt", "toptee", "scenes"]
    assert [g["bundle"] for g in galleries] == ["fashioniq"] * 3 + ["cirr"]
    page = client.predict("shirt", 2, 10, api_name="/page")
    assert page["names"] == catalog.names("shirt")[10:20] and page["page"] == 2 and page["total"] == 490
    picked = client.predict("scenes", api_name="/random_reference")
    assert picked["captions"] == catalog.suggestions("scenes", picked["reference"]) and picked["captions"]
    assert client.predict("scenes", picked["reference"], api_name="/captions") == picked["captions"]


@pytest.mark.parametrize("gallery", ["dress", "scenes"])
def test_search_and_compare_equal_the_catalog(client, app, gallery):
    _, catalog, _ = app
    triplet = catalog.triplet(gallery, 3)
    caption = catalog.suggestions(gallery, triplet.reference)[0]
    got = client.predict(gallery, triplet.reference, caption, 20, "combiner", api_name="/search")
    want = catalog.search(gallery, reference=triplet.reference, caption=caption, k=20).to_dict()
    assert [h["name"] for h in got["hits"]] == [h["name"] for h in want["hits"]]
    assert [h["score"] for h in got["hits"]] == pytest.approx([h["score"] for h in want["hits"]], abs=1e-6)
    assert got["lam"] == pytest.approx(want["lam"])
    assert got["target"] == triplet.target and got["target_rank"] == want["target_rank"]
    assert bool(got["subset"]) == (gallery == "scenes")
    compared = client.predict(gallery, triplet.reference, caption, 5, api_name="/compare")
    assert set(compared) == {"combiner", "sum", "image", "text"}
    for name, result in compared.items():
        direct = catalog.search(gallery, reference=triplet.reference, caption=caption, k=5, composer=name)
        assert [h["name"] for h in result["hits"]] == [h.name for h in direct.hits]
    assert compared["combiner"]["lam"] is not None and compared["sum"]["lam"] is None


def test_browse_equals_rank_split(client, app):
    _, catalog, _ = app
    out = client.predict("dress", "combiner", "misses", 10, "", "worst first", api_name="/browse")
    ranks = catalog.rank_split("dress")
    assert out["summary"] == pytest.approx(ranks.summary)
    misses = sorted((r for r in ranks.rows if r.rank > 10), key=lambda r: (-r.rank, r.index))
    assert [row[0] for row in out["rows"]] == [r.index for r in misses]
    assert out["headers"][1] == "rank" and all(row[1] > 10 for row in out["rows"])


@pytest.mark.parametrize("args, message", [
    (("hats", "x", "is red"), "unknown gallery 'hats'"),
    (("dress", "../../weights/fashioniq.safetensors", "is red"), "unknown gallery image name"),
    (("dress", "{ref}", "   "), "please write how the wanted image differs"),
    (("dress", "{ref}", "is red", 0), "K must be a whole number"),
    (("dress", "{ref}", "is red", 10 ** 7), "K must be a whole number"),
    (("dress", "{ref}", "is red", 5, "magic"), "unknown composer 'magic'"),
])
def test_bad_input_gets_a_clear_message_and_the_server_keeps_serving(client, app, args, message):
    from gradio_client.exceptions import AppError

    ref = app[1].names("dress")[0]
    args = tuple(a.format(ref=ref) if isinstance(a, str) else a for a in args)
    with pytest.raises(AppError, match=message) as err:
        client.predict(*args, api_name="/search")
    assert "Traceback" not in str(err.value)
    assert client.predict("dress", ref, "is red", 3, api_name="/search")["hits"]


def all_files(folder: Path):
    return [p for p in Path(folder).rglob("*") if p.is_file()]


def test_no_copy_of_an_upload_remains_on_disk(client, app, tmp_path):
    from gradio_client import handle_file

    rng = np.random.default_rng(7)
    photo = tmp_path / "holiday-photo-7.png"
    Image.fromarray((rng.random((90, 70, 3)) * 255).astype(np.uint8)).save(photo)
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    client.predict(handle_file(str(photo)), api_name="/ui_upload")
    roots = [Path(os.environ["GRADIO_TEMP_DIR"])]
    leftovers = [p for root in roots if root.exists() for p in all_files(root)
                 if p.name == photo.name or hashlib.sha256(p.read_bytes()).hexdigest() == digest]
    assert leftovers == []


def test_only_gallery_images_and_assets_are_served(app, http_status):
    fetch = http_status
    _, catalog, base = app
    image = catalog.image_path("dress", catalog.names("dress")[0]).resolve()
    assert fetch(f"{base}gradio_api/file={image}") == 200
    assert fetch(f"{base}gradio_api/file={PROJECT_DIR / 'assets' / 'synthetic_world.png'}") == 200
    for secret in [PROJECT_DIR / "weights" / "fashioniq.safetensors", PROJECT_DIR / "app.py", Path("/etc/passwd"),
                   image.parent / ".." / ".." / "fashioniq" / "synth.json"]:
        assert fetch(f"{base}gradio_api/file={secret}") in (403, 404), secret


def readme_row(title_fragment: str, table_header: str) -> str:
    """The Combiner row of the README table that follows ``table_header``."""
    text = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
    table = text[text.index(table_header):]
    return next(line for line in table.splitlines() if title_fragment in line)


def test_validation_browser_reproduces_the_published_numbers(app):
    """The batch ranks of the served galleries give exactly the README's (eval's) Combiner figures."""
    _, catalog, _ = app
    row = readme_row("Combiner (stage 2)", "FashionIQ layout, Recall@10")
    for category in ("dress", "shirt", "toptee"):
        summary = catalog.rank_split(category).summary
        assert f"{summary['R@10']:.2f} / {summary['R@50']:.2f}" in row, category
    summary = catalog.rank_split("scenes").summary
    cells = [c.strip(" *") for c in readme_row("Combiner (stage 2)", "CIRR layout (reference removed)").split("|")]
    want = [f"{summary[k]:.2f}" for k in ("R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "avg")]
    assert cells[2:10] == want


def test_compare_works_with_an_uploaded_reference(client, tmp_path):
    from gradio_client import handle_file

    photo = tmp_path / "upload.png"
    Image.fromarray((np.random.default_rng(2).random((70, 60, 3)) * 255).astype(np.uint8)).save(photo)
    client.predict(handle_file(str(photo)), api_name="/ui_upload")
    out = client.predict("is darker", 6, api_name="/ui_compare")
    headers, galleries = out[:4], out[4:]
    assert [h.split("**")[1] for h in headers] == ["Combiner", "Sum (stage 1)", "Image only", "Text only"]
    assert all(len(g) == 6 for g in galleries)


def test_each_handler_answers_only_its_declared_outputs(app):
    """Values keyed by component: every key a handler returns is an output of its event."""
    import types

    import gradio as gr

    from cir_demo.ui.handlers import TAP_MODES, Handlers
    from cir_demo.ui.layout import build_page

    _, catalog, _ = app
    with gr.Blocks():
        page = build_page(catalog)
        h = Handlers(catalog, page)
    pick = types.SimpleNamespace(index=1)
    arrived = h.arrive(None)
    state = arrived[page.state]
    names = arrived[page.page_names]
    searched = h.search(state, "is darker", 10, "combiner")
    browsed = h.browse("dress", "combiner", "all", 10, "", "worst first", None, None)
    calls = {"arrive": arrived, "switch_gallery": h.switch_gallery("scenes", "combiner", 10),
             "pick": h.pick(state, names, pick), "random": h.random(state), "back": h.back(state),
             "previous_page": h.previous_page(state), "next_page": h.next_page(state), "search": searched,
             "tap_result": h.tap_result(state, searched[page.hit_names], TAP_MODES[0], searched[page.last_query], pick),
             "compare": h.compare(state, "is red", 5),
             "browse": browsed, "load_triplet": h.load_triplet(browsed[page.browsed], 10, "combiner", pick)}
    why = h.tap_result(state, searched[page.hit_names], TAP_MODES[1], searched[page.last_query], pick)
    assert set(why) == {page.why} and "Why #2" in why[page.why] and "data:image/jpeg;base64," in why[page.why]
    for name, out in calls.items():
        assert isinstance(out, dict) and out and set(out) <= set(h.outputs(name)), name
    assert len(searched[page.hit_names]) == 10 and "Top 10" in searched[page.status]
    with pytest.raises(gr.Error, match="expired"):
        h.search(None, "is red", 5, "combiner")
    with pytest.raises(gr.Error, match="pick an image"):
        h.pick(state, names, types.SimpleNamespace(index=10 ** 6))
