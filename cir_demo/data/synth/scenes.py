"""Scenes flavour (CIRR-style): groups of simple objects on a floor in front of a wall.

A :class:`Scene` has a background colour and three slots (left, centre, right), each empty or
holding a :class:`Group` of 1-3 identical objects (shape, colour, size). What differs between two
scenes is a list of :class:`Change` s: add / remove / move a group, change a group's shape, colour,
size or count, or change the background. Captions describe exactly those changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

SHAPES = ("cube", "ball", "cone", "star", "cylinder")
COLOURS = {
    "red": (206, 38, 40), "orange": (240, 128, 26), "yellow": (238, 204, 40), "green": (46, 160, 70),
    "blue": (40, 92, 210), "purple": (128, 62, 176), "pink": (238, 118, 176), "white": (236, 236, 232),
}
SIZES = ("small", "large")
BACKGROUNDS = {
    "grey": (150, 150, 156), "blue": (118, 152, 204), "green": (128, 172, 128),
    "yellow": (222, 202, 128), "pink": (216, 160, 172), "purple": (162, 140, 194),
}
SLOTS = ("left", "centre", "right")
MAX_COUNT = 3


@dataclass(frozen=True)
class Group:
    """``count`` identical objects standing together in one slot."""
    shape: str
    colour: str
    size: str
    count: int


@dataclass(frozen=True)
class Scene:
    """Background colour name and the groups in the left / centre / right slots (None = empty)."""
    background: str
    slots: tuple

    def groups(self) -> list:
        """``(slot index, group)`` for the occupied slots, left to right."""
        return [(i, g) for i, g in enumerate(self.slots) if g is not None]


@dataclass(frozen=True)
class Change:
    """One caption-sized difference. ``kind`` is add/remove/move/shape/colour/size/count/background;
    ``slot`` is where it happens in the reference (``to_slot`` for add and move)."""
    kind: str
    slot: Optional[int] = None
    to_slot: Optional[int] = None


@dataclass(frozen=True)
class ScenePhoto:
    """Per-image nuisance: pixel size, horizon height and the seed of small object jitter."""
    size: int
    horizon: float
    jitter: int


def _pick(rng: np.random.Generator, options, exclude=()):
    choices = [o for o in options if o not in exclude]
    return choices[int(rng.integers(len(choices)))]


def random_group(rng: np.random.Generator) -> Group:
    """A group with uniformly drawn shape, colour and size; one object most often."""
    count = int(rng.choice([1, 1, 1, 2, 2, 3]))
    return Group(_pick(rng, SHAPES), _pick(rng, COLOURS), _pick(rng, SIZES), count)


def random_scene(rng: np.random.Generator) -> Scene:
    """A scene with 1-3 groups in random slots and a random background."""
    n = int(rng.choice([1, 2, 2, 3]))
    occupied = set(rng.permutation(3)[:n].tolist())
    slots = tuple(random_group(rng) if i in occupied else None for i in range(3))
    return Scene(_pick(rng, BACKGROUNDS), slots)


def _replace_slot(scene: Scene, slot: int, group: Optional[Group]) -> Scene:
    slots = list(scene.slots)
    slots[slot] = group
    return dataclasses.replace(scene, slots=tuple(slots))


def possible_kinds(scene: Scene) -> tuple:
    """The change kinds that apply to ``scene`` (no add when full, no remove of the last group)."""
    n = len(scene.groups())
    kinds = ["shape", "colour", "size", "count", "background"]
    if n < 3:
        kinds += ["add", "move"]
    if n > 1:
        kinds.append("remove")
    return tuple(kinds)


def mutate(scene: Scene, kind: str, rng: np.random.Generator) -> Scene:
    """``scene`` changed by one change of ``kind`` (see :func:`possible_kinds`)."""
    empty = [i for i, g in enumerate(scene.slots) if g is None]
    slot, group = scene.groups()[int(rng.integers(len(scene.groups())))]
    if kind == "background":
        return dataclasses.replace(scene, background=_pick(rng, BACKGROUNDS, exclude=(scene.background,)))
    if kind == "add":
        return _replace_slot(scene, _pick(rng, empty), random_group(rng))
    if kind == "remove":
        return _replace_slot(scene, slot, None)
    if kind == "move":
        return _replace_slot(_replace_slot(scene, slot, None), _pick(rng, empty), group)
    if kind == "count":
        new = _pick(rng, range(1, MAX_COUNT + 1), exclude=(group.count,))
        return _replace_slot(scene, slot, dataclasses.replace(group, count=new))
    options = {"shape": SHAPES, "colour": COLOURS, "size": SIZES}[kind]
    new = _pick(rng, options, exclude=(getattr(group, kind),))
    return _replace_slot(scene, slot, dataclasses.replace(group, **{kind: new}))


def diff_scenes(a: Scene, b: Scene) -> list:
    """The :class:`Change` s that turn ``a`` into ``b``; a group that only changed slot is a move."""
    changes = []
    appeared = [i for i in range(3) if a.slots[i] is None and b.slots[i] is not None]
    vanished = [i for i in range(3) if a.slots[i] is not None and b.slots[i] is None]
    for i in list(vanished):
        match = next((j for j in appeared if b.slots[j] == a.slots[i]), None)
        if match is not None:
            changes.append(Change("move", i, match))
            vanished.remove(i)
            appeared.remove(match)
    changes += [Change("remove", i) for i in vanished] + [Change("add", None, j) for j in appeared]
    for i in range(3):
        ga, gb = a.slots[i], b.slots[i]
        if ga is not None and gb is not None:
            changes += [Change(k, i) for k in ("shape", "colour", "size", "count")
                        if getattr(ga, k) != getattr(gb, k)]
    if a.background != b.background:
        changes.append(Change("background"))
    return changes


def random_photo(rng: np.random.Generator, size: int = 192) -> ScenePhoto:
    """Independent nuisance for one scene image."""
    return ScenePhoto(size=size, horizon=round(float(rng.uniform(0.4, 0.48)), 2),
                      jitter=int(rng.integers(2**31)))
