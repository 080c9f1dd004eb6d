"""A gallery in Milvus against the in-process exact search on the same vectors: query p50 and recall@K.

    python -m cir_demo.bench.milvus [--size 100000] [--dim 640] [--queries 50] [--k 50] [--uri FILE_OR_URL]

Clustered random vectors (as ``cir_demo.bench.topk``). Without ``--uri`` a Milvus Lite file in a
temporary folder (started by this process); a URL benchmarks a running Milvus. One FLAT (exact)
collection and one IVF_FLAT (approximate) collection; recall@K is against the exact top-K. Needs
requirements-milvus.txt. Prints JSON lines with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from cir_demo.bench.topk import make_data, p50_ms
from cir_demo.config.runtime import cpu_description
from cir_demo.index import Gallery


def main(argv=None) -> int:
    from cir_demo.index.milvus import MilvusGallery, write_collection

    parser = argparse.ArgumentParser(prog="python -m cir_demo.bench.milvus", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=640)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--uri", default=None)
    args = parser.parse_args(argv)
    raw, queries = make_data(args.size, args.dim, args.queries)
    queries = torch.nn.functional.normalize(queries, dim=-1)
    names = [f"img-{i}" for i in range(args.size)]
    local = Gallery(raw, names, device="cpu")
    exact_rows = local.topk(queries, args.k)[1]
    machine = cpu_description()
    print(json.dumps({"bench": "milvus_in_process", "size": args.size, "dim": args.dim, "k": args.k,
                      "p50_ms": round(p50_ms(lambda: local.topk(queries[:1], args.k), args.queries), 3), **machine}))
    with tempfile.TemporaryDirectory(prefix="cir-milvus-") as tmp:
        uri = args.uri or str(Path(tmp) / "bench.db")
        for index_type, params in (("FLAT", {}), ("IVF_FLAT", {"nlist": 256})):
            name = f"bench_{index_type.lower()}"
            start = time.perf_counter()
            write_collection(uri, name, raw, names, {"model_fingerprint": "bench"}, index_type=index_type,
                             index_params=params)
            build_s = time.perf_counter() - start
            gallery = MilvusGallery(uri, name)
            rows = gallery.topk(queries, args.k)[1]
            recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(rows, exact_rows)) / exact_rows.numel()
            samples = [p50_ms(lambda q=q: gallery.topk(q[None], args.k), 3) for q in queries[:args.queries]]
            print(json.dumps({"bench": "milvus_lite" if not args.uri else "milvus", "index": index_type,
                              "size": args.size, "dim": args.dim, "k": args.k, "write_s": round(build_s, 1),
                              "p50_ms": round(sorted(samples)[len(samples) // 2], 3),
                              f"recall@{args.k}_vs_exact": round(recall, 4), **machine}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
