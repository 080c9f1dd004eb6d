"""Unknown-word insertion: the caption's own tokens stay, in order, with its start and end."""

import open_clip
import pytest
import torch

from cir_demo.model.vocab import TrimmedTokenizer, vocabulary_of
from cir_demo.train.augment import MAX_INSERTED, insert_unknown

CAPTIONS = ["is red", "has long sleeves and is more fitted", "make it a darker shade of blue with white polka dots "
            "and a round neck and longer sleeves please make it longer"]


@pytest.fixture(scope="module")
def tokenizer():
    base = open_clip.SimpleTokenizer(context_length=32)
    return TrimmedTokenizer(base, vocabulary_of(base, CAPTIONS))


def test_inserted_tokens_are_unknown_and_the_rest_is_kept(tokenizer):
    tokens = tokenizer(CAPTIONS * 20)  # (60, 32)
    unk, eot = tokenizer.unknown_id, tokenizer.eot_token_id
    out = insert_unknown(tokens, unk, 0.5, torch.Generator().manual_seed(1))
    changed = 0
    for before, after in zip(tokens.tolist(), out.tolist()):
        assert after[0] == before[0] and max(after) == eot == after[after.index(eot)]
        kept = [t for t in after[1:after.index(eot)] if t != unk]
        original = before[1:before.index(eot)]
        assert kept == original[:len(kept)] and len(kept) >= len(original) - MAX_INSERTED  # a prefix, in order
        added = after.count(unk) - before.count(unk)
        assert 0 <= added <= MAX_INSERTED
        changed += after != before
        assert all(t == 0 for t in after[after.index(eot) + 1:])  # padding after the end
    assert 15 < changed < 45  # about half the captions
    assert torch.equal(out, insert_unknown(tokens, unk, 0.5, torch.Generator().manual_seed(1)))
    assert torch.equal(insert_unknown(tokens, unk, 0.0, torch.Generator().manual_seed(1)), tokens)


def test_unknown_words_need_a_trimmed_vocabulary(tiny_training_world, tiny_clip_file):
    from cir_demo.cli import main

    argv = ["train", "stage1", "--data", str(tiny_training_world / "cirr"), "--clip", str(tiny_clip_file),
            "--out", str(tiny_training_world.parent / "unk-run"), "--unknown-words", "0.5", "--max-steps", "1",
            "--batch-size", "4", "--no-progress"]
    assert main(argv) == 2  # a full-vocabulary CLIP has no unknown token: refused with a message
