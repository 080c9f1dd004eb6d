"""Visitor edits: free-text changes in phrasings the training never saw, judged by attributes.

An edit is made from a validation pair (reference, target) of the synthetic world that differs in
exactly one change of a benchmarked kind, phrased from the **held-out** pool of the world's
phrasebook (:mod:`~cir_demo.data.synth.fashion_phrases`, :mod:`~cir_demo.data.synth.scene_phrases`):
"same but in red", "could it be sleeveless", "drop the cube", "same but on pink". The target only
proves that an answer exists in the gallery; any image may answer.

**The judge.** A retrieved image ``h`` answers edit ``e`` on reference ``r`` (a *hit*) when both hold:

1. *It shows the change.* Garments: colour, the colour words asked for ("dark red") equal ``h``'s;
   sleeve / length / pattern, ``h`` has the asked value, or, when the caption is comparative
   ("shorter", "longer sleeves"), ``h``'s value lies on the asked side of ``r``'s. Scenes:
   background, ``h``'s is the asked one; remove, no group of ``h`` equals the removed group;
   add, ``h`` has more groups than ``r`` and one with the added group's shape, colour and count;
   size / count, ``h``'s group in that slot has the reference group's shape and the asked size /
   count.
2. *It keeps the reference.* Apart from the changes that turn ``r`` into the target, ``h``
   differs from ``r`` by at most one change (garments: :func:`~cir_demo.data.synth.fashion.diff_units`;
   scenes: :func:`~cir_demo.data.synth.scenes.diff_scenes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from cir_demo.data.synth.fashion import LENGTHS, SLEEVES, Garment, diff_units
from cir_demo.data.synth.fashion_phrases import colour_words, unit_phrases
from cir_demo.data.synth.scene_phrases import change_phrases
from cir_demo.data.synth.scenes import Change, Scene, diff_scenes

KINDS = {"fashioniq": ("colour", "sleeve", "length", "pattern"),
         "cirr": ("background", "remove", "add", "size", "count")}
COMPARATIVES = {"sleeve": ("longer", "shorter"), "length": ("longer", "shorter")}
MAX_OTHER_CHANGES = 1


@dataclass(frozen=True)
class VisitorEdit:
    """One benchmark query: ``caption`` applied to ``reference`` in ``gallery`` (a FashionIQ category
    or "cirr"); ``kind`` names the change, ``target`` an image of the gallery that answers it."""
    gallery: str
    reference: str
    target: str
    kind: str
    caption: str


def edit_kind(dataset: str, ref, tgt) -> Optional[str]:
    """The benchmarked kind of the single change turning ``ref`` into ``tgt``, or None."""
    if dataset == "fashioniq":
        units = diff_units(ref, tgt)
        kind = units[0] if len(units) == 1 else None
    else:
        changes = diff_scenes(ref, tgt)
        kind = changes[0].kind if len(changes) == 1 else None
    return kind if kind in KINDS[dataset] else None


def phrase_edit(dataset: str, ref, tgt, kind: str, rng: np.random.Generator) -> str:
    """A held-out phrasing of the change ``ref`` -> ``tgt`` (of ``kind``)."""
    if dataset == "fashioniq":
        options = unit_phrases(ref, tgt, kind, pool="heldout")
    else:
        options = change_phrases(ref, tgt, diff_scenes(ref, tgt)[0], rng, pool="heldout")
    return options[int(rng.integers(len(options)))]


def _garment_shows(ref: Garment, tgt: Garment, hit: Garment, kind: str, caption: str) -> bool:
    if kind == "colour":
        return colour_words(hit) == colour_words(tgt)
    if kind == "pattern":
        return hit.pattern == tgt.pattern
    order = SLEEVES if kind == "sleeve" else LENGTHS[ref.category]
    words = caption.split()
    longer, shorter = COMPARATIVES[kind]
    if longer in words or shorter in words:
        step = order.index(getattr(hit, kind)) - order.index(getattr(ref, kind))
        return step > 0 if longer in words else step < 0
    return getattr(hit, kind) == getattr(tgt, kind)


def _scene_shows(ref: Scene, tgt: Scene, hit: Scene, change: Change) -> bool:
    if change.kind == "background":
        return hit.background == tgt.background
    if change.kind == "remove":
        gone = ref.slots[change.slot]
        return all(g != gone for _, g in hit.groups())
    if change.kind == "add":
        new = tgt.slots[change.to_slot]
        same = [g for _, g in hit.groups() if (g.shape, g.colour, g.count) == (new.shape, new.colour, new.count)]
        return len(hit.groups()) > len(ref.groups()) and bool(same)
    asked, group = tgt.slots[change.slot], hit.slots[change.slot]
    if group is None or group.shape != asked.shape:
        return False
    return getattr(group, change.kind) == getattr(asked, change.kind)


def other_changes(dataset: str, ref, tgt, hit) -> int:
    """How many changes separate ``hit`` from ``ref`` beyond those the edit asked for."""
    if dataset == "fashioniq":
        return len(set(diff_units(ref, hit)) - set(diff_units(ref, tgt)))
    asked = diff_scenes(ref, tgt)
    return sum(c not in asked for c in diff_scenes(ref, hit))


def is_hit(dataset: str, edit: VisitorEdit, ref, tgt, hit) -> bool:
    """The judge (module docstring): ``hit`` shows the asked change and keeps the reference."""
    if dataset == "fashioniq":
        shows = _garment_shows(ref, tgt, hit, edit.kind, edit.caption)
    else:
        shows = _scene_shows(ref, tgt, hit, diff_scenes(ref, tgt)[0])
    return shows and other_changes(dataset, ref, tgt, hit) <= MAX_OTHER_CHANGES


def sample_edits(dataset: str, pairs, attributes: dict, *, per_kind: int, seed: int = 0) -> list[VisitorEdit]:
    """Up to ``per_kind`` edits of each benchmarked kind from ``pairs`` ((gallery, reference, target)
    of the validation split), phrased from the held-out pool; deterministic in ``seed``."""
    rng = np.random.default_rng([seed, 15])
    by_kind: dict = {k: [] for k in KINDS[dataset]}
    for gallery, ref, tgt in dict.fromkeys(pairs):  # a pair listed twice is one candidate
        kind = edit_kind(dataset, attributes[ref], attributes[tgt])
        if kind is not None:
            by_kind[kind].append((gallery, ref, tgt))
    edits = []
    for kind, candidates in by_kind.items():
        for k in sorted(rng.permutation(len(candidates))[:per_kind].tolist()):
            gallery, ref, tgt = candidates[k]
            caption = phrase_edit(dataset, attributes[ref], attributes[tgt], kind, rng)
            edits.append(VisitorEdit(gallery, ref, tgt, kind, caption))
    return edits
