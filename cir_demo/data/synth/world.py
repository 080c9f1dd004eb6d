"""Sampling the synthetic world: clusters of near-identical items, split galleries and triplets.

Every split is built from *clusters*: a random base item grown into a small tree of variants, each
one or two caption-sized changes away from an earlier member. Triplets are ordered pairs inside a
cluster that differ by one or two changes, so every gallery holds the reference's close neighbours
(the image alone does not find the target) and, across clusters, many items sharing the target's
attributes (the caption alone does not either). Items are unique across all splits of a dataset.

Everything is drawn from numpy Generators seeded by (seed, flavour, category, split): the same seed
gives the same plan, hence byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from cir_demo.data.synth import captions, fashion, scene_captions, scene_phrases, scenes

FASHION_SPLITS = ("train", "val", "test")
CIRR_SPLITS = ("train", "val", "test1")
FASHION_CLUSTER = 7  # items per fashion cluster
SCENE_SET = 6        # CIRR img_set size
# How often each kind of change grows an image set (default 1). Making shape changes three times
# as common did not teach the small CLIP shape (probe 25-32 % vs 12-22 % majority) and made more
# triplets hinge on it, so every kind is equally common.
SCENE_CHANGE_WEIGHTS: dict = {}


@dataclass(frozen=True)
class WorldSize:
    """Clusters and triplets per split: ``fashion_*`` per category, ``scene_*`` for CIRR. A triplet
    count of None takes every eligible pair of every cluster (training wants them all)."""
    fashion_clusters: dict
    fashion_triplets: dict
    scene_sets: dict
    scene_queries: dict


SIZES = {
    "tiny": WorldSize({"train": 4, "val": 2, "test": 2}, {"train": 16, "val": 8, "test": 6},
                      {"train": 4, "val": 2, "test1": 2}, {"train": 12, "val": 6, "test1": 6}),
    "small": WorldSize({"train": 45, "val": 20, "test": 10}, {"train": 1000, "val": 200, "test": 90},
                       {"train": 90, "val": 25, "test1": 20}, {"train": 540, "val": 100, "test1": 80}),
    "default": WorldSize({"train": 180, "val": 70, "test": 40}, {"train": None, "val": 600, "test": 320},
                         {"train": 600, "val": 80, "test1": 80}, {"train": None, "val": 320, "test1": 320}),
}


@dataclass
class Item:
    """One image to draw: its name, content (Garment or Scene), nuisance and absolute caption."""
    name: str
    content: object
    photo: object
    caption: str


@dataclass
class Query:
    """One triplet: reference -> target with its relative caption(s); ``group`` for CIRR img_sets."""
    reference: str
    target: str
    captions: tuple
    group: tuple = ()
    set_id: Optional[int] = None


@dataclass
class SplitPlan:
    """Gallery (in file order) and triplets of one split."""
    items: list = field(default_factory=list)
    queries: list = field(default_factory=list)


def split_rng(seed: int, *keys: int) -> np.random.Generator:
    """The Generator of one (flavour, category, split) stream."""
    return np.random.default_rng([seed, *keys])


def _weighted(options, weights: dict, rng) -> str:
    p = np.array([weights.get(o, 1.0) for o in options], dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def grow_cluster(base, size: int, mutate: Callable, units: Callable, seen: set, rng, weights=None) -> list:
    """``base`` plus up to ``size - 1`` unseen variants, each 1-2 changes from an earlier member;
    ``weights`` ({change kind: weight}, default 1) makes some kinds of change commoner."""
    members = [base]
    for _ in range(size * 12):
        if len(members) == size:
            break
        child = members[int(rng.integers(len(members)))]
        for _ in range(1 if rng.random() < 0.7 else 2):
            child = mutate(child, _weighted(units(child), weights or {}, rng), rng)
        if child not in seen:
            seen.add(child)
            members.append(child)
    return members


def _new_base(sample: Callable, seen: set, rng):
    while True:
        base = sample(rng)
        if base not in seen:
            seen.add(base)
            return base


def _quota(total: Optional[int], n: int, i: int) -> Optional[int]:
    if total is None:  # every eligible pair
        return None
    return total // n + (1 if i < total % n else 0)


def _eligible_pairs(members: list, diff: Callable) -> list:
    """Ordered (i, j, changes) with 1 or 2 changes between members i and j, where member i has at
    least one other such neighbour besides j (a close distractor: the image alone is ambiguous)."""
    close = {}
    for i, a in enumerate(members):
        for j, b in enumerate(members):
            if i != j and 1 <= len(changes := diff(a, b)) <= 2:
                close.setdefault(i, []).append((j, changes))
    return [(i, j, changes) for i, near in close.items() if len(near) >= 2 for j, changes in near]


def _sample_pairs(members, diff, quota: Optional[int], rng) -> list:
    pairs = _eligible_pairs(members, diff)
    if quota is None:
        return pairs
    order = rng.permutation(len(pairs))[:quota]
    return [pairs[k] for k in sorted(order.tolist())]


def _name_items(plan: SplitPlan, contents: list, photos: list, namer: Callable, rng) -> list:
    """Shuffle the gallery so file order says nothing about clusters; returns names per content."""
    order = rng.permutation(len(contents)).tolist()
    names = [None] * len(contents)
    for position, k in enumerate(order):
        names[k] = namer(position, k)
        plan.items.append(Item(names[k], contents[k], photos[k], ""))
    return names


def plan_fashion_split(category: str, split: str, size: WorldSize, seen: set, rng, first_index: int) -> SplitPlan:
    """Gallery and triplets of one FashionIQ category split; names continue from ``first_index``."""
    n_clusters, total = size.fashion_clusters[split], size.fashion_triplets[split]
    clusters = [grow_cluster(_new_base(lambda r: fashion.random_garment(category, r), seen, rng), FASHION_CLUSTER,
                             fashion.mutate, fashion.mutable_units, seen, rng) for _ in range(n_clusters)]
    contents = [g for cluster in clusters for g in cluster]
    photos = [fashion.random_photo(rng) for _ in contents]
    plan = SplitPlan()
    names = _name_items(plan, contents, photos, lambda pos, k: f"{category}_{first_index + pos:05d}", rng)
    for item in plan.items:
        item.caption = captions.absolute_caption(item.content)
    start = 0
    for c, cluster in enumerate(clusters):
        for i, j, units in _sample_pairs(cluster, fashion.diff_units, _quota(total, n_clusters, c), rng):
            text = captions.relative_captions(cluster[i], cluster[j], units, rng)
            plan.queries.append(Query(names[start + i], names[start + j], text))
        start += len(cluster)
    return plan


def plan_fashion(seed: int, size: WorldSize) -> dict:
    """``{category: {split: SplitPlan}}`` for the three FashionIQ categories."""
    world = {}
    for c, category in enumerate(fashion.CATEGORIES):
        seen, index, world[category] = set(), 0, {}
        for s, split in enumerate(FASHION_SPLITS):
            plan = plan_fashion_split(category, split, size, seen, split_rng(seed, 0, c, s), index)
            world[category][split] = plan
            index += len(plan.items)
    return world


def plan_scenes(seed: int, size: WorldSize) -> dict:
    """``{split: SplitPlan}`` for the CIRR-style scenes; queries carry their 6-image img_set."""
    world, seen, set_id = {}, set(), 0
    for s, split in enumerate(CIRR_SPLITS):
        rng = split_rng(seed, 1, 0, s)
        n_sets, total = size.scene_sets[split], size.scene_queries[split]
        plan = SplitPlan()
        for k in range(n_sets):
            members = grow_cluster(_new_base(scenes.random_scene, seen, rng), SCENE_SET, scenes.mutate,
                                   scenes.possible_kinds, seen, rng, SCENE_CHANGE_WEIGHTS)
            names = [f"{split}-{set_id}-img{m}" for m in range(len(members))]
            for name, scene in zip(names, members):
                plan.items.append(Item(name, scene, scenes.random_photo(rng), scene_captions.absolute_caption(scene)))
            for i, j, changes in _sample_pairs(members, scenes.diff_scenes, _quota(total, n_sets, k), rng):
                text = scene_phrases.relative_caption(members[i], members[j], changes, rng)
                plan.queries.append(Query(names[i], names[j], (text,), tuple(names), set_id))
            set_id += 1
        world[split] = plan
    return world
