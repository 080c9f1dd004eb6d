"""``probe``: linear probes of a CLIP's frozen image features for the synthetic world's attributes."""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="a synthetic FashionIQ or CIRR folder (with attributes.json)")
    parser.add_argument("--clip", required=True, help="CLIP weights: our checkpoint, a file or a tag")
    parser.add_argument("--clip-model", default="RN50x4", help="open_clip name for tags and plain files")
    parser.add_argument("--categories", nargs="+", default=None, help="FashionIQ categories (default: all)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from dataclasses import asdict

    from cir_demo.config.runtime import default_device
    from cir_demo.eval.probe import format_probe, probe_world
    from cir_demo.model import load_clip

    clip = load_clip(args.clip_model, args.clip, device=str(default_device(args.device)))
    results = probe_world(clip, args.data, categories=args.categories, progress=not args.no_progress)
    print(format_probe(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0
