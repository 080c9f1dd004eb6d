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


def test_shifted_images_match_a_by_hand_shift():
    from cir_demo.train.pretrain import shift_images
    pixels = torch.randn(4, 3, 9, 9)
    rows, k = torch.tensor([7, 2, 5, 0]), 2
    out = shift_images(pixels, k, seed=3, step=11, rows=rows, n=10)
    moved = 0
    for i in range(4):
        # the offsets are the example's, whatever else is in the batch
        alone = shift_images(pixels[i:i + 1], k, seed=3, step=11, rows=rows[i:i + 1], n=10)
        assert torch.equal(alone[0], out[i])
        # find the image's offset, then check every pixel against the clamped source written out
        matches = []
        for dy in range(-k, k + 1):
            for dx in range(-k, k + 1):
                want = torch.empty_like(pixels[i])
                for y in range(9):
                    for x in range(9):
                        want[:, y, x] = pixels[i, :, min(max(y - dy, 0), 8), min(max(x - dx, 0), 8)]
                if torch.equal(want, out[i]):
                    matches.append((dy, dx))
        assert len(matches) == 1, matches
        moved += matches[0] != (0, 0)
    assert moved > 0
    assert not torch.equal(shift_images(pixels, k, seed=3, step=12, rows=rows, n=10), out)  # new offsets each step
