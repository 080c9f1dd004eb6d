"""Shared test setup: offline, quiet, deterministic, small; one launched app for the app tests."""

import os
import socket
import tempfile

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Gradio's upload/cache folder for this test session only, so tests can look inside it.
os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="cir-gradio-")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def http_status():
    """GET a URL and return its HTTP status code (errors included)."""
    import urllib.error
    import urllib.request

    def get(url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
    return get


@pytest.fixture(scope="session")
def tiny_training_world(tmp_path_factory):
    """The tiny synthetic world (seed 3) the training tests run on."""
    from cir_demo.data.synth import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root, size="tiny", seed=3, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory):
    """A random-initialised cir-tiny CLIP saved as our checkpoint."""
    from cir_demo.model import load_clip, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    save_checkpoint(path, clip=load_clip("cir-tiny"))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    """The built-in deployment (what `python app.py` serves), launched on a free local port.

    Yields (demo, catalog, base_url). The world's val images and the indexes are made in a
    temporary cache, as on a fresh machine.
    """
    from cir_demo.ui.serve import build_app, launch

    # CIR_DEMO_TEST_CACHE reuses a prepared cache between local runs (CI always starts fresh).
    cache = os.environ.get("CIR_DEMO_TEST_CACHE") or tmp_path_factory.mktemp("app-cache")
    old = os.environ.get("CIR_DEMO_CACHE")
    os.environ["CIR_DEMO_CACHE"] = str(cache)
    try:
        demo, catalog = build_app(None, progress=False, device="cpu")
        port = free_port()
        launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
        yield demo, catalog, f"http://127.0.0.1:{port}/"
    finally:
        if old is None:
            os.environ.pop("CIR_DEMO_CACHE", None)
        else:
            os.environ["CIR_DEMO_CACHE"] = old
    demo.close()


@pytest.fixture(scope="session")
def folder_app(app, tmp_path_factory):
    """``python app.py --images FOLDER``: the built-in galleries and a folder of images, launched."""
    import numpy as np
    from PIL import Image

    from cir_demo.ui.serve import build_app, launch

    root = tmp_path_factory.mktemp("mine") / "my photos"
    root.mkdir()
    for i in range(9):
        rng = np.random.default_rng(40 + i)
        pixels = np.clip(rng.normal(rng.integers(0, 256, 3), 30, (80, 60 + i, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"p{i}.jpg")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    demo, catalog = build_app(None, progress=False, device="cpu", images=str(root))
    port = free_port()
    launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    yield demo, catalog, f"http://127.0.0.1:{port}/", root
    demo.close()
