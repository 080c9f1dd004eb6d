"""``bench``: serving-path benchmarks, one JSON line per measurement (not a test)."""

from __future__ import annotations

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "fp16w", "int8")


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
    parser.add_argument("--text-precision", choices=PRECISION_CHOICES, default="auto",
                        help="caption tower precision; auto: fp16 on CUDA, the fastest accurate one on a CPU "
                             "(timed at start-up); fp16w / int8: CPU only")
    parser.add_argument("--compose-precision", choices=PRECISION_CHOICES, default="auto",
                        help="Combiner precision, chosen as --text-precision")
    parser.add_argument("--no-precision-effect", action="store_true",
                        help="skip measuring how far reduced precisions move the top-k from fp32")


def run(args) -> int:
    from cir_demo.bench.serving import run_bench
    from cir_demo.config.runtime import default_device

    device = str(default_device(args.device))
    run_bench(model=args.model, pretrained=args.clip, device=device, sizes=args.sizes, queries=args.queries,
              k=args.k, index_images=args.index_images, batch_size=args.batch_size, num_workers=args.num_workers,
              use_faiss=not args.no_faiss, text_precision=args.text_precision,
              compose_precision=args.compose_precision, precision_effect=not args.no_precision_effect)
    return 0
