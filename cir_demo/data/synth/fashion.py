"""Fashion flavour: garment attributes, their mutations, and procedural drawing with PIL.

A :class:`Garment` is what a shopper talks about (colour, shade, pattern, sleeves, neckline,
length, fit); a :class:`Photo` is what they do not (canvas size, background, framing). A
triplet's reference and target share nothing but the garment's unchanged attributes: each image
gets its own independently drawn ``Photo`` so no pixel-level nuisance leaks the target.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

CATEGORIES = ("dress", "shirt", "toptee")

# Named palette, (light, normal, dark) shades picked by hand so that e.g. light brown reads as
# tan and light red as coral, not as two similar pinks.
PALETTE = {
    "red": ((240, 128, 128), (200, 32, 44), (120, 16, 24)),
    "orange": ((250, 180, 110), (236, 118, 24), (160, 72, 10)),
    "yellow": ((250, 232, 140), (236, 198, 38), (170, 136, 20)),
    "green": ((140, 210, 140), (44, 146, 66), (20, 86, 38)),
    "teal": ((120, 200, 196), (16, 138, 140), (8, 84, 86)),
    "blue": ((140, 180, 240), (34, 82, 196), (18, 40, 112)),
    "purple": ((190, 150, 220), (118, 52, 158), (66, 26, 92)),
    "pink": ((250, 190, 215), (236, 120, 168), (180, 60, 110)),
    "brown": ((196, 154, 108), (122, 74, 38), (72, 42, 20)),
    "grey": ((196, 196, 198), (128, 128, 130), (70, 70, 74)),
    "black": ((34, 34, 38),) * 3,
    "white": ((244, 244, 238),) * 3,
}
COLOURS = tuple(PALETTE)
MIN_CONTRAST = 120  # RGB distance between a garment and its pattern, so the pattern stays visible
ACHROMATIC = ("black", "white")  # no light / dark variant: "dark black" is not a thing
SHADES = ("light", "normal", "dark")
PATTERNS = ("solid", "stripes", "dots", "checks", "graphic", "lettering")
PATTERN_COLOURS = ("white", "black", "red", "yellow", "blue", "orange", "pink", "green")
GRAPHICS = ("star", "heart", "flower")
WORDS = ("LOVE", "NYC", "WILD")
SLEEVES = ("sleeveless", "short", "long")
NECKS = ("round", "v-neck", "collar")
LENGTHS = {"dress": ("mini", "knee", "maxi"), "shirt": ("cropped", "regular", "long"),
           "toptee": ("cropped", "regular", "long")}
FITS = ("loose", "fitted")
# A change "unit" is what one caption phrase describes; colour covers its shade, pattern covers
# its colour and motif, so the units of a pair are unambiguous.
UNITS = ("colour", "shade", "pattern", "pcolour", "motif", "sleeve", "neck", "length", "fit")

BACKGROUNDS = ((236, 236, 236), (243, 237, 228), (229, 235, 242), (242, 232, 234), (232, 240, 232))
CANVAS_WIDTHS = (152, 160, 168)
CANVAS_HEIGHTS = (192, 200, 208, 216)  # aspect 1.14 .. 1.42: some above targetpad's 1.25


@dataclass(frozen=True)
class Garment:
    """The attributes captions talk about. ``pcolour``/``motif`` only mean something for patterns."""
    category: str
    colour: str
    shade: str
    pattern: str
    pcolour: Optional[str]
    motif: int
    sleeve: str
    neck: str
    length: str
    fit: str


@dataclass(frozen=True)
class Photo:
    """Per-image nuisance: canvas size, background tint, garment scale and horizontal shift."""
    width: int
    height: int
    background: int
    scale: float
    dx: float


def shade_rgb(colour: str, shade: str) -> tuple:
    """RGB of a palette colour at a shade."""
    return PALETTE[colour][SHADES.index(shade)]


def contrasts(colour: str, shade: str, pcolour: Optional[str]) -> bool:
    """Whether a ``pcolour`` pattern stays visible on ``colour`` at ``shade`` (True without pattern)."""
    if pcolour is None:
        return True
    a, b = np.array(shade_rgb(colour, shade)), np.array(shade_rgb(pcolour, "normal"))
    return float(np.linalg.norm(a - b)) >= MIN_CONTRAST


def _pick(rng: np.random.Generator, options, exclude=()) -> str:
    choices = [o for o in options if o not in exclude]
    return choices[int(rng.integers(len(choices)))]


def _pattern_colour(rng, colour: str, shade: str, exclude=()) -> Optional[str]:
    """A visible pattern colour for the garment, or None when every option is excluded."""
    choices = [p for p in PATTERN_COLOURS if p not in exclude and p != colour and contrasts(colour, shade, p)]
    return choices[int(rng.integers(len(choices)))] if choices else None


def _with_pattern(g: Garment, pattern: str, rng) -> Garment:
    """``g`` with a new pattern, keeping its pattern colour when it had one (canonical form)."""
    if pattern == "solid":
        return dataclasses.replace(g, pattern="solid", pcolour=None, motif=0)
    pcolour = g.pcolour or _pattern_colour(rng, g.colour, g.shade)
    if pcolour is None:  # nothing would show on this colour
        return dataclasses.replace(g, pattern="solid", pcolour=None, motif=0)
    motif = int(rng.integers(3)) if pattern in ("graphic", "lettering") else 0
    return dataclasses.replace(g, pattern=pattern, pcolour=pcolour, motif=motif)


def random_garment(category: str, rng: np.random.Generator) -> Garment:
    """A garment of ``category`` with every attribute drawn uniformly (solid a bit more often)."""
    colour = _pick(rng, COLOURS)
    shade = "normal" if colour in ACHROMATIC else _pick(rng, SHADES)
    g = Garment(category, colour, shade, "solid", None, 0, _pick(rng, SLEEVES), _pick(rng, NECKS),
                _pick(rng, LENGTHS[category]), _pick(rng, FITS))
    pattern = "solid" if rng.random() < 0.25 else _pick(rng, PATTERNS)
    return _with_pattern(g, pattern, rng)


def mutable_units(g: Garment) -> tuple:
    """The change units that make sense for ``g`` (no shade change on black, ...)."""
    skip = set()
    if g.colour in ACHROMATIC:
        skip.add("shade")
    if g.pattern == "solid":
        skip.add("pcolour")
    if g.pattern not in ("graphic", "lettering"):
        skip.add("motif")
    return tuple(u for u in UNITS if u not in skip)


def mutate(g: Garment, unit: str, rng: np.random.Generator) -> Garment:
    """``g`` changed in exactly one unit (see :data:`UNITS`); ``g`` itself in the rare case where no
    value of that unit keeps the pattern visible (callers drop unchanged results)."""
    if unit == "colour":
        options = [c for c in COLOURS if c not in (g.colour, g.pcolour)
                   and contrasts(c, "normal" if c in ACHROMATIC else g.shade, g.pcolour)]
        if not options:
            return g
        colour = _pick(rng, options)
        return dataclasses.replace(g, colour=colour, shade="normal" if colour in ACHROMATIC else g.shade)
    if unit == "shade":
        options = [s for s in SHADES if s != g.shade and contrasts(g.colour, s, g.pcolour)]
        return dataclasses.replace(g, shade=_pick(rng, options)) if options else g
    if unit == "pattern":
        return _with_pattern(g, _pick(rng, PATTERNS, exclude=(g.pattern,)), rng)
    if unit == "pcolour":
        pcolour = _pattern_colour(rng, g.colour, g.shade, exclude=(g.pcolour,))
        return dataclasses.replace(g, pcolour=pcolour) if pcolour else g
    if unit == "motif":
        return dataclasses.replace(g, motif=(g.motif + 1 + int(rng.integers(2))) % 3)
    options = {"sleeve": SLEEVES, "neck": NECKS, "length": LENGTHS[g.category], "fit": FITS}[unit]
    return dataclasses.replace(g, **{unit: _pick(rng, options, exclude=(getattr(g, unit),))})


def diff_units(a: Garment, b: Garment) -> tuple:
    """The change units that turn ``a`` into ``b``, in :data:`UNITS` order."""
    units = []
    if a.colour != b.colour:
        units.append("colour")
    elif a.shade != b.shade:
        units.append("shade")
    if a.pattern != b.pattern:
        units.append("pattern")
    elif a.pcolour != b.pcolour:
        units.append("pcolour")
    elif a.motif != b.motif:
        units.append("motif")
    units += [u for u in ("sleeve", "neck", "length", "fit") if getattr(a, u) != getattr(b, u)]
    return tuple(units)


def random_photo(rng: np.random.Generator) -> Photo:
    """Independent nuisance for one image."""
    return Photo(width=int(rng.choice(CANVAS_WIDTHS)), height=int(rng.choice(CANVAS_HEIGHTS)),
                 background=int(rng.integers(len(BACKGROUNDS))),
                 scale=round(float(rng.uniform(0.94, 1.04)), 3), dx=round(float(rng.uniform(-0.03, 0.03)), 3))
