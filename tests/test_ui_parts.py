"""The app's pieces without a server: session chain, deep links, QR, browser filters, uploads, ZeroGPU."""

import importlib.machinery
import sys
import types
from urllib.parse import parse_qs

import numpy as np
import pytest
from PIL import Image

from cir_demo.serve.results import SplitRanks, TripletRank
from cir_demo.ui import session as S
from cir_demo.ui.browse import filter_rows, table
from cir_demo.ui.links import parse_link, public_url, query_string


def test_refinement_chain_push_back_and_limits():
    state = S.new_state("dress")
    assert S.current(state) is None and "No reference yet" in S.crumbs(state)
    a = S.push(state, {"name": "a"})
    b = S.push(a, {"name": "b"})
    assert S.push(b, {"name": "b"}) == b  # clicking the current reference adds no step
    assert state["chain"] == [] and a["chain"] == [{"name": "a"}]  # never mutated
    assert S.crumbs(b) == "Reference: `a` → **`b`**"
    assert S.reference_name(S.back(b)) == "a" and S.back(S.back(b)) == S.back(b)  # the first step stays
    long = state
    for i in range(S.MAX_CHAIN + 5):
        long = S.push(long, {"name": str(i)})
    assert len(long["chain"]) == S.MAX_CHAIN and S.reference_name(long) == str(S.MAX_CHAIN + 4)
    up = S.push(b, {"upload": object(), "label": "your upload"})
    assert S.reference_name(up) is None and "**`your upload`**" in S.crumbs(up)


def test_deep_links_round_trip_and_public_url(monkeypatch):
    q = query_string("scenes", "val-3-img1", "add a red ball & make it big", 12, "sum")
    parsed = {k: v[0] for k, v in parse_qs(q).items()}
    assert parse_link({**parsed, "evil": "x"}) == {"gallery": "scenes", "ref": "val-3-img1",
                                                     "q": "add a red ball & make it big", "k": "12", "composer": "sum"}
    assert query_string("dress", None, "", 50, "combiner") == "gallery=dress"
    monkeypatch.delenv("SPACE_HOST", raising=False)
    assert public_url(None, "http://127.0.0.1:7860") == "http://127.0.0.1:7860/"
    monkeypatch.setenv("SPACE_HOST", "you-cir.hf.space")
    assert public_url(None, "http://10.0.0.1:7860") == "https://you-cir.hf.space/"
    assert public_url("https://poster.example/cir", None) == "https://poster.example/cir/"


def test_qr_png_is_a_readable_code_of_the_url():
    import base64
    import io

    import qrcode

    from cir_demo.ui.qr import qr_data_url, qr_image, qr_png

    url = "https://example.org/cir?gallery=dress"
    png = qr_png(url)
    assert png == qr_png(url) and png != qr_png(url + "x") and png.startswith(b"\x89PNG")
    assert base64.b64decode(qr_data_url(url).split(",", 1)[1]) == png
    assert qr_png.cache_info().maxsize <= 32  # a client controls the Host header: the memory is bounded
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape[0] == pixels.shape[1] and set(np.unique(pixels)) == {0, 255}
    # The modules drawn are the code's own matrix for this URL (12 px per module, 4 modules border).
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=1, border=0)
    code.add_data(url)
    code.make(fit=True)
    matrix = np.array(code.get_matrix())
    sampled = pixels[48 + 6::12, 48 + 6::12][:matrix.shape[0], :matrix.shape[1]] == 0
    assert (sampled == matrix).all()
    assert qr_image(url).size == pixels.shape[::-1]


@pytest.mark.parametrize("base", ["http://evil.example<script>/", "http://" + "a" * 300 + ".com/",
                                  "javascript:alert(1)", "http://x.org/**bold**", "http://x.org/](http://y)",
                                  "http://host:99999999/", ""])
def test_a_host_header_is_never_echoed_unless_it_is_a_plain_address(monkeypatch, base):
    monkeypatch.delenv("SPACE_HOST", raising=False)
    assert public_url(None, base) is None
    assert public_url(None, "http://10.1.2.3:7860/cir/") == "http://10.1.2.3:7860/cir/"


def ranks():
    rows = [TripletRank(0, "a", "is red", "t0", 3), TripletRank(1, "b", "is darker red", "t1", 40),
            TripletRank(2, "c", "has stripes", "t2", 11), TripletRank(3, "d", "is red and long", "t3", 1)]
    return SplitRanks("dress", "combiner", rows, {"R@10": 50.0, "R@50": 100.0})


def test_browser_filters_and_orders():
    r = ranks()
    assert [x.index for x in filter_rows(r)] == [1, 2, 0, 3]  # worst first
    assert [x.index for x in filter_rows(r, outcome="hits")] == [0, 3]
    assert [x.index for x in filter_rows(r, outcome="misses", sort="best first")] == [2, 1]
    assert [x.index for x in filter_rows(r, words="RED is", sort="triplet order")] == [0, 1, 3]
    assert [x.index for x in filter_rows(r, rank_min=2, rank_max=11)] == [2, 0]
    assert [x.index for x in filter_rows(r, outcome="hits", hit_at=1)] == [3]
    with pytest.raises(ValueError, match="outcome must be one of"):
        filter_rows(r, outcome="maybe")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="hit_at must be a whole number"):
            filter_rows(r, hit_at=bad)
    headers, body = table(r, filter_rows(r)[:1])
    assert headers == ["#", "rank", "reference", "target", "caption"] and body == [[1, 40, "b", "t1", "is darker red"]]


@pytest.fixture
def upload_root(tmp_path, monkeypatch):
    """A stand-in for Gradio's upload folder, with a sentinel file outside it."""
    from cir_demo.ui import uploads

    root = tmp_path / "uploads"
    root.mkdir()
    monkeypatch.setattr(uploads, "upload_folder", lambda: root.resolve())
    monkeypatch.setattr(uploads, "_recorded_uploads", lambda: None)  # no running app here
    outside = tmp_path / "elsewhere" / "precious.txt"
    outside.parent.mkdir()
    outside.write_text("not yours")
    return root, outside


def test_an_accepted_upload_is_read_once_and_deleted_with_its_folder(upload_root):
    from cir_demo.ui import uploads

    root, _ = upload_root
    folder = root / "abc123"
    folder.mkdir()
    good = folder / "photo.png"
    Image.new("RGBA", (30, 20), (10, 200, 30, 128)).save(good)
    data = good.read_bytes()
    assert uploads.take_upload(str(good)) == data
    assert not good.exists() and not folder.exists()  # the file and the folder Gradio made for it
    notes = root / "notes.png"
    notes.write_bytes(b"not an image at all")
    assert uploads.take_upload(str(notes)) == b"not an image at all" and not notes.exists()


def test_files_outside_the_upload_folder_are_refused_and_untouched(upload_root, tmp_path, monkeypatch):
    from cir_demo.config import PROJECT_DIR
    from cir_demo.ui import uploads

    root, outside = upload_root
    (root / "in").mkdir()
    link = root / "in" / "link.png"
    link.symlink_to(outside)  # a symlink inside the folder, pointing out of it
    linked_dir = root / "dir-link"
    linked_dir.symlink_to(outside.parent, target_is_directory=True)
    monkeypatch.chdir(outside.parent)
    attempts = [str(outside), "precious.txt", f"{root}/../elsewhere/precious.txt", str(link),
                str(linked_dir / "precious.txt"), str(root), str(root / "missing.png"), str(outside.parent),
                str(PROJECT_DIR / "assets" / "synthetic_world.png"), "", "a\0b", 42, None, ["x"]]
    messages = set()
    for path in attempts:
        with pytest.raises(uploads.UploadRefused) as err:
            uploads.take_upload(path)
        messages.add(str(err.value))
    assert messages == {uploads.REFUSED}  # one message: nothing says whether a path exists
    assert outside.read_text() == "not yours" and link.is_symlink() and linked_dir.is_symlink()
    assert (PROJECT_DIR / "assets" / "synthetic_world.png").is_file()


def test_only_files_gradio_recorded_as_uploaded_are_accepted(upload_root, monkeypatch):
    from cir_demo.ui import uploads

    root, _ = upload_root
    cached = root / "f00d" / "qr.png"  # something else Gradio keeps in its folder
    cached.parent.mkdir()
    cached.write_bytes(b"png")
    monkeypatch.setattr(uploads, "_recorded_uploads", lambda: {str(root / "other.png")})
    with pytest.raises(uploads.UploadRefused):
        uploads.take_upload(str(cached))
    assert cached.exists()
    monkeypatch.setattr(uploads, "_recorded_uploads", lambda: {str(cached)})
    assert uploads.take_upload(str(cached)) == b"png" and not cached.exists()


def test_a_payload_names_an_upload_or_nothing(upload_root):
    from cir_demo.ui import uploads

    root, _ = upload_root
    photo = root / "d1" / "p.png"
    photo.parent.mkdir()
    photo.write_bytes(b"png bytes")
    assert uploads.payload_bytes(types.SimpleNamespace(path=str(photo))) == b"png bytes" and not photo.exists()
    assert uploads.payload_bytes(None) is None
    for path, match in [("http://169.254.169.254/latest", "not as links"), ("https://example.org/x.png", "not as links"),
                        (None, "not uploaded")]:
        with pytest.raises(uploads.UploadRefused, match=match):
            uploads.payload_bytes(types.SimpleNamespace(path=path))


def test_the_upload_button_describes_its_api_as_gradio_does_without_rebuilding_it():
    import gradio as gr

    from cir_demo.ui.uploads import UploadPhoto

    ours, gradios = UploadPhoto("photo", render=False), gr.UploadButton("photo", render=False)
    first = ours.api_info()
    assert first == gradios.api_info() == ours.api_info_as_input() and first["title"] == "FileData"
    first["title"] = "changed by a caller"
    assert ours.api_info()["title"] == "FileData"  # each caller gets its own copy


def test_zerogpu_wraps_model_calls_only_on_a_zerogpu_space(monkeypatch):
    from cir_demo.ui import zerogpu

    def fn():
        return 1

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert zerogpu.gpu(fn) is fn and zerogpu.serving_device() is None
    fake = types.ModuleType("spaces")
    fake.__spec__ = importlib.machinery.ModuleSpec("spaces", None)
    fake.GPU = lambda f: ("wrapped", f)
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert zerogpu.gpu(fn) is fn  # the package alone is not a ZeroGPU Space
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert zerogpu.gpu(fn) == ("wrapped", fn) and zerogpu.serving_device() == "cuda"
    # every model call goes through the catalog, which is wrapped once: handlers are covered by construction
    catalog = types.SimpleNamespace(**{name: (lambda name=name: name) for name in zerogpu.MODEL_CALLS},
                                    title="t", galleries=lambda: [])
    wrapped = zerogpu.gpu_catalog(catalog)
    assert all(getattr(wrapped, name)[0] == "wrapped" for name in zerogpu.MODEL_CALLS)
    assert wrapped.title == "t" and wrapped.galleries() == []
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert zerogpu.gpu_catalog(catalog) is catalog


def test_every_catalog_method_that_runs_a_model_is_wrapped_for_zerogpu():
    """A catalog method that reaches the engine's model code must be in MODEL_CALLS."""
    import ast
    import inspect

    from cir_demo.serve import catalog as module
    from cir_demo.ui.zerogpu import MODEL_CALLS

    tree = ast.parse(inspect.getsource(module.Catalog))
    runs_model = {"search", "compare", "rank_known", "image_features", "text_features", "rank_split",
                  "upload_features", "curated", "warm_up"}  # engine / catalog calls that run a model
    for node in tree.body[0].body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            calls = {n.func.attr for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
            if calls & runs_model:
                assert node.name in MODEL_CALLS, node.name


def test_each_search_gets_its_share_of_the_cores():
    import torch

    from cir_demo.ui.layout import LIGHT
    from cir_demo.ui.serve import serving_threads

    before = torch.get_num_threads()
    try:
        assert serving_threads(2) == 1 and torch.get_num_threads() == 1  # two searches at once on two cores
        assert serving_threads(16) == 16 // LIGHT["concurrency_limit"] and serving_threads(1) == 1
    finally:
        torch.set_num_threads(before)
