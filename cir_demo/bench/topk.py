"""Exact top-k benchmark: `Gallery.topk` vs FAISS IndexFlatIP vs plain fp32 matmul + sort.

Prints a line describing the machine (CPU model, SIMD flags), then one JSON line per (N, method)
and one with the ratios, p50 over --runs single queries:

    python -m cir_demo.bench.topk [--sizes 10000 100000] [--dim 640] [--k 50] [--runs 30]

Features are synthetic CLIP-like vectors (a shared mean direction plus noise, so scores cluster
as real image features do); queries are gallery rows perturbed, as composed queries are.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cir_demo.config.runtime import cpu_description
from cir_demo.index import Gallery


def p50_ms(fn, runs: int) -> float:
    for _ in range(3):  # warm-up
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def make_data(n: int, dim: int, runs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    raw = (torch.randn(n, dim, generator=g) * 0.5 + torch.randn(1, dim, generator=g) * 0.3).half()  # (N, D)
    picks = torch.randint(0, n, (runs,), generator=g)
    queries = raw[picks].float() + 0.4 * torch.randn(runs, dim, generator=g)  # (R, D)
    return raw, torch.nn.functional.normalize(queries, dim=-1)


def bench_size(n: int, dim: int, k: int, runs: int) -> dict[str, float]:
    raw, queries = make_data(n, dim, runs)
    names = [f"img{i}" for i in range(n)]
    results: dict[str, float] = {}  # method -> p50 ms; "ours" uses compute_dtype="auto"
    it = iter(range(10 ** 9))

    def one(fn):  # cycle through distinct queries so no run reuses the previous one's cache state
        return lambda: fn(queries[next(it) % runs])

    ours = Gallery(raw, names, device="cpu")  # "auto": what the engine gets
    results["ours"] = p50_ms(one(lambda q: ours.topk(q, k)), runs)
    for dtype in ("bf16", "fp32"):
        forced = Gallery(raw, names, device="cpu", compute_dtype=dtype)
        results[f"ours_{dtype}"] = p50_ms(one(lambda q: forced.topk(q, k)), runs)
    unit = torch.nn.functional.normalize(raw.float(), dim=-1)  # (N, D)
    results["fp32_matmul_sort"] = p50_ms(one(lambda q: torch.argsort(unit @ q, descending=True)[:k]), runs)
    try:
        import faiss

        index = faiss.IndexFlatIP(dim)
        index.add(unit.numpy())
        results["faiss_flatip"] = p50_ms(one(lambda q: index.search(q[None].numpy(), k)), runs)
    except ImportError:
        pass
    target = int(torch.randint(0, n, (1,)))
    results["ours_rank_of"] = p50_ms(one(lambda q: ours.rank_of(q, target)), runs)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=640)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    print(json.dumps({"machine": cpu_description(), "torch": torch.__version__}))
    for n in args.sizes:
        res = bench_size(n, args.dim, args.k, args.runs)
        for method, ms in res.items():
            print(json.dumps({"n": n, "dim": args.dim, "k": args.k, "threads": threads, "method": method,
                              "p50_ms": round(ms, 3)}))
        ratios = {f"{m}_over_ours": round(v / res["ours"], 2) for m, v in res.items()
                  if m in ("faiss_flatip", "fp32_matmul_sort", "ours_bf16", "ours_fp32")}
        print(json.dumps({"n": n, "dim": args.dim, "k": args.k, "ratios": ratios}))


if __name__ == "__main__":
    main()
