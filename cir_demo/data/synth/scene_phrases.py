"""The scenes flavour's phrasebook: CIRR-style modification sentences, in two disjoint pools.

"add a red cube and remove the ball", "make the background blue", "show two stars instead of
one": every change kind (:class:`~.scenes.Change`) has a **train** pool of phrasings, which the
world's captions are drawn from, and a **heldout** pool of sentence frames the world never
writes (checked by the tests), used only by the visitor-edit benchmark. As for garments, the
held-out frames keep the words that carry the meaning, which the train pool teaches, in frames the
world never writes ("could you remove the cube", "same but on pink").
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cir_demo.data.synth.scene_captions import AT, AT_ALT, GROUP_KINDS, NUMBER, TO, choice, describe, noun, refer
from cir_demo.data.synth.scenes import Change, Scene

POOLS = ("train", "heldout")


def _pools(train: list, heldout: list) -> dict:
    return {"train": train, "heldout": heldout}


def _add(b: Scene, slot: int, rng) -> dict:
    what = describe(b.slots[slot], rng, size=rng.random() < 0.5)
    at = choice(rng, [AT, AT_ALT])[slot]
    return _pools([f"add {what}", f"add {what} {at}", f"put {what} {at}", f"place {what} {at}",
                   f"include {what} {at}", f"there should also be {what} {at}", f"with {what} {at}"],
                  [f"also put {what} {at}", f"same but with {what} {at}", f"could you add {what}",
                   f"i want {what} {at} too"])


def _remove(a: Scene, slot: int, rng) -> dict:
    x = refer(a, slot, rng)
    return _pools([f"remove {x}", f"take away {x}", f"get rid of {x}", f"delete {x}", f"take out {x}",
                   f"without {x}"],
                  [f"same but without {x}", f"could you remove {x}", f"now remove {x} please", f"i want it without {x}"])


def _move(a: Scene, c: Change, rng) -> dict:
    x = refer(a, c.slot, rng)
    return _pools([f"move {x} {TO[c.to_slot]}", f"put {x} {AT[c.to_slot]}", f"shift {x} {TO[c.to_slot]}"],
                  [f"same but with {x} {AT[c.to_slot]}", f"could you move {x} {TO[c.to_slot]}"])


def _shape(a: Scene, b: Scene, slot: int, rng) -> dict:
    ga, gb = a.slots[slot], b.slots[slot]
    x, n = refer(a, slot, rng), gb.count
    new, old = noun(gb.shape, n, rng), noun(ga.shape, n)
    if n == 1:
        new, old = f"a {new}", f"a {old}"
    return _pools([f"replace {x} with {new}", f"change {x} into {new}", f"turn {x} into {new}",
                   f"show {new} instead of {old}", f"{x} should be {new}"],
                  [f"same but {new} instead of {old}", f"could {x} be {new}", f"please turn {x} into {new}"])


def _count(a: Scene, b: Scene, slot: int, rng) -> dict:
    ga, gb = a.slots[slot], b.slots[slot]
    n, m, shape = ga.count, gb.count, ga.shape
    many = noun(shape, m, rng)
    train = [f"show {NUMBER[m]} {many} instead of {NUMBER[n]}", f"there should be {NUMBER[m]} {many}",
             f"use {NUMBER[m]} {many} instead"]
    heldout = [f"same but {NUMBER[m]} {many}", f"could there be {NUMBER[m]} {many}", f"i want {NUMBER[m]} {many}"]
    if m > n:
        more = "another" if m == n + 1 else f"{NUMBER[m - n]} more"
        extra = shape if m == n + 1 else noun(shape, 2)
        train += [f"add {more} {ga.colour} {extra}", f"add {more} {extra}"]
        heldout += [f"also put {more} {extra}", f"i want {more} {extra}"]
    else:
        fewer = "one of the" if n - m == 1 else f"{NUMBER[n - m]} of the"
        train.append(f"remove {fewer} {noun(shape, n, rng)}")
        heldout.append(f"could you remove {fewer} {noun(shape, n)}")
    if m == 1:
        train.append(f"keep only one {shape}")
        heldout.append(f"just one {shape} please")
    return _pools(train, heldout)


def _modify(a: Scene, b: Scene, c: Change, rng) -> dict:
    ga, gb = a.slots[c.slot], b.slots[c.slot]
    x = refer(a, c.slot, rng)
    if c.kind == "colour":
        colour = gb.colour
        return _pools([f"make {x} {colour}", f"change {x} to {colour}", f"paint {x} {colour}",
                       f"{x} should be {colour}", f"change the color of {x} to {colour}", f"turn {x} {colour}"],
                      [f"same but {x} in {colour}", f"could {x} be {colour}", f"i want {x} {colour}"])
    bigger = gb.size == "large"
    cmp = choice(rng, ["bigger", "larger"]) if bigger else "smaller"
    return _pools([f"make {x} {cmp}", f"{x} should be {cmp}", ("enlarge " if bigger else "shrink ") + x,
                   f"use {describe(dataclasses.replace(ga, size=gb.size))} instead"],
                  [f"same but {x} {cmp}", f"could {x} be {cmp}", f"i want {x} a bit {cmp}"])


def _background(a: Scene, b: Scene) -> dict:
    col, old = b.background, a.background
    return _pools([f"make the background {col}", f"change the background to {col}", f"put it on a {col} background",
                   f"use a {col} background", f"the background should be {col}",
                   f"change the {old} background to {col}"],
                  [f"same but on {col}", f"could the background be {col}", f"a {col} background please",
                   f"i want a {col} background"])


def change_phrases(a: Scene, b: Scene, c: Change, rng: np.random.Generator, pool: str = "train") -> list:
    """Every phrasing in ``pool`` ("train" or "heldout"), drawn with ``rng``, of one change from
    scene ``a`` to scene ``b``."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if c.kind == "add":
        options = _add(b, c.to_slot, rng)
    elif c.kind == "remove":
        options = _remove(a, c.slot, rng)
    elif c.kind == "move":
        options = _move(a, c, rng)
    elif c.kind == "background":
        options = _background(a, b)
    elif c.kind == "shape":
        options = _shape(a, b, c.slot, rng)
    elif c.kind == "count":
        options = _count(a, b, c.slot, rng)
    else:
        options = _modify(a, b, c, rng)
    return options[pool]


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
    """One CIRR-style caption (train pool) for the 1 or 2 ``changes`` turning ``a`` into ``b``."""
    if len(changes) == 2 and changes[0].slot is not None and changes[0].slot == changes[1].slot \
            and changes[0].kind in GROUP_KINDS and changes[1].kind in GROUP_KINDS:
        return choice(rng, _merged(a, b, changes[0].slot, {c.kind for c in changes}, rng))
    phrases = [choice(rng, change_phrases(a, b, c, rng)) for c in changes]
    if len(phrases) == 1:
        return phrases[0]
    if rng.random() < 0.5:
        phrases.reverse()
    return choice(rng, [" and ", " and ", ", ", " and also ", ", then "]).join(phrases)
