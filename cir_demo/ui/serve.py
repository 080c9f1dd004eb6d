"""Build and launch the app for a deployment config (``app.py`` and ``python -m cir_demo serve``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional, Sequence

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


def build_app(config: Optional[str] = None, *, public_url: Optional[str] = None, device: Optional[str] = None,
              progress: bool = True):
    """(demo, catalog): load the deployment (preparing what is missing), then build the page."""
    import gradio as gr

    from cir_demo.serve.prepare import load_deployment
    from cir_demo.ui.layout import build_demo
    from cir_demo.ui.zerogpu import on_zerogpu, serving_device

    start = time.perf_counter()
    catalog = load_deployment(config, device=device or serving_device(), progress=progress,
                              report=lambda line: print(line, file=sys.stderr, flush=True))
    if not on_zerogpu():  # there, no GPU work may happen outside a request
        catalog.warm_up()
    # Only the gallery folders and our assets are served as files; nothing else is reachable.
    gr.set_static_paths([*catalog.image_roots(), PROJECT_DIR / "assets"])
    demo = build_demo(catalog, public=public_url)
    print(f"app built in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return demo, catalog


def launch(demo, *, host: Optional[str] = None, port: Optional[int] = None, **kwargs):
    """Launch on ``host`` (default 127.0.0.1 unless Gradio's env variables say otherwise)."""
    from cir_demo.ui.layout import css

    host = host or os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST
    port = port or int(os.environ.get("GRADIO_SERVER_PORT", 0) or 0) or None
    demo.queue(default_concurrency_limit=4)
    return demo.launch(server_name=host, server_port=port, css=css(), footer_links=["api"], **kwargs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py", description="The composed image retrieval demo.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(args)
    return 0


def run(args: argparse.Namespace) -> int:
    demo, _ = build_app(args.config, public_url=args.public_url, device=args.device)
    launch(demo, host=args.host, port=args.port)
    return 0
