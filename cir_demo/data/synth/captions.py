"""Caption templates for the fashion flavour: relative captions in FashionIQ style (lower case,
no final period, fragments like "is darker and has orange lettering") and absolute captions.

Each change unit (see :data:`~.fashion.UNITS`) has several phrasings (synonyms, comparatives,
with or without the old value), so the two captions of a triplet describe one change differently.
The scenes flavour's captions live in :mod:`.scene_captions`.
"""

from __future__ import annotations

import numpy as np

from cir_demo.data.synth.fashion import GRAPHICS, LENGTHS, SHADES, SLEEVES, WORDS, Garment

NOUN = {"dress": "dress", "shirt": "shirt", "toptee": "top"}
PATTERN_NOUN = {"stripes": "stripes", "dots": "dots", "checks": "checks"}


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def colour_words(g: Garment) -> str:
    """``"dark red"``, ``"light blue"``, ``"white"``."""
    return g.colour if g.shade == "normal" else f"{g.shade} {g.colour}"


def _cmp(order, old, new, up: str, down: str) -> str:
    return up if order.index(new) > order.index(old) else down


def _print_noun(g: Garment) -> str:
    if g.pattern == "graphic":
        return GRAPHICS[g.motif]
    return "lettering" if g.pattern == "lettering" else PATTERN_NOUN[g.pattern]


def _pattern_options(a: Garment, b: Garment) -> list:
    pc = b.pcolour
    if b.pattern == "solid":
        old = "print" if a.pattern in ("graphic", "lettering") else _print_noun(a)
        return ["is solid", "is plain", "has no pattern", f"is solid {colour_words(b)}", f"has no {old}"]
    if b.pattern == "stripes":
        return ["has stripes", "is striped", f"has {pc} stripes", "has horizontal stripes", f"is {pc} striped"]
    if b.pattern == "dots":
        return ["has polka dots", "is dotted", f"has {pc} dots", f"has {pc} polka dots", "is spotted"]
    if b.pattern == "checks":
        return ["is checkered", "is plaid", "has a plaid pattern", f"has {pc} checks", "has a checked pattern"]
    if b.pattern == "graphic":
        m = GRAPHICS[b.motif]
        return [f"has a {m} graphic", f"has a {pc} {m} on it", f"has a {m} print", "has a graphic print",
                f"has a {pc} {m} on the front"]
    word = WORDS[b.motif].lower()
    return ["has lettering", f"has {pc} lettering", "has words on it", "has text on the front", f"says {word}",
            f"has {pc} text"]


def _detail_options(a: Garment, b: Garment, unit: str) -> list:
    """Phrasings of a change of pattern colour or motif (the pattern itself stays)."""
    if unit == "pcolour":
        noun = _print_noun(b)
        verb = "are" if b.pattern in PATTERN_NOUN else "is"
        return [f"has {b.pcolour} {noun} instead of {a.pcolour}", f"the {noun} {verb} {b.pcolour}",
                f"has {b.pcolour} {noun}", f"has a different {noun} color"]
    if b.pattern == "graphic":
        m, old = GRAPHICS[b.motif], GRAPHICS[a.motif]
        return [f"has a {m} instead of a {old}", f"has a {m} graphic", f"has a {m} print", f"has a {m} on it"]
    word, old = WORDS[b.motif].lower(), WORDS[a.motif].lower()
    return [f"says {word}", f"says {word} instead of {old}", f"has the word {word}", "has different lettering"]


def _colour_options(a: Garment, b: Garment, unit: str) -> list:
    noun, c = NOUN[b.category], colour_words(b)
    if unit == "colour":
        return [f"is {c}", f"is {c} colored", f"is in {c}", f"is a {c} {noun}", f"is {c} instead of {a.colour}",
                f"has a {c} color", f"is {c} in color"]
    cmp = _cmp(SHADES, a.shade, b.shade, "darker", "lighter")
    options = [f"is {cmp}", f"is {cmp} in color", f"is a {cmp} shade", f"is a {cmp} {b.colour}",
               f"has a {cmp} color", f"is a {cmp} shade of {b.colour}"]
    return options + ([f"is {c}"] if b.shade != "normal" else [])


def _shape_options(a: Garment, b: Garment, unit: str) -> list:
    noun = NOUN[b.category]
    if unit == "sleeve":
        cmp = _cmp(SLEEVES, a.sleeve, b.sleeve, "longer", "shorter")
        if b.sleeve == "sleeveless":
            return ["is sleeveless", "has no sleeves", f"is a sleeveless {noun}", "has no sleeves at all"]
        options = [f"has {b.sleeve} sleeves", f"is {b.sleeve} sleeved", f"has {cmp} sleeves"]
        return options + (["has sleeves"] if a.sleeve == "sleeveless" else
                          [f"has {b.sleeve} sleeves instead of {a.sleeve}"])
    if unit == "neck":
        return {"round": ["has a round neck", "has a crew neck", "has a round neckline", "has a rounded collar line"],
                "v-neck": ["has a v-neck", "has a v neckline", "is v-necked", "has a v shaped neckline"],
                "collar": ["has a collar", "is collared", "has a pointed collar", "has a shirt collar"]}[b.neck]
    if unit == "length":
        order = LENGTHS[b.category]
        cmp = _cmp(order, a.length, b.length, "longer", "shorter")
        much = "much " if abs(order.index(a.length) - order.index(b.length)) == 2 else ""
        own = {"mini": ["is a mini dress", "is above the knee"], "knee": ["is knee length", "is midi length"],
               "maxi": ["is floor length", "is a maxi dress"], "cropped": ["is cropped", "is a crop top"],
               "regular": ["is regular length", "is hip length"],
               "long": [f"is a long {noun}", "is tunic length"]}[b.length]
        return [f"is {much}{cmp}", f"is {cmp}", f"is {cmp} in length"] + own
    if b.fit == "loose":
        return ["is looser", "is loose fitting", "is less fitted", "is more relaxed", "is baggier", "is less tight"]
    return ["is more fitted", "is tighter", "is less loose", "is form fitting", "is slimmer", "is more form fitting"]


def unit_phrases(a: Garment, b: Garment, unit: str) -> list:
    """Every phrasing of the change ``unit`` from garment ``a`` to garment ``b``."""
    if unit == "pattern":
        options = _pattern_options(a, b)
    elif unit in ("pcolour", "motif"):
        options = _detail_options(a, b, unit)
    elif unit in ("colour", "shade"):
        options = _colour_options(a, b, unit)
    else:
        options = _shape_options(a, b, unit)
    return list(dict.fromkeys(options))  # "is much longer" and "is longer" coincide at one step


def _join(p1: str, p2: str, rng: np.random.Generator) -> str:
    """Two phrases in one caption: "is red with stripes", "has a collar and long sleeves", ..."""
    if p1.startswith("is ") and p2.startswith("has ") and rng.random() < 0.4:
        return f"{p1} with {p2[4:]}"
    if p1.startswith("has ") and p2.startswith("has ") and rng.random() < 0.5:
        return f"{p1} and {p2[4:]}"
    return f"{p1} and {p2}"


def relative_captions(a: Garment, b: Garment, units, rng: np.random.Generator) -> tuple:
    """Two different FashionIQ-style captions for the change ``a`` -> ``b`` (1 or 2 ``units``).

    With two units, each caption mentions one or both of them and together they mention both,
    as FashionIQ's two annotators often split the description.
    """
    units = list(units)
    if len(units) == 1:
        options = unit_phrases(a, b, units[0])
        i, j = rng.choice(len(options), size=2, replace=False)
        return options[int(i)], options[int(j)]
    u1, u2 = units
    split = _choice(rng, [((u1, u2), (u2, u1)), ((u1, u2), (u1,)), ((u2,), (u1, u2)), ((u1,), (u2,)),
                          ((u2, u1), (u1,)), ((u1, u2), (u2,))])
    captions = []
    for mentioned in split:
        for _ in range(4):  # rarely both captions come out equal: draw again
            phrases = [_choice(rng, unit_phrases(a, b, u)) for u in mentioned]
            text = phrases[0] if len(phrases) == 1 else _join(phrases[0], phrases[1], rng)
            if text not in captions:
                break
        captions.append(text)
    return tuple(captions)


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def absolute_caption(g: Garment) -> str:
    """One sentence naming every attribute, e.g. "a fitted dark red long-sleeved knee-length dress
    with white dots and a v-neck"."""
    sleeve = {"sleeveless": "sleeveless", "short": "short-sleeved", "long": "long-sleeved"}[g.sleeve]
    length = {"mini": "mini", "knee": "knee-length", "maxi": "maxi", "cropped": "cropped", "regular": "",
              "long": "long"}[g.length]
    head = " ".join(w for w in (g.fit, colour_words(g), sleeve, length, NOUN[g.category]) if w)
    extras = []
    if g.pattern in PATTERN_NOUN:
        extras.append(f"{g.pcolour} {PATTERN_NOUN[g.pattern]}")
    elif g.pattern == "graphic":
        extras.append(f"a {g.pcolour} {GRAPHICS[g.motif]} print")
    elif g.pattern == "lettering":
        extras.append(f"{g.pcolour} lettering that says {WORDS[g.motif].lower()}")
    extras.append({"round": "a round neck", "v-neck": "a v-neck", "collar": "a collar"}[g.neck])
    return f"{_article(head)} with {' and '.join(extras)}"
