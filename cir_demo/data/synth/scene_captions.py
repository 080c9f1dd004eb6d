"""Caption templates for the scenes flavour: CIRR-style modification sentences ("add a red cube
and remove the ball", "make the background blue", "show two stars instead of one") and absolute
captions ("two small green balls on the left and a large blue cube on a grey background").

Objects are referred to as a person would: by shape when that is unique in the reference, else by
colour and shape, else by shape and position.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cir_demo.data.synth.scenes import Change, Group, Scene

NUMBER = {1: "one", 2: "two", 3: "three"}
AT = {0: "on the left", 1: "in the middle", 2: "on the right"}
AT_ALT = {0: "on the left side", 1: "in the center", 2: "on the right side"}
TO = {0: "to the left", 1: "to the middle", 2: "to the right"}
GROUP_KINDS = ("shape", "colour", "size", "count")
SYNONYMS = {"cube": ("block", "box"), "ball": ("sphere",), "cylinder": ("can",)}


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _noun(shape: str, count: int, rng=None) -> str:
    """Shape noun, plural when ``count`` > 1; a synonym now and then when ``rng`` is given."""
    word = shape
    if rng is not None and shape in SYNONYMS and rng.random() < 0.2:
        word = _choice(rng, SYNONYMS[shape])
    if count == 1:
        return word
    return word + ("es" if word.endswith("x") else "s")


def describe(group: Group, rng=None, size: bool = True) -> str:
    """``"a red cube"``, ``"two small green balls"`` (size included when ``size``)."""
    words = ([group.size] if size else []) + [group.colour, _noun(group.shape, group.count, rng)]
    head = NUMBER[group.count] if group.count > 1 else ("an" if words[0][0] in "aeiou" else "a")
    return " ".join([head] + words)


def refer(scene: Scene, slot: int, rng: np.random.Generator) -> str:
    """A definite description of the group in ``slot`` that is unambiguous within ``scene``."""
    g = scene.slots[slot]
    others = [h for i, h in scene.groups() if i != slot]
    noun = _noun(g.shape, g.count, rng)
    same_shape = [h for h in others if h.shape == g.shape]
    if not same_shape and rng.random() < 0.7:
        return f"the {noun}"
    if not [h for h in same_shape if h.colour == g.colour] and rng.random() < 0.8:
        return f"the {g.colour} {noun}"
    return f"the {noun} {AT[slot]}"


def _add(b: Scene, slot: int, rng) -> list:
    what = describe(b.slots[slot], rng, size=rng.random() < 0.5)
    at = _choice(rng, [AT, AT_ALT])[slot]
    return [f"add {what}", f"add {what} {at}", f"put {what} {at}", f"place {what} {at}", f"include {what} {at}"]


def _shape(a: Scene, b: Scene, slot: int, rng) -> list:
    ga, gb = a.slots[slot], b.slots[slot]
    x, n = refer(a, slot, rng), gb.count
    new, old = _noun(gb.shape, n, rng), _noun(ga.shape, n)
    if n == 1:
        new, old = f"a {new}", f"a {old}"
    return [f"replace {x} with {new}", f"change {x} into {new}", f"turn {x} into {new}",
            f"show {new} instead of {old}", f"{x} should be {new}"]


def _count(a: Scene, b: Scene, slot: int, rng) -> list:
    ga, gb = a.slots[slot], b.slots[slot]
    n, m, shape = ga.count, gb.count, ga.shape
    options = [f"show {NUMBER[m]} {_noun(shape, m, rng)} instead of {NUMBER[n]}",
               f"there should be {NUMBER[m]} {_noun(shape, m, rng)}"]
    if m == n + 1:
        options += [f"add another {ga.colour} {shape}", f"add one more {shape}"]
    if m == n - 1:
        options.append(f"remove one of the {_noun(shape, n, rng)}")
    if m == 1:
        options.append(f"keep only one {shape}")
    return options


def _modify(a: Scene, b: Scene, c: Change, rng) -> list:
    ga, gb = a.slots[c.slot], b.slots[c.slot]
    x = refer(a, c.slot, rng)
    if c.kind == "colour":
        colour = gb.colour
        return [f"make {x} {colour}", f"change {x} to {colour}", f"paint {x} {colour}",
                f"{x} should be {colour}", f"change the color of {x} to {colour}", f"turn {x} {colour}"]
    bigger = gb.size == "large"
    cmp = _choice(rng, ["bigger", "larger"]) if bigger else "smaller"
    return [f"make {x} {cmp}", f"{x} should be {cmp}", ("enlarge " if bigger else "shrink ") + x,
            f"use {describe(dataclasses.replace(ga, size=gb.size))} instead"]


def change_phrases(a: Scene, b: Scene, c: Change, rng: np.random.Generator) -> list:
    """Every phrasing (drawn with ``rng``) of one change from scene ``a`` to scene ``b``."""
    if c.kind == "add":
        return _add(b, c.to_slot, rng)
    if c.kind == "remove":
        x = refer(a, c.slot, rng)
        return [f"remove {x}", f"take away {x}", f"get rid of {x}", f"delete {x}", f"take out {x}"]
    if c.kind == "move":
        x = refer(a, c.slot, rng)
        return [f"move {x} {TO[c.to_slot]}", f"put {x} {AT[c.to_slot]}", f"shift {x} {TO[c.to_slot]}"]
    if c.kind == "background":
        col, old = b.background, a.background
        return [f"make the background {col}", f"change the background to {col}", f"put it on a {col} background",
                f"use a {col} background", f"the background should be {col}",
                f"change the {old} background to {col}"]
    if c.kind == "shape":
        return _shape(a, b, c.slot, rng)
    if c.kind == "count":
        return _count(a, b, c.slot, rng)
    return _modify(a, b, c, rng)


def _merged(a: Scene, b: Scene, slot: int, kinds: set, rng) -> list:
    """Two changes to one group in one phrase: describing them one after the other would refer
    to the group by what the first change already altered ("show cones ..., turn the balls white")."""
    x, gb = refer(a, slot, rng), b.slots[slot]
    new = describe(gb, rng, size="size" in kinds or rng.random() < 0.3)
    options = [f"replace {x} with {new}", f"change {x} into {new}", f"{x} should be {new}", f"show {new} instead"]
    if kinds == {"colour", "size"}:
        options.append(f"make {x} {gb.colour} and {'bigger' if gb.size == 'large' else 'smaller'}")
    return options


def relative_caption(a: Scene, b: Scene, changes, rng: np.random.Generator) -> str:
    """One CIRR-style caption for the 1 or 2 ``changes`` turning ``a`` into ``b``."""
    if len(changes) == 2 and changes[0].slot is not None and changes[0].slot == changes[1].slot \
            and changes[0].kind in GROUP_KINDS and changes[1].kind in GROUP_KINDS:
        return _choice(rng, _merged(a, b, changes[0].slot, {c.kind for c in changes}, rng))
    phrases = [_choice(rng, change_phrases(a, b, c, rng)) for c in changes]
    if len(phrases) == 1:
        return phrases[0]
    if rng.random() < 0.5:
        phrases.reverse()
    return _choice(rng, [" and ", " and ", ", ", " and also ", ", then "]).join(phrases)


def absolute_caption(scene: Scene) -> str:
    """Every group left to right and the background, e.g. "two small green balls on the left and a
    large blue cube in the middle on a grey background"."""
    parts = [f"{describe(g)} {AT[i]}" for i, g in scene.groups()]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{body} on a {scene.background} background"
