"""Hard negative captions for contrastive pre-training: one attribute word swapped for another.

A batch of random images is told apart by colour and backdrop, so a small CLIP never needs to
see shape; its captions then read as bags of words. Adding, for each image, its caption with one
attribute word swapped ("a red cube on the left" -> "a red ball on the left") as an extra
candidate caption makes the image tower read that attribute and the text tower bind it (NegCLIP,
Yuksekgonul et al., ICLR 2023). Which words may stand in for each other comes from a world's
``lexicon.json`` (:mod:`cir_demo.data.synth.lexicon`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cir_demo.data.synth.lexicon import LEXICON_FILE


def load_lexicon(roots: Sequence) -> dict:
    """{word: [the other words of its kind]} merged from the roots' ``lexicon.json`` files (merge only
    worlds whose kinds agree: a scene's "star" is a shape, a garment's a print)."""
    swaps: dict = {}
    for root in roots:
        path = Path(root) / LEXICON_FILE
        if not path.is_file():
            raise ValueError(f"{root}: no {LEXICON_FILE}; hard negatives need a world made by `python -m cir_demo synth`")
        for words in json.loads(path.read_text(encoding="utf-8")).values():
            for word in words:
                swaps.setdefault(word, set()).update(w for w in words if w != word)
    return {word: sorted(others) for word, others in swaps.items()}


def swap_negative(caption: str, swaps: dict, rng: np.random.Generator) -> Optional[str]:
    """``caption`` with one swappable word replaced by another of its kind, or None if it has none."""
    words = caption.split(" ")
    spots = [i for i, w in enumerate(words) if w.rstrip(",.") in swaps]
    if not spots:
        return None
    i = spots[int(rng.integers(len(spots)))]
    word = words[i].rstrip(",.")
    others = swaps[word]
    words[i] = others[int(rng.integers(len(others)))] + words[i][len(word):]  # keeps a trailing comma
    return " ".join(words)


def negative_captions(captions: Sequence[str], swaps: dict, *, per_caption: int, seed: int) -> list[list[str]]:
    """``per_caption`` negatives for each caption (the caption itself where nothing can be swapped,
    which the loss then treats as no negative at all: it equals the positive)."""
    rng = np.random.default_rng([seed, 77])
    out = []
    for caption in captions:
        drawn = [swap_negative(caption, swaps, rng) for _ in range(per_caption)]
        out.append([d if d is not None else caption for d in drawn])
    return out
