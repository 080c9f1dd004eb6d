"""The world's attribute words, by kind: which words of an absolute caption can stand in for each other.

``lexicon.json`` at each dataset root lists, per kind, the interchangeable words its absolute
captions use ("cube", "ball", ... for shapes; "small", "large"; "left", "middle", "right"). Swapping
one such word for another of its kind turns a caption into one of a slightly different image: a
hard negative caption, which contrastive pre-training can use to learn what a bag of words misses
(which shape is where), as in NegCLIP (Yuksekgonul et al., ICLR 2023). Real datasets have no lexicon.
"""

from __future__ import annotations

from cir_demo.data.synth import fashion, scenes

LEXICON_FILE = "lexicon.json"


def _plural(word: str) -> str:
    return word + ("es" if word.endswith("x") else "s")


def scene_lexicon() -> dict:
    """Word kinds of the scenes' absolute captions (see :func:`~.scene_captions.absolute_caption`)."""
    colours = sorted(set(scenes.COLOURS) | set(scenes.BACKGROUNDS))
    return {"shape": list(scenes.SHAPES), "shapes": [_plural(s) for s in scenes.SHAPES], "colour": colours,
            "size": list(scenes.SIZES), "count": ["two", "three"], "position": ["left", "middle", "right"]}


def garment_lexicon() -> dict:
    """Word kinds of the garments' absolute captions (see :func:`~.captions.absolute_caption`)."""
    return {"colour": list(fashion.COLOURS), "shade": ["light", "dark"], "pattern": ["dots", "stripes", "checks"],
            "graphic": list(fashion.GRAPHICS), "word": [w.lower() for w in fashion.WORDS],
            "sleeve": ["sleeveless", "short-sleeved", "long-sleeved"],
            "length": ["mini", "knee-length", "maxi", "cropped", "long"], "fit": ["loose", "fitted"],
            "neck": ["v-neck", "collar"], "noun": ["dress", "shirt", "top"]}
