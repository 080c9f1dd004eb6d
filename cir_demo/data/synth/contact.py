"""A contact sheet of a generated world: a few validation triplets per flavour, reference -> target
with the relative caption(s) underneath. ``python -m cir_demo.data.synth.contact WORLD OUT.png``."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from cir_demo.data.datasets import FASHIONIQ_CATEGORIES, load_cirr, load_fashioniq

THUMB = 150     # thumbnail box side, pixels
GAP = 14
TEXT_H = 44     # room for three caption lines
PANEL_W = 2 * THUMB + 3 * GAP + 30
INK, MUTED, BG = (30, 30, 34), (110, 110, 120), (255, 255, 255)


def caption_font(size: int):
    """Pillow's built-in font at ``size`` px."""
    return ImageFont.load_default(size=size)


def wrap_text(text: str, font, width: int) -> list:
    """``text`` broken into lines of at most ``width`` px."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if font.getlength(trial) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return lines + [line] if line else lines


def thumbnail(img: Image.Image, side: int = THUMB) -> Image.Image:
    """A copy of ``img`` fitted into a ``side`` x ``side`` box."""
    img = img.copy()
    img.thumbnail((side, side), Image.LANCZOS)
    return img


def _pick(world: Path, n: int, seed: int) -> list:
    """[(flavour title, [(ref image, target image, caption text), ...]), ...] for present flavours."""
    rng, panels = random.Random(seed), []
    if (world / "fashioniq").is_dir():
        rows = []
        for i in range(n):
            ds = load_fashioniq(world / "fashioniq", FASHIONIQ_CATEGORIES[i % 3], "val")
            t = rng.choice(ds.triplets)
            text = f"{t.category}: \u201c{t.captions[0]}\u201d / \u201c{t.captions[1]}\u201d"
            rows.append((ds.open_image(t.reference), ds.open_image(t.target), text))
        panels.append(("FashionIQ layout: reference, target, 2 captions", rows))
    if (world / "cirr").is_dir():
        ds = load_cirr(world / "cirr", "val")
        rows = [(ds.open_image(t.reference), ds.open_image(t.target), f"\u201c{t.captions[0]}\u201d")
                for t in rng.sample(ds.triplets, min(n, len(ds.triplets)))]
        panels.append(("CIRR layout: reference, target, caption", rows))
    return panels


def _draw_row(sheet: Image.Image, x: int, y: int, row) -> None:
    ref, target, text = row
    d = ImageDraw.Draw(sheet)
    for k, img in enumerate((ref, target)):
        thumb = thumbnail(img)
        bx = x + GAP + k * (THUMB + 30 + GAP)
        sheet.paste(thumb, (bx + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
    ax, ay = x + GAP + THUMB + GAP // 2 + 2, y + THUMB // 2
    d.line([(ax, ay), (ax + 22, ay)], fill=MUTED, width=3)
    d.polygon([(ax + 28, ay), (ax + 19, ay - 6), (ax + 19, ay + 6)], fill=MUTED)
    font = caption_font(13)
    for k, line in enumerate(wrap_text(text, font, PANEL_W - 2 * GAP)[:3]):
        d.text((x + GAP, y + THUMB + 4 + 14 * k), line, font=font, fill=INK)


def make_contact_sheet(world_dir, out_png, n: int = 4, seed: int = 0) -> Path:
    """Draw ``n`` validation triplets of each flavour found in ``world_dir`` into ``out_png``."""
    panels = _pick(Path(world_dir), n, seed)
    if not panels:
        raise FileNotFoundError(f"{world_dir}: no fashioniq/ or cirr/ folder")
    row_h = THUMB + TEXT_H + GAP
    sheet = Image.new("RGB", (PANEL_W * len(panels), 34 + n * row_h), BG)
    d = ImageDraw.Draw(sheet)
    for p, (title, rows) in enumerate(panels):
        d.text((p * PANEL_W + GAP, 10), title, font=caption_font(15), fill=INK)
        for r, row in enumerate(rows):
            _draw_row(sheet, p * PANEL_W, 34 + r * row_h, row)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    return out


if __name__ == "__main__":
    make_contact_sheet(sys.argv[1], sys.argv[2], n=int(sys.argv[3]) if len(sys.argv) > 3 else 4)
