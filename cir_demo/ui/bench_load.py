"""Load: N concurrent ``gradio_client`` users searching a launched app, on loopback only.

    python -m cir_demo.ui.bench_load [--users 32] [--queries 20] [--url http://127.0.0.1:7860/]

Without ``--url`` the built-in app is launched in this process on a free loopback port. Every
user is a thread with its own client (its own session) sending gallery-reference searches at
K=50, back to back; the run is bounded by ``--queries`` per user and ``--max-seconds``. Prints one
JSON line: users, requests, errors, throughput, p50/p95/p99 latency, the CPU model.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlparse

import numpy as np

from cir_demo.config.runtime import cpu_description

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass
class LoadResult:
    users: int
    latencies_ms: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms or [float("nan")])
        return {"users": self.users, "requests": len(self.latencies_ms) + len(self.errors),
                "errors": len(self.errors), "first_errors": self.errors[:3],
                "throughput_per_s": round(len(self.latencies_ms) / max(self.seconds, 1e-9), 2),
                "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
                "p99_ms": round(float(np.percentile(lat, 99)), 1), "seconds": round(self.seconds, 1)}


def make_cases(catalog, count: int, seed: int = 0) -> list[tuple]:
    """(gallery, reference, caption) gallery-reference queries drawn from the catalog's triplets."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        gallery = rng.choice([g.name for g in catalog.galleries()])
        reference = catalog.random_reference(gallery, rng=rng)
        cases.append((gallery, reference, rng.choice(catalog.suggestions(gallery, reference) or ["is darker"])))
    return cases


def run_load(url: str, cases: list[tuple], *, users: int, queries: int, max_seconds: float = 120.0,
             think_s: float = 0.0) -> LoadResult:
    """Drive ``users`` concurrent clients, ``queries`` searches each (bounded by ``max_seconds``);
    each user pauses ``think_s`` after every answer (0: back to back, the harshest case)."""
    from gradio_client import Client

    host = urlparse(url).hostname or ""
    if host not in LOOPBACK:
        raise ValueError(f"load is only ever sent to this machine (loopback), not to {host!r}")
    result, lock = LoadResult(users), threading.Lock()
    deadline = time.perf_counter() + max_seconds
    clients = [Client(url, verbose=False) for _ in range(users)]
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
                out = clients[i].predict(gallery, reference, caption, 50, "combiner", api_name="/search")
                ok = len(out["hits"]) == 50
                error = None if ok else f"{len(out['hits'])} hits"
            except Exception as err:  # noqa: BLE001 - every failure is counted and reported
                error = f"{type(err).__name__}: {str(err)[:120]}"
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                (result.errors.append(error) if error else result.latencies_ms.append(elapsed))
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


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cir_demo.ui.bench_load", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--queries", type=int, default=20, help="searches per user")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--think", type=float, default=0.0,
                        help="mean seconds a user pauses after each answer (default 0: back to back)")
    parser.add_argument("--url", default=None, help="a running app on this machine (default: launch one)")
    args = parser.parse_args(argv)
    from cir_demo.ui.bench_app import free_port
    from cir_demo.ui.serve import build_app, launch

    demo, catalog = build_app(None, progress=False)
    url = args.url
    if url is None:
        port = free_port()
        launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
        url = f"http://127.0.0.1:{port}/"
    result = run_load(url, make_cases(catalog, 500), users=args.users, queries=args.queries,
                      max_seconds=args.max_seconds, think_s=args.think)
    print(json.dumps({"bench": "app_load_search_k50", "think_s": args.think, "clients": "gradio_client, in this process",
                      **result.summary(), **cpu_description()}), flush=True)
    if args.url is None:
        demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
