"""Groups of near-identical training images, for batches that hold each other's hard negatives.

A contrastive batch of random images is told apart by what is easiest to see (the backdrop, the
main colour), so a small CLIP learns little else. Batches built from whole groups of close
variants (one or two attributes apart) can only be solved by reading those attributes. Groups are
read from the dataset itself, so real data gets them too: a CIRR ``img_set``, and for any dataset
the connected components of its (reference, target) pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from cir_demo.eval.protocol import load_eval_splits


def _components(pairs, items) -> list[list]:
    """Connected components (in first-seen order) of ``items`` under the ``pairs`` relation."""
    parent = {x: x for x in items}

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        if a in parent and b in parent:
            parent[root(a)] = root(b)
    groups: dict = {}
    for x in items:
        groups.setdefault(root(x), []).append(x)
    return list(groups.values())


def image_groups(roots: Sequence, split: str, paths: Sequence[Path]) -> list[list[int]]:
    """Rows of ``paths`` grouped by the datasets' triplets and CIRR image sets; every row is in
    exactly one group (images in no triplet are groups of one)."""
    row_of = {str(p): i for i, p in enumerate(paths)}
    pairs = []
    for root in roots:
        for ds in load_eval_splits(root, split):
            for t in ds.triplets:
                members = [t.reference, *([t.target] if t.target else []), *t.group]
                rows = [row_of.get(str(ds.image_path(n))) for n in members if n in ds.image_names]
                rows = [r for r in rows if r is not None]
                pairs += [(rows[0], r) for r in rows[1:]]
    return _components(pairs, range(len(paths)))


def triplet_groups(triplets) -> list[list[int]]:
    """Rows of ``triplets`` grouped so that triplets sharing an image (or a CIRR image set) are
    together: a batch of whole groups scores each query against its target's close variants."""
    pairs, first_row = [], {}
    for row, t in enumerate(triplets):
        for name in (t.reference, t.target, *t.group):
            if name is not None:
                pairs.append((first_row.setdefault(name, row), row))
    return _components(pairs, range(len(triplets)))


def group_order(groups: Sequence[Sequence[int]], *, seed: int, epoch: int) -> torch.Tensor:
    """One epoch's row order: the groups shuffled, each group's rows shuffled and kept together."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = []
    for g in torch.randperm(len(groups), generator=gen).tolist():
        members = list(groups[g])
        order += [members[i] for i in torch.randperm(len(members), generator=gen).tolist()]
    return torch.tensor(order, dtype=torch.long)
