"""Captions of the fashion flavour: relative captions in FashionIQ style (lower case, no final
period, fragments like "is darker and has orange lettering") and absolute captions.

Each change unit (see :data:`~.fashion.UNITS`) has many phrasings (:mod:`.fashion_phrases`:
relative, imperative, synonyms; the world uses its train pool only), so the two captions of a
triplet describe one change differently. The scenes flavour's captions live in :mod:`.scene_captions`.
"""

from __future__ import annotations

import numpy as np

from cir_demo.data.synth.fashion import GRAPHICS, WORDS, Garment
from cir_demo.data.synth.fashion_phrases import NOUN, PATTERN_NOUN, colour_words, unit_phrases


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _join(p1: str, p2: str, rng: np.random.Generator) -> str:
    """Two phrases in one caption: "is red with stripes", "has a collar and long sleeves", ..."""
    if p2.startswith("has ") and not p1.startswith("has ") and rng.random() < 0.4:
        return f"{p1} with {p2[4:]}"  # "make it red with stripes", "is red with stripes"
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
