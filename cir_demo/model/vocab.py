"""A trimmed vocabulary: open_clip's tokenizer, with its token ids mapped onto a small table.

A CLIP trained from scratch on the synthetic world reads ~200 distinct BPE tokens, yet open_clip's
vocabulary has 49,408 rows: in a small model the token embedding would be most of the file. A
trimmed model keeps the rows it can ever have trained. Tokenizing stays open_clip's
(``SimpleTokenizer``: the same lower-casing, BPE and truncation); only the ids are remapped:

    0            padding (open_clip pads with 0)
    1 .. K       the kept BPE ids, in the order stored
    K + 1        any other BPE id (a word the model never read)
    K + 2, K + 3 start and end of text

so the end-of-text token is still the largest id, which CLIP's text pooling (argmax) relies on.
The kept ids live in the checkpoint's config (``clip.vocabulary``), so the checkpoint rebuilds its
tokenizer alone; models without one (every real CLIP) tokenize exactly as open_clip does.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence, Union

import torch

SPECIAL = 4  # padding, unknown, start, end
BPE_VOCAB_SIZE = 49408  # open_clip's SimpleTokenizer (OpenAI CLIP's BPE)


def vocab_size(kept: Sequence[int]) -> int:
    """Rows of the token embedding for a vocabulary keeping ``kept`` BPE ids."""
    return len(kept) + SPECIAL


def vocabulary_of(base: Callable, texts: Iterable[str]) -> list[int]:
    """The sorted BPE ids (start, end and padding excluded) that ``base`` gives ``texts``."""
    special = {base.sot_token_id, base.eot_token_id, 0}
    ids: set = set()
    texts = list(texts)
    for start in range(0, len(texts), 1024):
        ids.update(base(texts[start:start + 1024]).unique().tolist())
    return sorted(ids - special)


def check_vocabulary(kept: object, base_size: int) -> list[int]:
    """``kept`` as a list of distinct ints in ``[1, base_size)``; ``ValueError`` saying why not."""
    if not isinstance(kept, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in kept):
        raise ValueError("a vocabulary is a list of integer token ids")
    if len(set(kept)) != len(kept) or any(not 0 < i < base_size for i in kept):
        raise ValueError(f"vocabulary ids must be distinct and within 1..{base_size - 1}")
    return list(kept)


class TrimmedTokenizer:
    """``base`` (an open_clip ``SimpleTokenizer``) with its ids mapped onto the trimmed table."""

    def __init__(self, base: Callable, kept: Sequence[int]):
        self.base = base
        self.kept = check_vocabulary(list(kept), len(base.encoder))
        k = len(self.kept)
        self.unknown_id, self.sot_token_id, self.eot_token_id = k + 1, k + 2, k + 3
        table = torch.full((len(base.encoder),), self.unknown_id, dtype=torch.long)
        table[torch.tensor(self.kept, dtype=torch.long)] = torch.arange(1, k + 1)
        table[0] = 0
        table[base.sot_token_id], table[base.eot_token_id] = self.sot_token_id, self.eot_token_id
        self.table = table
        self.context_length = base.context_length

    @property
    def vocab_size(self) -> int:
        return vocab_size(self.kept)

    def __call__(self, texts: Union[str, Sequence[str]], context_length=None) -> torch.Tensor:
        """Token ids (B, context_length) in the trimmed table."""
        tokens = self.base(texts, context_length) if context_length else self.base(texts)
        return self.table[tokens]
