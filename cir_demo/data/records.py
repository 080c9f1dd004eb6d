"""One typed record per dataset item, whatever the dataset or split, and the paper's caption rules.

FashionIQ captions are stripped of ``.?, `` (``str.strip('.?, ')``); training samples one of
"C1 and c2", "C2 and c1", "C1", "C2" (leading caption capitalised); validation uses "C1 and c2".
CIRR has one caption per query, used as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Triplet:
    """A composed-retrieval query: reference image + relative caption(s) -> target image."""
    dataset: str                   # "fashioniq" | "cirr"
    split: str                     # "train" | "val" | "test" (FashionIQ) / "train" | "val" | "test1" (CIRR)
    reference: str                 # image name (no extension / no path)
    target: Optional[str]          # None where the split has no targets (CIRR test1, FashionIQ test)
    captions: tuple                # raw relative captions as in the file (FashionIQ: 2, CIRR: 1)
    category: Optional[str] = None  # FashionIQ category
    pair_id: Optional[int] = None  # CIRR pairid
    group: tuple = ()              # CIRR img_set members (6 names); () for FashionIQ


def _clean(caption: str) -> str:
    return caption.strip(".?, ")


def _capitalise(text: str) -> str:
    # The authors' code uses str.capitalize(), which also lower-cases the rest of the leading
    # caption ("has NYC print" -> "Has nyc print"); kept so our strings match theirs exactly.
    return text.capitalize()


def fashioniq_caption_variants(captions: Sequence[str]) -> list:
    """The paper's four training captions of a FashionIQ pair: ``["C1 and c2", "C2 and c1", "C1", "C2"]``.

    Each caption is stripped of ``.?, `` at both ends; the leading caption goes through
    ``str.capitalize()`` as in the authors' code (first letter upper, the rest of *that* caption
    lower); the trailing caption in "C1 and c2" is kept as is.
    """
    if len(captions) != 2:
        raise ValueError(f"a FashionIQ triplet has 2 captions, got {len(captions)}: {list(captions)!r}")
    c1, c2 = (_clean(c) for c in captions)
    return [f"{_capitalise(c1)} and {c2}", f"{_capitalise(c2)} and {c1}", _capitalise(c1), _capitalise(c2)]


def fashioniq_val_caption(captions: Sequence[str]) -> str:
    """The caption FashionIQ validation uses: ``"C1 and c2"``."""
    return fashioniq_caption_variants(captions)[0]


def query_captions(triplet: Triplet, train: bool) -> list:
    """The caption(s) a query may use: FashionIQ -> the 4 variants when ``train`` else
    ``[val caption]``; CIRR -> ``[caption]``."""
    if triplet.dataset == "fashioniq":
        variants = fashioniq_caption_variants(triplet.captions)
        return variants if train else variants[:1]
    return [triplet.captions[0]]
