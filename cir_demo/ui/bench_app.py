"""The app's own speed, measured from outside a ``python app.py`` process: start-up, a search as the
page sends it (server events, round trip, server CPU per search), and ``/search`` via gradio_client.

    python -m cir_demo.ui.bench_app [--queries 200] [--starts] [--app-dir DIR]

Prints JSON lines (with the CPU model). ``--app-dir`` runs another checkout's ``app.py`` (to compare
a change against main: the client side is this checkout's). ``--starts`` times the first served page
from a fresh process with an empty cache (cold: the world's val images and the indexes are made) and
again with the cache it left (warm). A page search is the Search button's click followed through
every server event it chains (read from the page's own config), over raw HTTP, as a browser sends it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from cir_demo.config import PROJECT_DIR
from cir_demo.config.runtime import cpu_description
from cir_demo.ui.http_client import action_events, element, join


def emit(name: str, **fields) -> None:
    print(json.dumps({"bench": name, **fields, **cpu_description()}), flush=True)


def percentiles(samples: list) -> dict:
    cuts = statistics.quantiles(samples, n=100, method="inclusive") if len(samples) > 1 else list(samples) * 99
    return {"p50": round(cuts[49], 2), "p95": round(cuts[94], 2), "p99": round(cuts[98], 2), "n": len(samples)}


def api_client(url: str, *, tls_setup: bool = False):
    """A ``gradio_client.Client`` for ``url``. Unless ``tls_setup``, one for plain HTTP: without
    ``ssl_verify=False`` gradio_client loads the system's CA bundle on every call even for
    ``http://`` (about 57 ms of CPU per call here, 4x what the server spends on the search), and on
    loopback that CPU is taken from the server being measured. Over ``http://`` there is no TLS, so
    the flag changes nothing else."""
    from gradio_client import Client

    plain = urlparse(url).scheme == "http" and not tls_setup
    return Client(url, verbose=False, **({"ssl_verify": False} if plain else {}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_process(app_dir: Path, cache: str, timeout: float = 300.0):
    """(process, base URL, seconds to the first served page) of ``app_dir/app.py`` on a free loopback port."""
    port = free_port()
    env = {**os.environ, "CIR_DEMO_CACHE": cache, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("GRADIO_TEMP_DIR", None)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(app_dir / "app.py"), "--port", str(port)], cwd=app_dir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}")
            if time.perf_counter() - start > timeout:
                raise TimeoutError("the app did not serve a page in time")
            try:
                with urllib.request.urlopen(base, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        yield proc, base, time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(30)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_starts(app_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="cir-start-") as cache:
        for kind in ("cold", "warm"):
            with app_process(app_dir, cache) as (_, _, seconds):
                emit(f"app_start_{kind}_s", seconds=round(seconds, 2), app=str(app_dir))


def page_search_inputs(props: dict, deps: dict, index: int, caption: str) -> list:
    """The inputs one search event takes, as the page fills them: the caption typed, every other
    control at its default (session state comes from the server)."""
    return [caption if props.get(cid, {}).get("elem_id") == "caption" else props.get(cid, {}).get("value")
            for cid in deps[index].get("inputs", [])]


def bench_page_search(proc, base: str, queries: int, seed: int = 0) -> None:
    """The Search button as the page sends it: its server events, round trip and server CPU."""
    from cir_demo.ui.http_client import events

    deps = events(base)
    props = {c["id"]: c.get("props", {}) for c in json.load(urllib.request.urlopen(base + "config"))["components"]}
    chain = action_events(base, element(base, "search-btn"), "click")
    load = [i for i, d in deps.items() if any(t[1] == "load" for t in d.get("targets", []))]
    captions = ["is darker", "has long sleeves and is red", "has a flower print", "is shorter", "is more fitted"]
    rng = random.Random(seed)
    latency, cpu = [], []
    for q in range(queries):
        session = f"bench{seed}-{q}"
        for index in load:  # arrive: the session gets a reference, as a visitor's does
            join(base, index, [], session=session)
        caption = rng.choice(captions) + ("" if q % 2 else f" {q}")  # half new captions, half cached
        before, start = cpu_seconds(proc.pid), time.perf_counter()
        for index in chain:
            answer = join(base, index, page_search_inputs(props, deps, index, caption), session=session)
            if answer["success"] is False:
                raise RuntimeError(f"search event {index} failed: {answer['error']}")
        latency.append((time.perf_counter() - start) * 1000)
        cpu.append((cpu_seconds(proc.pid) - before) * 1000)
    emit("app_page_search", server_events_per_search=len(chain), round_trip_ms=percentiles(latency),
         server_cpu_ms_per_search=round(sum(cpu) / len(cpu), 2), clients="raw HTTP, one at a time")


def bench_client_search(base: str, queries: int, seed: int = 0) -> None:
    client = api_client(base)
    rng = random.Random(seed)
    samples = []
    for _ in range(queries):
        gallery = rng.choice([g["name"] for g in client.predict(api_name="/galleries")])
        pick = client.predict(gallery, api_name="/random_reference")
        caption = (pick["captions"] or ["is darker"])[0]
        start = time.perf_counter()
        client.predict(gallery, pick["reference"], caption, 50, "combiner", api_name="/search")
        samples.append((time.perf_counter() - start) * 1000)
    emit("app_search_round_trip_ms", k=50, client="gradio_client", **percentiles(samples))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cir_demo.ui.bench_app", description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--starts", action="store_true", help="also time cold and warm starts of app.py")
    parser.add_argument("--app-dir", type=Path, default=PROJECT_DIR, help="the checkout whose app.py runs")
    parser.add_argument("--cache", default=None, help="the app's cache folder (default: a fresh temporary one)")
    args = parser.parse_args(argv)
    if args.starts:
        bench_starts(args.app_dir)
    with tempfile.TemporaryDirectory(prefix="cir-bench-") as tmp, app_process(args.app_dir, args.cache or tmp) as (
            proc, base, _):
        bench_page_search(proc, base, args.queries)
        bench_client_search(base, args.queries)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
