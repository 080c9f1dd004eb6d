"""``python -m cir_demo synth``: write the built-in synthetic world (see ``cir_demo.data.synth``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m cir_demo synth``."""
    parser.add_argument("--out", required=True, type=Path, help="output folder (gets fashioniq/ and cirr/)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--size", choices=("tiny", "small", "default"), default="default",
                        help="tiny: tests; small: quick runs; default: training the built-in models")
    parser.add_argument("--flavour", choices=("fashion", "scenes", "both"), default="both",
                        help="fashion: FashionIQ layout; scenes: CIRR layout (default both)")
    parser.add_argument("--splits", nargs="+", choices=("train", "val", "test"), default=None,
                        help="draw only these splits' images (JSON of every split is written; default: all)")
    parser.add_argument("--workers", type=int, default=None, help="drawing processes (default: up to 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing generated datasets")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``synth`` from parsed arguments; prints a one-line summary per dataset."""
    from cir_demo.data.synth import FLAVOURS, generate_world

    flavours = FLAVOURS if args.flavour == "both" else (args.flavour,)
    summary = generate_world(args.out, seed=args.seed, size=args.size, flavours=flavours,
                             progress=not args.no_progress, workers=args.workers, overwrite=args.overwrite,
                             splits=args.splits)
    for dataset in ("fashioniq", "cirr"):
        if dataset in summary:
            counts = summary[dataset]
            splits = counts.values() if dataset == "cirr" else [s for cat in counts.values() for s in cat.values()]
            images, triplets = sum(s["images"] for s in splits), sum(s["triplets"] for s in splits)
            print(f"{Path(args.out) / dataset}: {images} images, {triplets} triplets")
    print(f"done in {summary['seconds']:.1f} s")
    return 0

