"""Build and launch the app for a deployment config (``app.py`` and ``python -m cir_demo serve``)."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Optional

from cir_demo.config import PROJECT_DIR
from cir_demo.serve.deploy import CONFIG_ENV

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help=f"deployment config (TOML); default ${CONFIG_ENV}, else the built-in offline world")
    parser.add_argument("--host", default=None,
                        help=f"address to bind (default $GRADIO_SERVER_NAME, else {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default $GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--public-url", default=None,
                        help="the URL people open (QR code, share links); default: the config's, the Space's")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--images", default=None, metavar="FOLDER",
                        help="also serve this folder of images as a gallery (first on the page): indexed on "
                             "first use, then only new or changed files")
    parser.add_argument("--bundle", default=None,
                        help="the bundle (model) that serves --images (default: the config's first)")


def own_temp_folder() -> str:
    """The folder where Gradio keeps uploads and its cache: ``$GRADIO_TEMP_DIR`` when set, else a
    folder of this process's own, removed at exit (so nothing the app writes outlives it)."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return os.environ["GRADIO_TEMP_DIR"]
    folder = tempfile.mkdtemp(prefix="cir_demo-")
    os.environ["GRADIO_TEMP_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def build_app(config: Optional[str] = None, *, public_url: Optional[str] = None, device: Optional[str] = None,
              progress: bool = True, images: Optional[str] = None, bundle: Optional[str] = None):
    """(demo, catalog): load the deployment (preparing what is missing), then build the page;
    ``images``: a folder served as one more gallery, first, by ``bundle``."""
    temp = own_temp_folder()  # before any component exists: each reads the folder when it is made
    import gradio as gr

    from cir_demo.serve.deploy import read_config
    from cir_demo.serve.prepare import load_deployment
    from cir_demo.ui.layout import build_demo
    from cir_demo.ui.zerogpu import on_zerogpu, serving_device

    start = time.perf_counter()
    deployment = read_config(config)
    if images:
        deployment = deployment.with_folder(images, bundle)
    catalog = load_deployment(deployment, device=device or serving_device(), progress=progress,
                              report=lambda line: print(line, file=sys.stderr, flush=True))
    if not on_zerogpu():  # there, no GPU work may happen outside a request
        catalog.warm_up()
    # Only the gallery folders and our assets are served as files; nothing else is reachable.
    gr.set_static_paths([*catalog.image_roots(), PROJECT_DIR / "assets"])
    demo = build_demo(catalog, public=public_url)
    print(f"app built in {time.perf_counter() - start:.1f} s (uploads pass through {temp})",
          file=sys.stderr, flush=True)
    return demo, catalog


def serving_threads(cores: Optional[int] = None) -> int:
    """Torch threads per request: the cores shared by the searches that run at once. Two searches
    with two threads each on two cores make every op wait for a descheduled thread (a 1 ms text
    tower then took 200 ms); one thread each keeps both cores busy with no waiting."""
    import torch

    from cir_demo.ui.layout import LIGHT

    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // LIGHT["concurrency_limit"])
    torch.set_num_threads(threads)
    return threads


def launch(demo, *, host: Optional[str] = None, port: Optional[int] = None, **kwargs):
    """Launch on ``host`` (default 127.0.0.1 unless Gradio's env variables say otherwise), with
    every size a stranger controls bounded (``cir_demo.ui.limits``)."""
    from starlette.middleware import Middleware

    from cir_demo.ui.guard import RequestGuard, event_tables
    from cir_demo.ui.layout import css
    from cir_demo.ui.limits import (GRADIO_QUEUE_ENV, MAX_QUEUE, MAX_UPLOAD_BYTES, QUEUE_STATUS_EVERY_S,
                                    SESSION_CAPACITY, session_reaper)
    from cir_demo.ui.uploads import upload_folder

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a stop (Docker, Spaces) runs the exit clean-up
    serving_threads()
    host = host or os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST
    port = port or int(os.environ.get("GRADIO_SERVER_PORT", 0) or 0) or None
    for name, value in GRADIO_QUEUE_ENV.items():
        os.environ.setdefault(name, value)  # read when the queue is made, just below
    demo.queue(default_concurrency_limit=2, max_size=MAX_QUEUE, status_update_rate=QUEUE_STATUS_EVERY_S)
    app_kwargs = {"middleware": [Middleware(RequestGuard, upload_folder=upload_folder, **event_tables(demo))],
                  "lifespan": session_reaper(upload_folder=upload_folder)}
    block = not kwargs.pop("prevent_thread_lock", False)
    quiet = kwargs.pop("quiet", False)
    out = demo.launch(server_name=host, server_port=port, css=css(), footer_links=["api"],
                      max_file_size=MAX_UPLOAD_BYTES, state_session_capacity=SESSION_CAPACITY,
                      app_kwargs=app_kwargs, quiet=True, prevent_thread_lock=True, **kwargs)
    if not quiet:  # our own line instead of Gradio's, which also advertises a public share link this app never makes
        print(f"serving on {demo.local_url} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    if block:
        demo.block_thread()
    return out


def run(args: argparse.Namespace) -> int:
    demo, _ = build_app(args.config, public_url=args.public_url, device=args.device, images=args.images,
                        bundle=args.bundle)
    launch(demo, host=args.host, port=args.port)
    return 0
