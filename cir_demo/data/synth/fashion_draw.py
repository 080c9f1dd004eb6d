"""Procedural garment drawing: a product-style photo of a :class:`~.fashion.Garment`.

Everything is drawn at twice the output size and box-downsampled, which anti-aliases edges.
Geometry is in units of the torso width ``w`` with the origin at the centre of the neckline.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from cir_demo.data.synth.fashion import BACKGROUNDS, GRAPHICS, WORDS, Garment, Photo, shade_rgb

SS = 2  # supersampling factor


def _mix(rgb, other, t: float) -> tuple:
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(rgb, other))


def _mirror(half):
    """A closed outline from its right half (top to bottom), mirrored about x = 0."""
    return list(half) + [(-x, y) for x, y in reversed(half)]


def _body_half(g: Garment) -> list:
    """Right half of the torso (and skirt) outline, from the neck down to the hem centre."""
    loose = g.fit == "loose"
    shoulder = (0.48, 0.08) if g.sleeve != "sleeveless" else (0.31, 0.03)
    half = [(0.10, -0.03), (0.17, 0.0), shoulder]
    if g.sleeve == "sleeveless":  # armhole curves inwards
        half += [(0.30, 0.18), (0.36, 0.33)]
    half.append((0.48 if loose else 0.44, 0.42))
    if g.category == "dress":
        hem_y = {"mini": 1.45, "knee": 1.9, "maxi": 2.45}[g.length]
        flare = 0.30 if loose else 0.07
        half += [(0.40 if loose else 0.36, 0.72), (0.47 if loose else 0.45, 0.95)]
        hem_x, arc = 0.47 + flare * (hem_y - 0.95), 0.05
    else:
        hem_y = {"cropped": 0.86, "regular": 1.2, "long": 1.5}[g.length]
        if hem_y > 0.9:
            half.append((0.5 if loose else 0.37, 0.8))
        hem_x = 0.58 if loose else 0.42
        arc = 0.09 if g.category == "toptee" else 0.03
    half.append((hem_x, hem_y))
    # Hem: a slight downward arc, as fabric hangs.
    half += [(hem_x * t, hem_y + arc * (1 - t * t)) for t in (0.75, 0.5, 0.25, 0.0)]
    return half


def _sleeve(g: Garment) -> list:
    """Right sleeve polygon (shoulder, cuff outer, cuff inner, armpit), or [] when sleeveless."""
    if g.sleeve == "sleeveless":
        return []
    shoulder = np.array([0.48, 0.08])
    armpit = np.array([0.48 if g.fit == "loose" else 0.44, 0.42])
    if g.sleeve == "short":
        d, length, cuff = np.array([0.75, 0.66]), 0.38, 0.3
    else:
        d, length, cuff = np.array([0.38, 0.925]), 1.02, 0.27 if g.fit == "loose" else 0.2
    d = d / np.linalg.norm(d)
    outer = shoulder + d * length
    inner = outer + np.array([-d[1], d[0]]) * cuff
    return [tuple(shoulder), tuple(outer), tuple(inner), tuple(armpit)]


@lru_cache(maxsize=64)
def _font(size: int):
    return ImageFont.load_default(size=size)


def _star(cx, cy, r, points=5, inner=0.45):
    angles = np.arange(points * 2) * np.pi / points - np.pi / 2
    radii = np.where(np.arange(points * 2) % 2 == 0, r, r * inner)
    return [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, radii)]


def _draw_pattern(fill: Image.Image, g: Garment, tr, w: float) -> None:
    """Paint ``g``'s pattern over the whole fill layer (the garment mask crops it later)."""
    if g.pattern == "solid":
        return
    d = ImageDraw.Draw(fill)
    ink = shade_rgb(g.pcolour, "normal")
    width, height = fill.size
    ox, oy = tr(0, 0)
    # The garment's own colour stays the one seen most (stripes cover 30 % of the cloth, checks' bands
    # about 45 %): when they covered half and two thirds, which colour was the garment's was a coin toss.
    if g.pattern == "stripes":
        step = int(w * 0.22)
        for y in range(int(oy) % step - step, height, step):
            d.rectangle([0, y, width, y + step * 0.3], fill=ink)
    elif g.pattern == "dots":
        step, r = w * 0.21, w * 0.055
        for row, y in enumerate(np.arange(oy % step - step, height + step, step)):
            for x in np.arange((ox + row % 2 * step / 2) % step - step, width + step, step):
                d.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    elif g.pattern == "checks":
        step, band = int(w * 0.3), int(w * 0.075)
        half = _mix(shade_rgb(g.colour, g.shade), ink, 0.5)
        for p in range(int(oy) % step - step, height, step):
            d.rectangle([0, p, width, p + band], fill=half)
        for p in range(int(ox) % step - step, width, step):
            d.rectangle([p, 0, p + band, height], fill=half)
        for y in range(int(oy) % step - step, height, step):
            for x in range(int(ox) % step - step, width, step):
                d.rectangle([x, y, x + band, y + band], fill=ink)
    else:
        _draw_print(d, g, tr, w, ink)


def _draw_print(d: ImageDraw.ImageDraw, g: Garment, tr, w: float, ink) -> None:
    """A chest graphic or a word, centred on the chest."""
    cx, cy = tr(0, 0.62 if g.category != "dress" else 0.6)
    r = w * 0.23
    if g.pattern == "lettering":
        font = _font(max(8, int(w * (0.34 if len(WORDS[g.motif]) <= 3 else 0.27))))
        d.text((cx, cy), WORDS[g.motif], font=font, fill=ink, anchor="mm", stroke_width=1, stroke_fill=ink)
    elif GRAPHICS[g.motif] == "star":
        d.polygon(_star(cx, cy, r * 1.1), fill=ink)
    elif GRAPHICS[g.motif] == "heart":
        d.ellipse([cx - r, cy - r * 0.8, cx, cy + r * 0.1], fill=ink)
        d.ellipse([cx, cy - r * 0.8, cx + r, cy + r * 0.1], fill=ink)
        d.polygon([(cx - r * 0.97, cy - r * 0.2), (cx + r * 0.97, cy - r * 0.2), (cx, cy + r)], fill=ink)
    else:  # flower: five petals around a contrasting centre
        for a in np.arange(5) * 2 * np.pi / 5:
            px, py = cx + r * 0.55 * np.cos(a), cy + r * 0.55 * np.sin(a)
            d.ellipse([px - r * 0.42, py - r * 0.42, px + r * 0.42, py + r * 0.42], fill=ink)
        d.ellipse([cx - r * 0.3, cy - r * 0.3, cx + r * 0.3, cy + r * 0.3], fill=shade_rgb(g.colour, g.shade))


def _draw_neck(d: ImageDraw.ImageDraw, g: Garment, tr, w: float, base, line) -> None:
    """Neckline opening (the garment's darker inside) and, for shirts, the button placket."""
    inside = _mix(base, (0, 0, 0), 0.5)
    lw = max(2, int(w * 0.015))
    if g.neck == "round":
        box = [tr(-0.19, -0.16), tr(0.19, 0.22)]
        d.pieslice([box[0], box[1]], 0, 180, fill=inside)
        d.arc([box[0], box[1]], 0, 180, fill=line, width=lw * 2)
        bottom = 0.22
    elif g.neck == "v-neck":
        v = [tr(-0.18, 0), tr(0.18, 0), tr(0, 0.5)]
        d.polygon(v, fill=inside)
        d.line([v[0], v[2], v[1]], fill=line, width=lw * 2)
        bottom = 0.5
    else:  # collar: two flaps over a small opening
        d.polygon([tr(-0.17, 0), tr(0.17, 0), tr(0, 0.13)], fill=inside)
        flap = [(0.0, 0.12), (0.22, -0.03), (0.36, 0.18), (0.09, 0.28)]
        for sign in (1, -1):
            pts = [tr(sign * x, y) for x, y in flap]
            d.polygon(pts, fill=_mix(base, (255, 255, 255), 0.12), outline=line, width=lw)
        bottom = 0.28
    if g.category == "shirt" and g.pattern not in ("graphic", "lettering"):  # no buttons through a print
        top, end = tr(0, bottom), tr(0, {"cropped": 0.8, "regular": 1.15, "long": 1.45}[g.length])
        d.line([top, end], fill=line, width=lw)
        r, button = w * 0.022, _mix(base, (255, 255, 255), 0.5)
        for y in np.linspace(top[1] + w * 0.1, end[1] - w * 0.08, 4):
            d.ellipse([top[0] + w * 0.04 - r, y - r, top[0] + w * 0.04 + r, y + r], fill=button)


@lru_cache(maxsize=None)  # 3 widths x 4 heights x 5 tints
def _background(width: int, height: int, index: int) -> Image.Image:
    """Soft studio backdrop: the tint, a touch darker towards the floor."""
    top = np.array(BACKGROUNDS[index], dtype=float)
    t = np.linspace(0.0, 1.0, height)[:, None, None] ** 1.5
    rows = top * (1 - 0.10 * t)
    return Image.fromarray(np.broadcast_to(rows, (height, width, 3)).astype(np.uint8))


def _shading(width: int, height: int, cx: float, w: float) -> Image.Image:
    """Cylinder-like light falloff across the garment: how much to darken each column (L mask)."""
    x = (np.arange(width) - cx) / (w * 0.9)
    row = 255 * 0.16 * np.clip(np.abs(x), 0, 1.3) ** 2
    return Image.fromarray(row[None, :].astype(np.uint8)).resize((width, height), Image.NEAREST)


def render_garment(g: Garment, photo: Photo) -> Image.Image:
    """The RGB image (``photo.width`` x ``photo.height``) of ``g`` photographed as ``photo``."""
    W, H = photo.width * SS, photo.height * SS
    # The paper's preprocessing (targetpad, then a centre square) keeps the central max(W, H / 1.25)
    # rows: a dress is scaled to fit them, so its neckline and hem stay in what the model sees.
    w = (0.36 * max(W, H / 1.25) if g.category == "dress" else 0.5 * min(W, H / 1.25)) * photo.scale
    body, sleeve = _mirror(_body_half(g)), _sleeve(g)
    parts = [body] + ([sleeve, [(-x, y) for x, y in sleeve]] if sleeve else [])
    ys = [y for part in parts for _, y in part]
    top = (H - (max(ys) - min(ys)) * w) / 2 - min(ys) * w  # centre the garment vertically
    cx = W / 2 + photo.dx * W

    def tr(x, y):
        return (cx + x * w, top + y * w)

    base = shade_rgb(g.colour, g.shade)
    line = _mix(base, (0, 0, 0), 0.45) if g.colour != "black" else (70, 70, 76)
    mask = Image.new("L", (W, H), 0)
    md = ImageDraw.Draw(mask)
    polys = [[tr(x, y) for x, y in part] for part in parts]
    for poly in polys:
        md.polygon(poly, fill=255)
    canvas = _background(photo.width * SS, photo.height * SS, photo.background).copy()
    # Soft drop shadow, blurred at quarter resolution (blur is the costliest step at full size).
    small = mask.reduce(4).transform((W // 4, H // 4), Image.AFFINE, (1, 0, -W * 0.005, 0, 1, -H * 0.004))
    shadow = small.filter(ImageFilter.GaussianBlur(W * 0.006)).point(lambda v: v * 0.3).resize((W, H))
    canvas.paste((90, 90, 96), (0, 0), shadow)
    fill = Image.new("RGB", (W, H), base)
    _draw_pattern(fill, g, tr, w)
    canvas.paste(fill, (0, 0), mask)
    canvas.paste((0, 0, 0), (0, 0), ImageChops.multiply(mask, _shading(W, H, cx, w)))
    d = ImageDraw.Draw(canvas)
    lw = max(2, int(w * 0.015))
    for poly in polys[1:] + polys[:1]:
        d.polygon(poly, outline=line, width=lw)
    if g.category == "dress":
        d.line([tr(-0.36 if g.fit == "fitted" else -0.40, 0.72), tr(0.36 if g.fit == "fitted" else 0.40, 0.72)],
               fill=line, width=lw)
    _draw_neck(d, g, tr, w, base, line)
    return canvas.reduce(SS)
