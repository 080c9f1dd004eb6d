"""``bench``: serving-path benchmarks, one JSON line per measurement (not a test)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="RN50x4", help="open_clip architecture (random init unless --clip)")
    parser.add_argument("--clip", default=None, help="optional weights; timing does not depend on them")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="gallery sizes")
    parser.add_argument("--queries", type=int, default=30, help="timed queries per measurement")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--index-images", type=int, default=64, help="JPEGs to index (0 skips)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--no-faiss", action="store_true")


def run(args) -> int:
    from cir_demo.bench.serving import run_bench
    from cir_demo.config.runtime import default_device

    device = str(default_device(args.device))
    run_bench(model=args.model, pretrained=args.clip, device=device, sizes=args.sizes, queries=args.queries,
              k=args.k, index_images=args.index_images, batch_size=args.batch_size, num_workers=args.num_workers,
              use_faiss=not args.no_faiss)
    return 0
