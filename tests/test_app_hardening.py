"""Strangers' input through the launched app: every bad input gets a clear message, the server keeps
serving, no stack trace reaches the user, uploads are not kept, only gallery files are served;
and a short load run (the full one is ``python -m cir_demo.ui.bench_load``)."""

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cir_demo.ui.bench_load import make_cases, run_load

pytestmark = pytest.mark.slow  # a launched app

GENERIC = "something went wrong on our side"


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[2], verbose=False)


def still_serving(client, app):
    ref = app[1].names("dress")[0]
    assert len(client.predict("dress", ref, "is darker", 3, api_name="/search")["hits"]) == 3


def refused(client, *args, api_name, match):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client.predict(*args, api_name=api_name)
    text = str(err.value)
    assert "Traceback" not in text and GENERIC not in text and match in text, text
    return text


CAPTIONS = ["x" * 1000, "🙂🙂 make it 🔴 and 👗", "اجعلها حمراء وأطول", "עם שרוולים ארוכים",
            "is darker\x00\x07\x1b[31m with\ttabs\r\nand newlines", "IS DARKER", "  is darker  "]


@pytest.mark.parametrize("caption", CAPTIONS)
def test_odd_captions_are_answered(client, app, caption):
    ref = app[1].names("dress")[5]
    out = client.predict("dress", ref, caption, 7, api_name="/search")
    assert len(out["hits"]) == 7 and all(np.isfinite(h["score"]) for h in out["hits"])


def test_captions_past_the_limit_are_refused_clearly(client, app):
    text = refused(client, "dress", app[1].names("dress")[0], "x" * 1_500, 5, api_name="/search",
                   match="please keep it under 1,000")
    assert len(text) < 300
    from gradio_client.exceptions import ValidationError

    with pytest.raises(ValidationError, match="too large") as err:  # refused before the app (or a session) holds it
        client.predict("dress", app[1].names("dress")[0], "x" * 10_000, 5, api_name="/search")
    assert len(str(err.value)) < 300
    still_serving(client, app)


@pytest.mark.parametrize("caption", ["", "   ", "\n\t "])
def test_empty_captions_are_refused_clearly(client, app, caption):
    refused(client, "dress", app[1].names("dress")[0], caption, 5, api_name="/search", match="please write")
    still_serving(client, app)


@pytest.mark.parametrize("k", [0, -5, 10 ** 9, 2.5, "5", "fifty", None])
def test_bad_k_is_refused_clearly(client, app, k):
    refused(client, "dress", app[1].names("dress")[0], "is red", k, api_name="/search", match="K must be")
    still_serving(client, app)


@pytest.mark.parametrize("gallery, reference, composer, match", [
    ("hats", "x", "combiner", "unknown gallery 'hats'"),
    ("dress", "no-such-image", "combiner", "unknown gallery image name"),
    ("dress", "../../../../etc/passwd", "combiner", "unknown gallery image name"),
    ("dress", "/etc/passwd", "combiner", "unknown gallery image name"),
    ("dress", "{ref}", "magic", "unknown composer 'magic'"),
    ("scenes", "{ref}", "combiner", "unknown gallery image name"),  # a dress image is not in scenes
])
def test_unknown_names_are_refused_clearly(client, app, gallery, reference, composer, match):
    reference = reference.format(ref=app[1].names("dress")[0])
    refused(client, gallery, reference, "is red", 5, composer, api_name="/search", match=match)
    still_serving(client, app)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (8-bit RGB) with a tiny, truncated IDAT: a bomb by its header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo(mode="RGB", size=(60, 80)):
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).convert(mode)


def animated() -> bytes:
    frames = [photo().convert("P"), photo(size=(60, 80)).rotate(90).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


GOOD_UPLOADS = {
    "cmyk.jpg": lambda: encoded(photo("CMYK"), "JPEG"),
    "gray16.png": lambda: encoded(Image.fromarray((np.arange(4800).reshape(60, 80) * 13).astype(np.uint16)), "PNG"),
    "palette.png": lambda: encoded(photo().convert("P"), "PNG", transparency=3),
    "alpha.png": lambda: encoded(photo("RGBA"), "PNG"),
    "animated.gif": animated,
    "tiny.png": lambda: encoded(photo(size=(1, 1)), "PNG"),
}
BAD_UPLOADS = {
    "notes.png": lambda: b"this is not an image, just text with a .png name",
    "empty.jpg": lambda: b"",
    "truncated.jpg": lambda: encoded(photo(size=(300, 300)), "JPEG")[:700],
    "huge-header.png": lambda: png_header(30_000, 30_000),
    "thin.png": lambda: encoded(Image.new("RGB", (1, 100_000)), "PNG"),
}


def upload(client, tmp_path, name, data):
    from gradio_client import handle_file

    path = tmp_path / name
    path.write_bytes(data)
    return client.predict(handle_file(str(path)), api_name="/ui_upload")


@pytest.mark.parametrize("name", sorted(GOOD_UPLOADS))
def test_unusual_but_valid_uploads_are_used(client, app, tmp_path, name):
    out = upload(client, tmp_path, name, GOOD_UPLOADS[name]())
    assert "your upload" in str(out)
    still_serving(client, app)


@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_bad_uploads_get_a_clear_message(client, app, tmp_path, name):
    from gradio_client.exceptions import AppError

    try:
        out = upload(client, tmp_path, name, BAD_UPLOADS[name]())
    except AppError as err:
        text = str(err)
        assert "Traceback" not in text and GENERIC not in text and ("image" in text or "pixels" in text), text
    else:  # a thin image may be accepted if it is cheap to handle; it must then be a usable reference
        assert name == "thin.png" and "your upload" in str(out)
    still_serving(client, app)
    leftovers = [p for p in Path(os.environ["GRADIO_TEMP_DIR"]).rglob(name)]
    assert leftovers == []


def test_paths_out_of_the_galleries_are_not_served(app, tmp_path, http_status):
    status = http_status
    _, catalog, base = app
    image = catalog.image_path("dress", catalog.names("dress")[0]).resolve()
    folder = image.parent
    attempts = [f"{folder}/../synth.json", f"{folder}/%2e%2e/synth.json", f"{folder}/%2E%2E/%2E%2E/fashioniq/synth.json",
                f"{folder}/..%2fsynth.json", "/etc/passwd", "%2Fetc%2Fpasswd", f"{folder}/../../../../../../etc/passwd"]
    link = folder / "zz-link-out.png"
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    link.symlink_to(secret)
    try:
        attempts.append(str(link))
        for path in attempts:
            assert status(f"{base}gradio_api/file={path}") in (403, 404), path
    finally:
        link.unlink()
    assert status(f"{base}gradio_api/file={image}") == 200


def test_binds_to_loopback_and_never_shares():
    """No call in the app's launch path passes a ``share`` keyword; the default host is loopback."""
    import ast

    from cir_demo.config import PROJECT_DIR
    from cir_demo.ui import serve

    assert serve.DEFAULT_HOST == "127.0.0.1"
    for path in (PROJECT_DIR / "app.py", Path(serve.__file__)):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        keywords = [kw.arg for node in ast.walk(tree) if isinstance(node, ast.Call) for kw in node.keywords]
        assert "share" not in keywords, path


def test_short_load_run_has_no_errors(app):
    _, catalog, base = app
    result = run_load(base, make_cases(base, 40, seed=1), users=8, queries=3, max_seconds=120)
    summary = result.summary()
    assert summary["errors"] == 0, summary["first_errors"]
    assert summary["requests"] == 24
    assert summary["n"] + summary["errors"] == 24 - 8  # each user's first search is reported apart
    # Gradio's queue keeps no history of events (its monitoring summary was rebuilt from up to
    # 10,000 of them after every event) and sends queue positions on a clock, not at every job.
    demo = app[0]
    assert len(demo._queue.event_analytics) <= 1 and demo._queue.events_recorded >= 24
    assert demo._queue.live_updates is False
    with pytest.raises(ValueError, match="loopback"):
        run_load("http://192.0.2.1:7860/", [], users=1, queries=1)
