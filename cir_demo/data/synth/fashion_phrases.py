"""The fashion flavour's phrasebook: every way one change unit may be said, in two disjoint pools.

People write edits in many ways: relative ("is red", "has no sleeves"), imperative ("make it
red", "remove the sleeves"), fragments ("in red", "without sleeves"), with synonyms (floral /
flower print, polka dots / spots). Each unit (:data:`~.fashion.UNITS`) has a **train** pool, which
the world's captions are drawn from, and a **heldout** pool of sentence frames the world never
writes (checked by the tests), used only by the visitor-edit benchmark
(:mod:`cir_demo.eval.visitor`) to ask whether the models understand phrasings they never saw.
The held-out frames keep the words that carry the meaning, which the train pool teaches (a model
trained from scratch cannot know a colour name or a verb it never read), in frames the world never
writes ("same but in red", "could it be sleeveless", "no pattern please").
"""

from __future__ import annotations

from cir_demo.data.synth.fashion import GRAPHICS, LENGTHS, SHADES, SLEEVES, WORDS, Garment

POOLS = ("train", "heldout")
NOUN = {"dress": "dress", "shirt": "shirt", "toptee": "top"}
PATTERN_NOUN = {"stripes": "stripes", "dots": "dots", "checks": "checks"}
# Synonyms a shopper uses for a chest graphic; both the train and held-out pools use them.
GRAPHIC_WORDS = {"star": ("star",), "heart": ("heart",), "flower": ("flower", "floral")}


def colour_words(g: Garment) -> str:
    """``"dark red"``, ``"light blue"``, ``"white"``."""
    return g.colour if g.shade == "normal" else f"{g.shade} {g.colour}"


def print_noun(g: Garment) -> str:
    """What the pattern is called: "stripes", "star", "lettering"."""
    if g.pattern == "graphic":
        return GRAPHICS[g.motif]
    return "lettering" if g.pattern == "lettering" else PATTERN_NOUN[g.pattern]


def _cmp(order, old, new, up: str, down: str) -> str:
    return up if order.index(new) > order.index(old) else down


def _pools(train: list, heldout: list) -> dict:
    return {"train": train, "heldout": heldout}


def _graphic(b: Garment) -> dict:
    m, pc = GRAPHICS[b.motif], b.pcolour
    train = [f"has a {m} graphic", f"has a {pc} {m} on it", f"has a {m} print", "has a graphic print",
             f"has a {pc} {m} on the front", f"add a {m}", f"make it a {m} print"]
    heldout = [f"put a {m} on it", f"same but with a {m}", f"with a {pc} {m} please", f"i want a {m} on the chest"]
    if m == "flower":  # "floral" is how people say it; the world's pictures are one big flower
        train += ["has a floral print", "has a floral pattern", "is floral", "has flowers on it"]
        heldout += ["floral please", "same but floral", "could it be floral"]
    return _pools(train, heldout)


def _pattern(a: Garment, b: Garment) -> dict:
    pc = b.pcolour
    if b.pattern == "solid":
        old = "print" if a.pattern in ("graphic", "lettering") else print_noun(a)
        return _pools(["is solid", "is plain", "has no pattern", f"is solid {colour_words(b)}", f"has no {old}",
                       "remove the pattern", "without a pattern", "make it plain", f"without the {old}"],
                      [f"same but without the {old}", "same but plain", "could it be plain", "no pattern please"])
    if b.pattern == "stripes":
        return _pools(["has stripes", "is striped", f"has {pc} stripes", "has horizontal stripes", f"is {pc} striped",
                       "add stripes", "with stripes", "make it striped"],
                      ["same but striped", "could it have stripes", f"put {pc} stripes on it", "stripes please"])
    if b.pattern == "dots":
        return _pools(["has polka dots", "is dotted", f"has {pc} dots", f"has {pc} polka dots", "is spotted",
                       "add dots", "with polka dots", "has spots", "make it dotted"],
                      ["same but dotted", f"put {pc} spots on it", "could it have polka dots", "dots please"])
    if b.pattern == "checks":
        return _pools(["is checkered", "is plaid", "has a plaid pattern", f"has {pc} checks", "has a checked pattern",
                       "make it plaid", "with checks"],
                      ["same but checkered", "could it be plaid", f"put {pc} checks on it", "checks please"])
    if b.pattern == "graphic":
        return _graphic(b)
    word = WORDS[b.motif].lower()
    return _pools(["has lettering", f"has {pc} lettering", "has words on it", "has text on the front", f"says {word}",
                   f"has {pc} text", "add some text", f"with the word {word}"],
                  [f"put {word} on it", "same but with text", f"it should say {word}", "lettering please"])


def _detail(a: Garment, b: Garment, unit: str) -> dict:
    """Phrasings of a change of pattern colour or motif (the pattern itself stays)."""
    if unit == "pcolour":
        noun, pc = print_noun(b), b.pcolour
        verb = "are" if b.pattern in PATTERN_NOUN else "is"
        return _pools([f"has {pc} {noun} instead of {a.pcolour}", f"the {noun} {verb} {pc}", f"has {pc} {noun}",
                       f"has a different {noun} color", f"make the {noun} {pc}"],
                      [f"same but with {pc} {noun}", f"could the {noun} be {pc}", f"{pc} {noun} please"])
    if b.pattern == "graphic":
        m, old = GRAPHICS[b.motif], GRAPHICS[a.motif]
        return _pools([f"has a {m} instead of a {old}", f"has a {m} graphic", f"has a {m} print", f"has a {m} on it"],
                      [f"same but with a {m}", f"put a {m} on it not a {old}", f"a {m} please"])
    word, old = WORDS[b.motif].lower(), WORDS[a.motif].lower()
    return _pools([f"says {word}", f"says {word} instead of {old}", f"has the word {word}", "has different lettering"],
                  [f"it should say {word}", f"same but {word}", f"put {word} on it"])


def _colour(a: Garment, b: Garment, unit: str) -> dict:
    noun, c = NOUN[b.category], colour_words(b)
    if unit == "colour":
        return _pools([f"is {c}", f"is {c} colored", f"is in {c}", f"is a {c} {noun}", f"is {c} instead of {a.colour}",
                       f"has a {c} color", f"is {c} in color", f"make it {c}", f"change the color to {c}",
                       f"turn it {c}", f"in {c}", f"{c} instead"],
                      [f"same but in {c}", f"could it be {c}", f"i want it in {c}", f"{c} please",
                       f"same {noun} but {c}"])
    cmp = _cmp(SHADES, a.shade, b.shade, "darker", "lighter")
    train = [f"is {cmp}", f"is {cmp} in color", f"is a {cmp} shade", f"is a {cmp} {b.colour}", f"has a {cmp} color",
             f"is a {cmp} shade of {b.colour}", f"make it {cmp}", f"a {cmp} color"]
    return _pools(train + ([f"is {c}"] if b.shade != "normal" else []),
                  [f"same but {cmp}", f"could it be {cmp}", f"a bit {cmp} please", f"i want it {cmp}"])


def _sleeve(a: Garment, b: Garment) -> dict:
    noun = NOUN[b.category]
    if b.sleeve == "sleeveless":
        return _pools(["is sleeveless", "has no sleeves", f"is a sleeveless {noun}", "has no sleeves at all",
                       "without sleeves", "remove the sleeves", "make it sleeveless"],
                      ["same but without sleeves", "same but sleeveless", "no sleeves please", "could it be sleeveless"])
    cmp = _cmp(SLEEVES, a.sleeve, b.sleeve, "longer", "shorter")
    train = [f"has {b.sleeve} sleeves", f"is {b.sleeve} sleeved", f"has {cmp} sleeves", f"with {b.sleeve} sleeves",
             f"make the sleeves {cmp}"]
    train += ["has sleeves", "add sleeves"] if a.sleeve == "sleeveless" else [
        f"has {b.sleeve} sleeves instead of {a.sleeve}"]
    return _pools(train, [f"same but with {b.sleeve} sleeves", f"{cmp} sleeves please", f"could it have {b.sleeve} sleeves",
                          f"i want {b.sleeve} sleeves"])


def _neck(b: Garment) -> dict:
    train = {"round": ["has a round neck", "has a crew neck", "has a round neckline", "has a rounded collar line",
                       "with a round neck", "make it a crew neck"],
             "v-neck": ["has a v-neck", "has a v neckline", "is v-necked", "has a v shaped neckline", "with a v-neck",
                        "make it a v-neck"],
             "collar": ["has a collar", "is collared", "has a pointed collar", "has a shirt collar", "with a collar",
                        "add a collar"]}[b.neck]
    word = {"round": "round neck", "v-neck": "v-neck", "collar": "collar"}[b.neck]
    return _pools(train, [f"same but with a {word}", f"could it have a {word}", f"a {word} please"])


def _length(a: Garment, b: Garment) -> dict:
    noun, order = NOUN[b.category], LENGTHS[b.category]
    cmp = _cmp(order, a.length, b.length, "longer", "shorter")
    much = "much " if abs(order.index(a.length) - order.index(b.length)) == 2 else ""
    own = {"mini": ["is a mini dress", "is above the knee"], "knee": ["is knee length", "is midi length"],
           "maxi": ["is floor length", "is a maxi dress"], "cropped": ["is cropped", "is a crop top"],
           "regular": ["is regular length", "is hip length"],
           "long": [f"is a long {noun}", "is tunic length"]}[b.length]
    return _pools([f"is {much}{cmp}", f"is {cmp}", f"is {cmp} in length", f"make it {cmp}", f"a {cmp} {noun}"] + own,
                  [f"same but {cmp}", f"could it be {cmp}", f"a bit {cmp} please", f"i want it {cmp}"])


def _fit(b: Garment) -> dict:
    if b.fit == "loose":
        return _pools(["is looser", "is loose fitting", "is less fitted", "is more relaxed", "is baggier",
                       "is less tight", "make it looser"],
                      ["same but looser", "could it be looser", "a bit looser please"])
    return _pools(["is more fitted", "is tighter", "is less loose", "is form fitting", "is slimmer",
                   "is more form fitting", "make it tighter"],
                  ["same but tighter", "could it be more fitted", "a bit tighter please"])


def unit_phrases(a: Garment, b: Garment, unit: str, pool: str = "train") -> list:
    """Every phrasing in ``pool`` ("train" or "heldout") of the change ``unit`` from ``a`` to ``b``."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if unit == "pattern":
        options = _pattern(a, b)
    elif unit in ("pcolour", "motif"):
        options = _detail(a, b, unit)
    elif unit in ("colour", "shade"):
        options = _colour(a, b, unit)
    elif unit == "sleeve":
        options = _sleeve(a, b)
    elif unit == "neck":
        options = _neck(b)
    elif unit == "length":
        options = _length(a, b)
    else:
        options = _fit(b)
    return list(dict.fromkeys(options[pool]))  # "is much longer" and "is longer" coincide at one step
