"""``visitor``: free-text edits in held-out phrasings on the synthetic world, judged by its attributes."""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, nargs="+",
                        help="synthetic FashionIQ and/or CIRR folders (with attributes.json)")
    parser.add_argument("--clip", required=True, nargs="+",
                        help="CLIP weights, one per --data folder (or one for all): our checkpoint, a file or a tag")
    parser.add_argument("--clip-model", default="RN50x4", help="open_clip name for tags and plain files")
    parser.add_argument("--combiner", nargs="+", default=None, help="Combiner checkpoints, as --clip")
    parser.add_argument("--composer", default=None,
                        help="combiner, sum, image or text (default: combiner when given, else sum)")
    parser.add_argument("--per-kind", type=int, default=40, help="edits per kind of change (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="which edits and phrasings are drawn")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="also write every outcome to this JSON file")
    parser.add_argument("--sheet", default=None, metavar="PNG",
                        help="also draw a contact sheet of a few edits per kind and their top hits")
    parser.add_argument("--no-progress", action="store_true")


def _one_per(values, data: list, what: str) -> list:
    if values is None:
        return [None] * len(data)
    if len(values) not in (1, len(data)):
        raise ValueError(f"give one {what} per --data folder, or one for all ({len(data)} folders, {len(values)} given)")
    return values * len(data) if len(values) == 1 else values


def run(args) -> int:
    from dataclasses import asdict

    from cir_demo.config.runtime import default_device
    from cir_demo.eval.visitor import format_report, run_visitor
    from cir_demo.model import load_checkpoint, load_clip, make_composer

    device = str(default_device(args.device))
    reports = []
    for data, clip_source, combiner_source in zip(args.data, _one_per(args.clip, args.data, "--clip"),
                                                  _one_per(args.combiner, args.data, "--combiner")):
        clip = load_clip(args.clip_model, clip_source, device=device)
        combiner = load_checkpoint(combiner_source, device=device).combiner if combiner_source else None
        name = args.composer or ("combiner" if combiner is not None else "sum")
        reports.append(run_visitor(clip, make_composer(name, combiner), data, per_kind=args.per_kind,
                                   seed=args.seed, progress=not args.no_progress))
    print(format_report(reports))
    if args.sheet:
        from cir_demo.eval.visitor_sheet import make_visitor_sheet

        make_visitor_sheet(reports, args.data, args.sheet)
    if args.json:
        Path(args.json).write_text(json.dumps([{"dataset": r.dataset, "hit_rate": r.hit_rate,
                                                "reference_first": r.reference_first,
                                                "outcomes": [asdict(o) for o in r.outcomes]} for r in reports],
                                              indent=2))
    return 0
