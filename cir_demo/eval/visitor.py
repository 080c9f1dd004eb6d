"""The visitor-edit benchmark: do free-text edits in unseen phrasings find what a person asked for?

For a synthetic world's validation split, :func:`~cir_demo.eval.visitor_edits.sample_edits` makes
edits in held-out phrasings; each is run as the app runs it (the reference's features, the edit's
caption, a composer, the whole gallery ranked) and its **top hit other than the reference** is
judged by the world's attributes (:func:`~cir_demo.eval.visitor_edits.is_hit`). Reported: the hit
rate, overall and per kind, and separately how often the reference itself ranks first (the page
hides the reference for FashionIQ-style galleries, so it is not counted as a miss).

``python -m cir_demo visitor --data WORLD/fashioniq --clip weights/fashioniq.safetensors
--combiner weights/fashioniq.safetensors``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from cir_demo.data.synth.attributes import load_attributes
from cir_demo.eval.protocol import compose_queries, load_eval_splits
from cir_demo.eval.visitor_edits import VisitorEdit, is_hit, sample_edits
from cir_demo.model.clip import ClipModel
from cir_demo.model.composers import Composer
from cir_demo.pipeline.encode import encode_names, encode_texts


@dataclass
class VisitorOutcome:
    """One edit's result: the top ``hits`` other than the reference, and whether the first one answers."""
    edit: VisitorEdit
    hits: list
    hit: bool
    reference_first: bool


@dataclass
class VisitorReport:
    """The benchmark's figures (percent) and every outcome, for a sheet or a closer look."""
    dataset: str
    outcomes: list = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        return 100.0 * sum(o.hit for o in self.outcomes) / max(len(self.outcomes), 1)

    @property
    def reference_first(self) -> int:
        return sum(o.reference_first for o in self.outcomes)

    def per_kind(self) -> dict:
        """{kind: (hits, edits)}."""
        total, hits = Counter(o.edit.kind for o in self.outcomes), Counter(o.edit.kind for o in self.outcomes if o.hit)
        return {kind: (hits[kind], n) for kind, n in total.items()}


def world_edits(root: str | Path, *, per_kind: int = 40, seed: int = 0, split: str = "val") -> tuple:
    """(datasets of the split, attributes, edits) for a synthetic FashionIQ or CIRR folder. Candidate
    pairs are the split's triplets and, for CIRR, any two members of an image set."""
    attributes = load_attributes(root)
    if not attributes:
        raise ValueError(f"{root}: no attributes.json; the benchmark needs a world made by `python -m cir_demo synth`")
    datasets = load_eval_splits(root, split)
    pairs = [(ds.category or ds.dataset, t.reference, t.target) for ds in datasets for t in ds.triplets
             if t.target is not None]
    # a CIRR image set is a group of close variants: any two of its members make a candidate pair
    pairs += [("cirr", a, b) for ds in datasets for t in ds.triplets for a in t.group for b in t.group if a != b]
    return datasets, attributes, sample_edits(datasets[0].dataset, pairs, attributes, per_kind=per_kind, seed=seed)


def judge_rankings(dataset: str, edits: Sequence[VisitorEdit], names: Sequence[str], order: torch.Tensor,
                   attributes: dict, *, top: int = 3) -> list[VisitorOutcome]:
    """Outcomes of ``edits`` given each one's gallery ranking ``order`` (Q, N) of ``names``."""
    outcomes = []
    for edit, row in zip(edits, order[:, :top + 1].tolist()):
        ranked = [names[i] for i in row]
        others = [n for n in ranked if n != edit.reference][:top]
        ref, tgt = attributes[edit.reference], attributes[edit.target]
        outcomes.append(VisitorOutcome(edit, others, is_hit(dataset, edit, ref, tgt, attributes[others[0]]),
                                       ranked[0] == edit.reference))
    return outcomes


@torch.no_grad()
def run_visitor(clip: ClipModel, composer: Composer, root: str | Path, *, per_kind: int = 40, seed: int = 0,
                top: int = 3, batch_size: int = 64, progress: bool = False) -> VisitorReport:
    """Run the benchmark on ``root``'s validation split with ``clip`` and ``composer``."""
    datasets, attributes, edits = world_edits(root, per_kind=per_kind, seed=seed)
    report = VisitorReport(datasets[0].dataset)
    for ds in datasets:
        mine = [e for e in edits if e.gallery == (ds.category or ds.dataset)]
        if not mine:
            continue
        feats = encode_names(clip, ds.image_names, ds.image_path, batch_size=batch_size, progress=progress,
                             desc=f"{ds.category or ds.dataset} images")
        gallery = F.normalize(torch.stack([feats[n] for n in ds.image_names]), dim=-1)  # (N, D)
        refs = torch.stack([feats[e.reference] for e in mine])  # (Q, D)
        queries = compose_queries(composer, refs, encode_texts(clip, [e.caption for e in mine]))  # (Q, D)
        order = (queries @ gallery.T).argsort(dim=1, descending=True, stable=True)  # (Q, N)
        report.outcomes += judge_rankings(report.dataset, mine, ds.image_names, order, attributes, top=top)
    return report


def format_report(reports: Sequence[VisitorReport]) -> str:
    """A Markdown table per report: hits per kind, the total, and reference-first counts."""
    lines = ["| dataset | kind | hits | edits | hit rate % |", "|---|---|---|---|---|"]
    for r in reports:
        for kind, (hits, n) in r.per_kind().items():
            lines.append(f"| {r.dataset} | {kind} | {hits} | {n} | {100.0 * hits / n:.1f} |")
        hits = sum(o.hit for o in r.outcomes)
        lines.append(f"| {r.dataset} | **all** | {hits} | {len(r.outcomes)} | **{r.hit_rate:.1f}** |")
    lines.append("")
    lines += [f"{r.dataset}: the reference itself ranks first in {r.reference_first} of {len(r.outcomes)} edits"
              for r in reports]
    return "\n".join(lines)
