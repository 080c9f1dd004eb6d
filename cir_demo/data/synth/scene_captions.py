"""How the scenes flavour names things: groups ("two small green balls"), definite references to
a group of a scene ("the cube", "the red cube", "the cube on the left"), and absolute captions
("two small green balls on the left and a large blue cube on a grey background").

Objects are referred to as a person would: by shape when that is unique in the reference, else by
colour and shape, else by shape and position. The modification sentences built from these
("add a red cube and remove the ball") live in :mod:`.scene_phrases`.
"""

from __future__ import annotations

import numpy as np

from cir_demo.data.synth.scenes import Group, Scene

NUMBER = {1: "one", 2: "two", 3: "three"}
AT = {0: "on the left", 1: "in the middle", 2: "on the right"}
AT_ALT = {0: "on the left side", 1: "in the center", 2: "on the right side"}
TO = {0: "to the left", 1: "to the middle", 2: "to the right"}
GROUP_KINDS = ("shape", "colour", "size", "count")
SYNONYMS = {"cube": ("block", "box"), "ball": ("sphere",), "cylinder": ("can",)}


def choice(rng: np.random.Generator, options):
    """One of ``options``, drawn with ``rng``."""
    return options[int(rng.integers(len(options)))]


def noun(shape: str, count: int, rng=None) -> str:
    """Shape noun, plural when ``count`` > 1; a synonym now and then when ``rng`` is given."""
    word = shape
    if rng is not None and shape in SYNONYMS and rng.random() < 0.2:
        word = choice(rng, SYNONYMS[shape])
    if count == 1:
        return word
    return word + ("es" if word.endswith("x") else "s")


def describe(group: Group, rng=None, size: bool = True) -> str:
    """``"a red cube"``, ``"two small green balls"`` (size included when ``size``)."""
    words = ([group.size] if size else []) + [group.colour, noun(group.shape, group.count, rng)]
    head = NUMBER[group.count] if group.count > 1 else ("an" if words[0][0] in "aeiou" else "a")
    return " ".join([head] + words)


def refer(scene: Scene, slot: int, rng: np.random.Generator) -> str:
    """A definite description of the group in ``slot`` that is unambiguous within ``scene``."""
    g = scene.slots[slot]
    others = [h for i, h in scene.groups() if i != slot]
    word = noun(g.shape, g.count, rng)
    same_shape = [h for h in others if h.shape == g.shape]
    if not same_shape and rng.random() < 0.7:
        return f"the {word}"
    if not [h for h in same_shape if h.colour == g.colour] and rng.random() < 0.8:
        return f"the {g.colour} {word}"
    return f"the {word} {AT[slot]}"


def absolute_caption(scene: Scene) -> str:
    """Every group left to right and the background, e.g. "two small green balls on the left and a
    large blue cube in the middle on a grey background"."""
    parts = [f"{describe(g)} {AT[i]}" for i, g in scene.groups()]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{body} on a {scene.background} background"
