"""``eval``: the paper's protocol on a dataset split, for several composers at once."""

from __future__ import annotations

import json
from pathlib import Path

SELECTION = "selection"


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="a FashionIQ or CIRR folder (real or synthetic)")
    parser.add_argument("--clip", required=True, help="CLIP weights: our checkpoint, an official .pt, a file or a tag")
    parser.add_argument("--clip-model", default="RN50x4", help="open_clip name for tags and plain files")
    parser.add_argument("--combiner", default=None, help="Combiner checkpoint (ours or official .pt)")
    parser.add_argument("--composers", nargs="+", default=None,
                        help="combiner, sum, image, text (default: all that are available)")
    parser.add_argument("--split", default="val", help="val (default); test1 writes CIRR submission files")
    parser.add_argument("--categories", nargs="+", default=None, help="FashionIQ categories (default: all)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--submission-dir", default=None, help="CIRR test: folder for the two JSON files")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from cir_demo.config.runtime import default_device
    from cir_demo.eval.protocol import evaluate
    from cir_demo.eval.submission import cirr_test_submission
    from cir_demo.model import COMPOSER_NAMES, load_checkpoint, load_clip, make_composer

    device = str(default_device(args.device))
    clip = load_clip(args.clip_model, args.clip, device=device)
    combiner = load_checkpoint(args.combiner, device=device).combiner if args.combiner else None
    names = args.composers or [n for n in COMPOSER_NAMES if n != "combiner" or combiner is not None]
    composers = {n: make_composer(n, combiner) for n in names}
    kwargs = {"batch_size": args.batch_size, "num_workers": args.num_workers, "progress": not args.no_progress}
    if args.split == "test1":
        out = Path(args.submission_dir or "submission")
        files = cirr_test_submission(clip, composers, args.data, out, device=device, **kwargs)
        print(json.dumps({"submission_files": [str(f) for f in files]}))
        return 0
    results = evaluate(clip, composers, args.data, split=args.split, categories=args.categories, device=device,
                       **kwargs)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def format_table(results: dict) -> str:
    """A Markdown table: one row per composer, one column per metric."""
    rows = []
    for name, summary in results.items():
        flat = {}
        for group, value in summary.items():
            if isinstance(value, dict):
                flat.update({f"{group} {k}": v for k, v in value.items()})
            elif group != SELECTION:
                flat[group] = value
        rows.append((name, flat))
    columns = list(dict.fromkeys(c for _, flat in rows for c in flat))
    lines = ["| composer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + name + " | " + " | ".join(f"{flat.get(c, float('nan')):.2f}" for c in columns) + " |"
              for name, flat in rows]
    return "\n".join(lines)
