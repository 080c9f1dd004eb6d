"""Load on a ``python app.py`` process, from clients in this one, on loopback only.

    python -m cir_demo.ui.bench_load [--users 32] [--queries 20] [--url URL | --app-dir DIR] [--heavy]

Users: N concurrent ``gradio_client`` clients (own session each) sending gallery-reference searches
at K=50 back to back (``--think`` adds a pause), bounded by ``--queries`` per user and
``--max-seconds``: errors, throughput, p50/p95/p99 of the later searches, and apart from them each
user's first (a new session's set-up, all users at once). ``--heavy``: one client's search p95 alone, then
while another client keeps the heavy group busy (ranking every validation split, uploading an
88 Mpx image). The server runs as its own process (its own interpreter lock), as it does in
production; the clients share this machine's cores with it. Prints JSON lines with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from cir_demo.config import PROJECT_DIR
from cir_demo.config.runtime import cpu_description
from cir_demo.ui.bench_app import api_client, app_process, percentiles

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass
class LoadResult:
    """Latencies of every user's later searches, and apart from them each user's first: a new
    session's first event also pays Gradio's per-session set-up (a copy of every block's config,
    about 7 ms of CPU on this page), and with all users starting at once those queue behind each
    other, like the ``Client`` set-up the figures leave out."""
    users: int
    latencies_ms: list = field(default_factory=list)
    first_ms: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        answered = self.latencies_ms + self.first_ms
        stats = percentiles(self.latencies_ms) if self.latencies_ms else {}
        first = percentiles(self.first_ms) if self.first_ms else {}
        return {"users": self.users, "requests": len(answered) + len(self.errors),
                "errors": len(self.errors), "first_errors": self.errors[:3],
                "throughput_per_s": round(len(answered) / max(self.seconds, 1e-9), 2),
                **{f"{k}_ms" if k != "n" else k: v for k, v in stats.items()},
                "first_call_p50_ms": first.get("p50"), "first_call_p99_ms": first.get("p99"),
                "all_p99_ms": percentiles(answered)["p99"] if answered else None,
                "seconds": round(self.seconds, 1)}


def make_cases(url: str, count: int, seed: int = 0) -> list[tuple]:
    """(gallery, reference, caption) gallery-reference queries, asked of the app itself."""
    client = api_client(url)
    galleries = [g["name"] for g in client.predict(api_name="/galleries")]
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        gallery = rng.choice(galleries)
        pick = client.predict(gallery, api_name="/random_reference")
        cases.append((gallery, pick["reference"], rng.choice(pick["captions"] or ["is darker"])))
    return cases


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host not in LOOPBACK:
        raise ValueError(f"load is only ever sent to this machine (loopback), not to {host!r}")


def _search_callers(url: str, users: int, client: str) -> list:
    """One ``(gallery, reference, caption) -> hits`` callable per user, each with its own session.
    ``gradio_client``: what most API users run (plain HTTP, see ``api_client``); ``gradio_client_tls``:
    as it comes; ``raw``: the queue's own HTTP protocol from the standard library."""
    if client == "raw":
        import uuid

        from cir_demo.ui.http_client import fn_index, join

        index = fn_index(url, "search")

        def raw_user(session: str):
            def raw(gallery, reference, caption):
                answer = join(url, index, [gallery, reference, caption, 50, "combiner"], session=session)
                if not answer["success"]:
                    raise RuntimeError(answer["error"] or f"HTTP {answer['status']}")
                return answer["output"][0]["hits"]
            return raw
        return [raw_user(uuid.uuid4().hex[:10]) for _ in range(users)]  # a session each, as a browser tab has
    clients = [api_client(url, tls_setup=client == "gradio_client_tls") for _ in range(users)]
    return [lambda g, r, c, cl=cl: cl.predict(g, r, c, 50, "combiner", api_name="/search")["hits"] for cl in clients]


def run_load(url: str, cases: list[tuple], *, users: int, queries: int, max_seconds: float = 120.0,
             think_s: float = 0.0, client: str = "gradio_client") -> LoadResult:
    """Drive ``users`` concurrent clients, ``queries`` searches each (bounded by ``max_seconds``);
    each user pauses ``think_s`` after every answer (0: back to back, the harshest case)."""
    check_loopback(url)
    result, lock = LoadResult(users), threading.Lock()
    callers = _search_callers(url, users, client)
    deadline = time.perf_counter() + max_seconds
    barrier = threading.Barrier(users)

    def user(i: int) -> None:
        rng = random.Random(i)
        barrier.wait()
        for q in range(queries):
            if time.perf_counter() > deadline:
                return
            gallery, reference, caption = cases[(i * queries + q) % len(cases)]
            start = time.perf_counter()
            try:
                hits = callers[i](gallery, reference, caption)
                error = None if hits else "no hits"
            except Exception as err:  # noqa: BLE001 - every failure is counted and reported
                error = f"{type(err).__name__}: {str(err)[:120]}"
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                if error:
                    result.errors.append(error)
                else:
                    (result.first_ms if q == 0 else result.latencies_ms).append(elapsed)
            if think_s:
                time.sleep(think_s * (0.5 + rng.random()))  # people read results for a while

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + 30)
    result.seconds = time.perf_counter() - start
    return result


def heavy_work(url: str, stop: threading.Event) -> None:
    """Keep the app's heavy work busy: rank every split under every composer, upload a huge image."""
    from gradio_client import handle_file
    from PIL import Image

    client = api_client(url)
    with tempfile.TemporaryDirectory(prefix="cir-heavy-") as folder:
        big = Path(folder) / "huge.png"
        Image.new("RGB", (9400, 9400), (120, 30, 30)).save(big, compress_level=1)
        galleries = [g["name"] for g in client.predict(api_name="/galleries")]
        jobs = [("browse", g, c) for g in galleries for c in ("combiner", "sum", "image", "text")]
        while not stop.is_set():
            job = jobs.pop(0) if jobs else ("upload",)
            try:
                if job[0] == "browse":
                    client.predict(job[1], job[2], "all", 10, "", "worst first", api_name="/browse")
                else:
                    client.predict(handle_file(str(big)), api_name="/ui_upload")
            except Exception:  # noqa: BLE001 - the heavy side only has to keep the server busy
                pass


def run_head_of_line(url: str, cases: list[tuple], searches: int = 60) -> dict:
    """One client's search p95 alone, then while another keeps the heavy group busy."""
    check_loopback(url)
    client = api_client(url)

    def searches_ms() -> list:
        out = []
        for gallery, reference, caption in cases[:searches]:
            start = time.perf_counter()
            client.predict(gallery, reference, caption, 50, "combiner", api_name="/search")
            out.append((time.perf_counter() - start) * 1000)
        return out

    idle = percentiles(searches_ms())
    stop = threading.Event()
    worker = threading.Thread(target=heavy_work, args=(url, stop), daemon=True)
    worker.start()
    time.sleep(2.0)  # the heavy side has started its first job
    busy = percentiles(searches_ms())
    stop.set()
    worker.join(120)
    return {"idle": idle, "while_heavy": busy, "p95_ratio": round(busy["p95"] / idle["p95"], 2)}


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cir_demo.ui.bench_load", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--queries", type=int, default=20, help="searches per user")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--think", type=float, default=0.0,
                        help="mean seconds a user pauses after each answer (default 0: back to back)")
    parser.add_argument("--url", default=None, help="a running app on this machine (default: launch app.py)")
    parser.add_argument("--app-dir", type=Path, default=PROJECT_DIR, help="the checkout whose app.py runs")
    parser.add_argument("--cache", default=None, help="the app's cache folder (default: a fresh temporary one)")
    parser.add_argument("--heavy", action="store_true", help="also: search p95 while the heavy group is busy")
    parser.add_argument("--client", choices=("gradio_client", "gradio_client_tls", "raw"), default="gradio_client",
                        help="how the users call /search (gradio_client_tls: gradio_client as it comes, loading "
                             "the CA bundle on every call; raw: the queue's HTTP protocol, a light client)")
    args = parser.parse_args(argv)

    def measure(url: str) -> None:
        cases = make_cases(url, 200)
        result = run_load(url, cases, users=args.users, queries=args.queries, max_seconds=args.max_seconds,
                          think_s=args.think, client=args.client)
        print(json.dumps({"bench": "app_load_search_k50", "client": args.client, "think_s": args.think,
                          **result.summary(),
                          **cpu_description()}), flush=True)
        if args.heavy:
            print(json.dumps({"bench": "app_search_while_heavy", **run_head_of_line(url, cases),
                              **cpu_description()}), flush=True)

    if args.url:
        measure(args.url)
        return 0
    with tempfile.TemporaryDirectory(prefix="cir-load-") as tmp, app_process(args.app_dir, args.cache or tmp) as (
            _, url, _):
        measure(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
