"""The app's own speed: start-up to a served page, and query latency server-side and round trip.

    python -m cir_demo.ui.bench_app [--queries 200] [--starts]

Prints JSON lines (with the CPU model). ``--starts`` times ``python app.py`` from a fresh process
to the first served page, twice: with an empty cache (cold: the world's val images and the indexes
are made) and again with the cache it left (warm). Latency: the Search button's handler
(``Handlers.search``: query + widget values + JSON file) and the ``/search`` endpoint through
``gradio_client`` (HTTP + queue + JSON), both for gallery-reference queries at K=50.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from cir_demo.bench.serving import percentiles
from cir_demo.config import PROJECT_DIR
from cir_demo.config.runtime import cpu_description


def emit(name: str, **fields) -> None:
    print(json.dumps({"bench": name, **fields, **cpu_description()}), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_start(cache: str, timeout: float = 300.0) -> float:
    """Seconds from spawning ``python app.py`` to the first HTTP 200 of its page."""
    port = free_port()
    env = {**os.environ, "CIR_DEMO_CACHE": cache, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(PROJECT_DIR / "app.py"), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("the app did not serve a page in time")
    finally:
        proc.terminate()
        proc.wait(30)


def bench_starts() -> None:
    with tempfile.TemporaryDirectory(prefix="cir-start-") as cache:
        emit("app_start_cold_s", seconds=round(time_start(cache), 2))
        emit("app_start_warm_s", seconds=round(time_start(cache), 2))


def bench_queries(queries: int, seed: int = 0) -> None:
    from gradio_client import Client

    from cir_demo.ui import session as S
    from cir_demo.ui.handlers import Handlers
    from cir_demo.ui.serve import build_app, launch

    demo, catalog = build_app(None, progress=False)
    handlers = Handlers(catalog)
    rng = random.Random(seed)
    cases = []
    for _ in range(queries):
        gallery = rng.choice([g.name for g in catalog.galleries()])
        reference = catalog.random_reference(gallery, rng=rng)
        captions = catalog.suggestions(gallery, reference) or ["is darker"]
        cases.append((gallery, reference, rng.choice(captions)))
    for label, cached in (("new caption", False), ("cached caption", True)):
        samples = []
        for gallery, reference, caption in cases:
            if not cached:
                for engine in catalog.bundles.values():
                    engine.clear_caches()
            state = S.restart({}, gallery, {"name": reference})
            start = time.perf_counter()
            handlers.search(state, caption, 50, "combiner")
            samples.append((time.perf_counter() - start) * 1000)
        emit("app_search_handler_ms", caption=label, k=50, **percentiles(samples))
    port = free_port()
    launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    samples = []
    for gallery, reference, caption in cases:
        start = time.perf_counter()
        client.predict(gallery, reference, caption, 50, "combiner", api_name="/search")
        samples.append((time.perf_counter() - start) * 1000)
    emit("app_search_round_trip_ms", k=50, client="gradio_client", **percentiles(samples))
    demo.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cir_demo.ui.bench_app", description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--starts", action="store_true", help="also time cold and warm starts of app.py")
    args = parser.parse_args(argv)
    if args.starts:
        bench_starts()
    bench_queries(args.queries)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
