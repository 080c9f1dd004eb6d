"""The phrasebooks: varied training phrasings with synonyms, and a held-out pool the world never writes."""

import dataclasses

import numpy as np
import pytest

from cir_demo.data.synth import world
from cir_demo.data.synth.fashion import Garment, diff_units, mutable_units, mutate, random_garment
from cir_demo.data.synth.fashion_phrases import unit_phrases
from cir_demo.data.synth.scene_phrases import change_phrases
from cir_demo.data.synth.scenes import diff_scenes, mutate as mutate_scene, possible_kinds, random_scene

# Sentence frames only the held-out pools use; the test lists them itself, so a training phrasing
# that starts using one fails here even if the phrasebook's own pools were changed consistently.
HELD_OUT_FRAMES = ("same but", "same dress but", "same shirt but", "same top but", "could ", "i want", "please",
                   "also put", "it should say")
# A frame the scenes' training pool uses ("put a red cube on the left") but the garments' does not.
GARMENT_FRAMES = HELD_OUT_FRAMES + ("put ",)


def _garment_changes(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        a = random_garment(("dress", "shirt", "toptee")[int(rng.integers(3))], rng)
        units = mutable_units(a)
        b = mutate(a, units[int(rng.integers(len(units)))], rng)
        if b != a:
            yield a, b, diff_units(a, b)


def _scene_changes(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        a = random_scene(rng)
        kinds = possible_kinds(a)
        b = mutate_scene(a, kinds[int(rng.integers(len(kinds)))], rng)
        changes = diff_scenes(a, b)
        if len(changes) == 1:
            yield a, b, changes[0]


def test_garment_pools_are_disjoint_and_held_out_frames_stay_held_out():
    for a, b, units in _garment_changes(400, seed=0):
        for unit in units:
            train, heldout = unit_phrases(a, b, unit), unit_phrases(a, b, unit, pool="heldout")
            assert len(train) >= 3 and len(heldout) >= 2
            assert not set(train) & set(heldout)
            assert all(any(f in h for f in GARMENT_FRAMES) for h in heldout), heldout
            assert not any(f in t for t in train for f in GARMENT_FRAMES), train


def test_scene_pools_are_disjoint_and_held_out_frames_stay_held_out():
    for a, b, change in _scene_changes(400, seed=1):
        train = change_phrases(a, b, change, np.random.default_rng(0))
        heldout = change_phrases(a, b, change, np.random.default_rng(0), pool="heldout")
        assert len(train) >= 3 and len(heldout) >= 2
        assert not set(train) & set(heldout)
        assert all(any(f in h for f in HELD_OUT_FRAMES) for h in heldout), heldout
        assert not any(f in t for t in train for f in HELD_OUT_FRAMES), train


def test_training_phrasings_are_varied_and_know_the_synonyms():
    teal = Garment("dress", "teal", "normal", "solid", None, 0, "long", "round", "knee", "fitted")
    red = Garment("dress", "red", "normal", "solid", None, 0, "long", "round", "knee", "fitted")
    colour = unit_phrases(teal, red, "colour")
    assert {"make it red", "is red", "in red"} <= set(colour)       # imperative, relative, fragment
    sleeveless = unit_phrases(teal, dataclasses.replace(teal, sleeve="sleeveless"), "sleeve")
    assert {"without sleeves", "has no sleeves", "remove the sleeves"} <= set(sleeveless)
    flower = Garment("dress", "teal", "normal", "graphic", "white", 2, "long", "round", "knee", "fitted")
    assert {"has a floral pattern", "has a flower print"} <= set(unit_phrases(teal, flower, "pattern"))
    dots = Garment("dress", "teal", "normal", "dots", "white", 0, "long", "round", "knee", "fitted")
    assert {"has polka dots", "is dotted", "has spots"} <= set(unit_phrases(teal, dots, "pattern"))
    with pytest.raises(ValueError, match="pool"):
        unit_phrases(teal, red, "colour", pool="test")


def test_the_world_writes_no_held_out_phrasing(tiny_training_world):
    from cir_demo.data.datasets import load_cirr, load_fashioniq

    garments = [c for split in ("train", "val", "test") for cat in ("dress", "shirt", "toptee")
                for t in load_fashioniq(tiny_training_world / "fashioniq", cat, split).triplets for c in t.captions]
    scenes = [t.captions[0] for split in ("train", "val", "test1")
              for t in load_cirr(tiny_training_world / "cirr", split).triplets]
    assert len(garments) > 100 and len(scenes) > 20
    assert not [c for c in garments if any(f in c for f in GARMENT_FRAMES)]
    assert not [c for c in scenes if any(f in c for f in HELD_OUT_FRAMES)]


def test_training_takes_every_eligible_pair_of_a_cluster():
    plan = world.plan_scenes(0, world.SIZES["default"])["train"]
    by_set: dict = {}
    for q in plan.queries:
        by_set.setdefault(q.set_id, set()).add((q.reference, q.target))
    contents = {it.name: it.content for it in plan.items}
    for pairs in list(by_set.values())[:40]:
        members = sorted({n for p in pairs for n in p})
        group = next(q.group for q in plan.queries if q.reference in members)
        close = {(a, b) for a in group for b in group if a != b and 1 <= len(diff_scenes(contents[a], contents[b])) <= 2}
        # every close pair whose reference has another close neighbour (a distractor) is a triplet
        expected = {(a, b) for a, b in close if sum(1 for x, _ in close if x == a) >= 2}
        assert pairs == expected
