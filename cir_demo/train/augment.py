"""Caption augmentation for stage 1: unknown words inserted, so that a visitor's extra words do not
derail the text tower.

A trimmed vocabulary (:mod:`cir_demo.model.vocab`) reads every word the training never used as
one "unknown" token. People wrap an edit in such words ("same but in red", "could it be
sleeveless, please"); a text tower that never met the unknown token then drifts far from the
edit it was taught (cosine 0.5 between "is light brown" and "same but in light brown"). Inserting
unknown tokens at random places of training captions teaches it that they carry no meaning; the
caption's meaning is unchanged, so the target stays the same.
"""

from __future__ import annotations

import torch

MAX_INSERTED = 3


def insert_unknown(tokens: torch.Tensor, unknown_id: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """A copy of ``tokens`` (B, L) where each caption, with probability ``rate``, gets 1 to 3 unknown
    tokens inserted between its start and end tokens (the end of text is kept; the longest captions
    lose their last words instead of their end token)."""
    out = tokens.clone()
    picked = torch.rand(len(tokens), generator=generator) < rate  # (B,)
    counts = torch.randint(1, MAX_INSERTED + 1, (len(tokens),), generator=generator)  # (B,)
    width = tokens.shape[1]
    for row in torch.nonzero(picked).flatten().tolist():
        ids = tokens[row].tolist()
        end = ids.index(max(ids))  # the end-of-text token is the largest id
        body = ids[1:end]
        for _ in range(int(counts[row])):
            at = int(torch.randint(0, len(body) + 1, (1,), generator=generator))
            body.insert(at, unknown_id)
        body = body[:width - 2]
        row_ids = [ids[0], *body, ids[end]]
        out[row] = torch.tensor(row_ids + [0] * (width - len(row_ids)))
    return out
