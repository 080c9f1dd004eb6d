"""A contact sheet of visitor edits: reference, the typed edit, and the top hits other than the
reference, each framed green when the judge calls it an answer and red when not.

``python -m cir_demo visitor ... --sheet OUT.png`` draws it from the benchmark's own run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from cir_demo.data.datasets import open_dataset
from cir_demo.data.synth.attributes import load_attributes
from cir_demo.data.synth.contact import caption_font, thumbnail, wrap_text
from cir_demo.eval.visitor import VisitorReport
from cir_demo.eval.visitor_edits import is_hit

THUMB, GAP, CAPTION_W = 112, 10, 190
GOOD, BAD, INK, MUTED = (40, 160, 70), (210, 50, 50), (30, 30, 34), (110, 110, 120)


def _pick(report: VisitorReport, per_kind: int) -> list:
    """The first ``per_kind`` outcomes of each kind (in benchmark order: not chosen by result)."""
    seen: dict = {}
    rows = []
    for outcome in report.outcomes:
        if seen.get(outcome.edit.kind, 0) < per_kind:
            seen[outcome.edit.kind] = seen.get(outcome.edit.kind, 0) + 1
            rows.append(outcome)
    return rows


def _row(sheet, y: int, outcome, split, dataset: str, attributes: dict) -> None:
    edit = outcome.edit
    d = ImageDraw.Draw(sheet)
    x = GAP
    sheet.paste(_fit(split.open_image(edit.reference)), (x, y))
    d.rectangle([x - 2, y - 2, x + THUMB + 1, y + THUMB + 1], outline=MUTED, width=2)
    x += THUMB + GAP
    font = caption_font(13)
    lines = [f"[{edit.kind}]", *wrap_text(f"\u201c{edit.caption}\u201d", font, CAPTION_W - GAP)]
    for k, line in enumerate(lines[:6]):
        d.text((x, y + 8 + 16 * k), line, font=font, fill=MUTED if k == 0 else INK)
    x += CAPTION_W
    ref, tgt = attributes[edit.reference], attributes[edit.target]
    for name in outcome.hits:
        good = is_hit(dataset, edit, ref, tgt, attributes[name])
        sheet.paste(_fit(split.open_image(name)), (x, y))
        d.rectangle([x - 3, y - 3, x + THUMB + 2, y + THUMB + 2], outline=GOOD if good else BAD, width=4)
        x += THUMB + GAP


def _fit(img: Image.Image) -> Image.Image:
    """A THUMB x THUMB tile with the image centred on white."""
    tile = Image.new("RGB", (THUMB, THUMB), (255, 255, 255))
    thumb = thumbnail(img, THUMB)
    tile.paste(thumb, ((THUMB - thumb.width) // 2, (THUMB - thumb.height) // 2))
    return tile


def make_visitor_sheet(reports: Sequence[VisitorReport], roots: Sequence, out_png, *, per_kind: int = 2,
                       top: int = 3) -> Path:
    """Draw ``per_kind`` edits of every kind of each report (its dataset folder in ``roots``)."""
    blocks = [(r, Path(root), _pick(r, per_kind)) for r, root in zip(reports, roots)]
    row_h, title_h = THUMB + 2 * GAP, 30
    width = GAP + THUMB + GAP + CAPTION_W + top * (THUMB + GAP)
    height = sum(title_h + len(rows) * row_h for _, _, rows in blocks)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    d, y = ImageDraw.Draw(sheet), 0
    for report, root, rows in blocks:
        d.text((GAP, y + 8), f"{report.dataset}: reference, edit in a phrasing training never saw, top {top} "
                             f"(green: answers it)", font=caption_font(14), fill=INK)
        y += title_h
        attributes, splits = load_attributes(root), {}
        for outcome in rows:
            gallery = outcome.edit.gallery
            if gallery not in splits:
                splits[gallery] = open_dataset(root, "val", None if report.dataset == "cirr" else gallery)
            _row(sheet, y + GAP // 2, outcome, splits[gallery], report.dataset, attributes)
            y += row_h
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    return out

