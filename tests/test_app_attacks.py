"""The launched app attacked the way a stranger would: raw HTTP to Gradio's queue and upload
routes, any payload to any event by ``fn_index``, crafted file payloads, data: URLs, big bodies.

Every file a test offers the server as bait is a sentinel made in a temporary folder (or an image of
the test's own temporary gallery cache); no test ever names a real system file."""

import base64
import json
import os
import struct
import zlib
from pathlib import Path

import pytest

from cir_demo.config import PROJECT_DIR
from cir_demo.ui.http_client import FILE_META, events, fn_index, join, upload

pytestmark = pytest.mark.slow  # a launched app


@pytest.fixture(scope="module")
def base(app):
    return app[2]


@pytest.fixture
def sentinel(tmp_path):
    path = tmp_path / "sentinel" / "precious.txt"
    path.parent.mkdir()
    path.write_text("do not delete")
    return path


def upload_index(base):
    return fn_index(base, "ui_upload")


def serves(base, app) -> bool:
    ref = app[1].names("dress")[0]
    answer = join(base, fn_index(base, "search"), ["dress", ref, "is darker", 3, "combiner"])
    return answer["success"] is True and len(answer["output"][0]["hits"]) == 3


def server_folders() -> list[str]:
    """Folders of the server a stranger does not know (echoing the stranger's own input is fine)."""
    cache = os.environ.get("CIR_DEMO_CACHE") or "-"
    return [str(PROJECT_DIR), os.environ["GRADIO_TEMP_DIR"], str(Path(cache).resolve()),
            os.path.expanduser("~") + "/", os.getcwd() + "/"]


def leaks_a_path(text) -> bool:
    return any(folder in str(text or "") for folder in server_folders())


def file_payloads(path: Path, gradio_dir: Path) -> dict:
    """Every way a client can name ``path`` as an upload."""
    link = gradio_dir / "attack-link" / "photo.png"
    link.parent.mkdir(exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(path)
    relative = os.path.relpath(path, os.getcwd())
    return {
        "meta ok": {"path": str(path), "meta": FILE_META},
        "meta empty": {"path": str(path), "meta": {}},
        "meta wrong type": {"path": str(path), "meta": {"_type": "gradio.Other"}},
        "no meta": {"path": str(path)},
        "relative": {"path": relative},
        "dot-dot through the upload folder": {"path": f"{gradio_dir}/../{os.path.relpath(path, gradio_dir.parent)}"},
        "symlink inside the upload folder": {"path": str(link), "meta": FILE_META},
        "symlink, no meta": {"path": str(link)},
    }


VARIANTS = ["meta ok", "meta empty", "meta wrong type", "no meta", "relative", "dot-dot through the upload folder",
            "symlink inside the upload folder", "symlink, no meta"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_crafted_upload_payload_never_deletes_or_reads_a_file(app, base, sentinel, variant):
    gradio_dir = Path(os.environ["GRADIO_TEMP_DIR"]).resolve()
    payload = file_payloads(sentinel, gradio_dir)[variant]
    answer = join(base, upload_index(base), [payload, None])
    assert sentinel.read_text() == "do not delete", variant
    assert answer["success"] is not True, answer
    assert not leaks_a_path(answer["error"]) and "do not delete" not in str(answer)
    assert serves(base, app)


def test_gallery_images_and_assets_survive_a_correct_file_tag(app, base):
    """Gradio passes files inside its static folders through unchecked; the app must not use them."""
    catalog = app[1]
    image = catalog.image_path("dress", catalog.names("dress")[7]).resolve()
    asset = PROJECT_DIR / "assets" / "synthetic_world.png"
    before = image.read_bytes()
    answer = join(base, upload_index(base), [{"path": str(image), "meta": FILE_META}, None])
    assert image.read_bytes() == before and answer["success"] is not True
    assert not leaks_a_path(answer["error"])
    # assets/ is the project's own folder: prove the rule refuses it without offering the file itself.
    from cir_demo.ui.uploads import UploadRefused, accept_upload

    with pytest.raises(UploadRefused):
        accept_upload(str(asset))
    assert serves(base, app)


def test_the_refusal_says_nothing_about_whether_a_path_exists(app, base, sentinel, tmp_path):
    answers = {join(base, upload_index(base), [{"path": str(p), "meta": {}}, None])["error"]
               for p in (sentinel, sentinel.parent, tmp_path / "no-such-file.png")}
    assert len(answers) == 1 and not leaks_a_path(answers.pop())


def test_a_link_is_never_fetched(app, base):
    """A client naming a URL instead of an upload makes the server fetch nothing (a local server
    here counts the requests it gets)."""
    import http.server
    import threading

    hits = []

    class Count(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Count)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/photo.png"
        for payload in ({"path": url, "meta": FILE_META}, {"path": url}, {"path": None, "url": url, "meta": FILE_META},
                        {"path": "/x.png", "url": url, "meta": FILE_META}):
            answer = join(base, upload_index(base), [payload, None])
            assert answer["success"] is not True and not leaks_a_path(answer["error"]), answer
    finally:
        server.shutdown()
    assert hits == []


def test_a_real_upload_still_works_and_is_deleted(app, base):
    from PIL import Image
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (40, 50), (200, 30, 30)).save(buffer, "PNG")
    status, paths = upload(base, "holiday.png", buffer.getvalue())
    assert status == 200 and len(paths) == 1
    answer = join(base, upload_index(base), [{"path": paths[0], "meta": FILE_META, "orig_name": "holiday.png"}, None])
    assert answer["success"] is True and "your upload" in json.dumps(answer["output"])
    assert not Path(paths[0]).exists()


def zero_png(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG, compressed row by row (small on the wire, huge when decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_a_data_url_is_not_decoded(app, base):
    """Images arrive as uploads only: a data: URL (here 100 Mpx in a few hundred KB) is refused unread."""
    url = "data:image/png;base64," + base64.b64encode(zero_png(10_000, 10_000)).decode()
    answer = join(base, upload_index(base), [{"path": None, "url": url, "meta": FILE_META}, None])
    assert answer["status"] == 413 or answer["success"] is not True
    small = "data:image/png;base64," + base64.b64encode(zero_png(20, 20)).decode()
    answer = join(base, upload_index(base), [{"path": None, "url": small, "meta": FILE_META}, None])
    assert answer["success"] is not True
    assert serves(base, app)


def test_oversized_uploads_are_refused_before_they_are_stored(app, base):
    from cir_demo.ui.limits import MAX_UPLOAD_BYTES

    folder = Path(os.environ["GRADIO_TEMP_DIR"])
    before = sum(1 for p in folder.rglob("*") if p.is_file())
    status, _ = upload(base, "big.jpg", os.urandom(MAX_UPLOAD_BYTES + 2 ** 20))
    assert status == 413
    after = sum(1 for p in folder.rglob("*") if p.is_file())
    assert after <= before  # nothing of the refused body stays on disk
    status, _ = upload(base, "ok.jpg", b"\xff\xd8" + os.urandom(2 ** 20))
    assert status == 200


def test_unused_uploads_are_swept_within_minutes(app, base):
    """Files a client uploads but never uses are Gradio's to sweep; the sweep runs every few minutes."""
    from gradio.route_utils import delete_files_created_by_app

    demo = app[0]
    assert demo.delete_cache is not None and demo.delete_cache[1] <= 15 * 60
    status, paths = upload(base, "orphan.png", b"\x89PNG orphan")
    assert status == 200 and Path(paths[0]).exists()
    delete_files_created_by_app(demo, age=0)  # what the sweep does, without waiting for it
    assert not Path(paths[0]).exists()


def test_bodies_past_the_limit_and_unknown_events_are_refused_cleanly(app, base):
    from cir_demo.ui.limits import MAX_JSON_BYTES

    huge = json.dumps({"data": ["x" * (MAX_JSON_BYTES + 10)], "fn_index": 0, "session_hash": "big"}).encode()
    assert join(base, 0, None, raw_body=huge)["status"] == 413
    for index in (999, -1, "0", 2.5, True):
        answer = join(base, index, [])
        assert answer["status"] in (400, 422) or answer["success"] is not True, (index, answer)
        assert answer["status"] != 500, index
    assert serves(base, app)


HOSTILE = {
    "file tag to the sentinel": lambda s: {"path": str(s), "meta": FILE_META},
    "untagged path to the sentinel": lambda s: {"path": str(s)},
    "long string": lambda s: "é" * 200_000,
    "nested": lambda s: [[[[{"path": str(s)}]]]],
    "number": lambda s: 1e308,
    "none": lambda s: None,
}


def test_every_event_of_the_page_survives_any_payload(app, base, sentinel, capfd):
    """Each event (named, undocumented and unnamed alike) gets every hostile value in every input."""
    for index, dep in events(base).items():
        arity = len(dep.get("inputs", []))
        shapes = [[make(sentinel)] * arity for make in HOSTILE.values()] + [[], [None] * (arity + 3)]
        for data in shapes:
            answer = join(base, index, data)
            assert answer["status"] != 500, (index, dep.get("api_name"), answer)
            assert not leaks_a_path(answer["error"]), (index, dep.get("api_name"), answer["error"])
            assert len(str(answer["error"] or "")) < 2000, (index, dep.get("api_name"))
            assert sentinel.read_text() == "do not delete", (index, dep.get("api_name"))
    assert serves(base, app)
    logged = capfd.readouterr()
    assert len(logged.out) + len(logged.err) < 2 ** 20  # a megabyte of input never becomes a megabyte of log


def test_a_huge_name_is_not_echoed(app, base, capfd):
    capfd.readouterr()
    answer = join(base, fn_index(base, "captions"), ["dress", "n" * 2 ** 20])
    assert answer["success"] is not True and len(str(answer["error"])) < 300
    logged = capfd.readouterr()
    assert len(logged.out) + len(logged.err) < 20_000


def test_a_search_writes_no_file_and_the_results_download_needs_no_server(app, base):
    folder = Path(os.environ["GRADIO_TEMP_DIR"])
    before = {p for p in folder.rglob("*") if p.is_file()}
    session = "results-check"
    ref = app[1].names("dress")[3]
    join(base, fn_index(base, "ui_random"), [None], session=session)
    answer = join(base, fn_index(base, "ui_search"), [None, "is darker", 10, "combiner"], session=session)
    assert answer["success"] is True
    payloads = [o for o in answer["output"] if isinstance(o, dict) and "hits" in o]
    assert payloads and len(payloads[0]["hits"]) == 10 and payloads[0]["gallery"] == "dress"
    after = {p for p in folder.rglob("*") if p.is_file()}
    assert after <= before and ref  # nothing new on disk
    assert not list(Path("/tmp").glob(f"cir_demo_results-{os.getpid()}"))


@pytest.mark.parametrize("host", ["evil.example", "a" * 400 + ".example", "x.org<script>alert(1)</script>",
                                  "h1.example:7860", "h2.example:7860", "h3.example:7860"])
def test_a_host_header_is_neither_echoed_nor_a_file(app, base, host):
    """The share text and QR code use a request's own address only when it is a plain host; the code
    is made in memory, so a thousand Host headers make no file. (Gradio itself prefixes file URLs
    with the request's root, which only the sender sees.)"""
    folder = Path(os.environ["GRADIO_TEMP_DIR"])
    before = {p for p in folder.rglob("*") if p.is_file()}
    load = next(i for i, dep in events(base).items() if any(t[1] == "load" for t in dep.get("targets", [])))
    answer = join(base, load, [], headers={"Host": host})
    share = [o for o in answer["output"] if isinstance(o, str) and ("public URL" in o or o.startswith("Open"))]
    assert len(share) == 1
    plain = len(host) < 100 and "<" not in host
    assert (host in share[0]) == plain and "<script>" not in share[0]
    after = {p for p in folder.rglob("*") if p.is_file()}
    assert after <= before


def test_gradio_routes_the_app_does_not_use_are_closed(app, base, http_status):
    folder = Path(os.environ["GRADIO_TEMP_DIR"])
    session = "deep-link-probe"
    join(base, fn_index(base, "ui_random"), [None], session=session)
    for route in (f"gradio_api/deep_link?session_hash={session}", "gradio_api/monitoring/summary",
                  "gradio_api/file=http://93.184.215.14/x.png", "gradio_api/file=https://example.org/x.png",
                  f"?deep_link={session}"):
        assert http_status(base + route) == 404, route
    assert not (folder / "deep_links").exists()  # a session's state is never written to disk


def progressive_jpeg_with_scans(scans: int) -> bytes:
    """A small progressive JPEG whose last scan is repeated: a few bytes each, a full pass each to decode."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (2000, 2000), 128).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last = data.rindex(b"\xff\xda")
    return data[:last] + data[last:-2] * scans + b"\xff\xd9"


@pytest.mark.parametrize("name, make, match", [
    ("scans.jpg", lambda: progressive_jpeg_with_scans(500), "scans"),
    ("tiny-huge.webp", lambda: _encode("WEBP", (9000, 9000), lossless=True), "more than a photo needs"),
    ("photo.jp2", lambda: _encode("JPEG2000", (64, 64)), "not a JPEG, PNG, WebP or GIF"),
    ("photo.tiff", lambda: _encode("TIFF", (64, 64)), "not a JPEG, PNG, WebP or GIF"),
])
def test_images_that_cost_far_more_than_their_bytes_are_refused_unread(app, base, name, make, match):
    status, paths = upload(base, name, make())
    assert status == 200
    answer = join(base, upload_index(base), [{"path": paths[0], "meta": FILE_META}, None])
    assert answer["success"] is not True and match in str(answer["error"]), answer["error"]
    assert not Path(paths[0]).exists() and serves(base, app)


def _encode(fmt: str, size, **kwargs) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 60, 90)).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_the_guard_reads_the_pages_own_events(app, base):
    from cir_demo.ui.guard import event_tables

    tables = event_tables(app[0])
    assert {upload_index(base), fn_index(base, "ui_browse"), fn_index(base, "browse")} <= tables["heavy_events"]()
    assert fn_index(base, "ui_search") not in tables["heavy_events"]()
    assert tables["inputs"]()[fn_index(base, "search")] == 5 and tables["inputs"]()["search"] == 5
    assert tables["heavy_waiting"]() == 0
