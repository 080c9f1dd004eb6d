"""Hard negative captions: one attribute word swapped within its kind, and the loss that uses them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cir_demo.data.synth.lexicon import scene_lexicon
from cir_demo.train.negatives import load_lexicon, negative_captions, swap_negative
from cir_demo.train.pretrain import contrastive_loss


def test_a_negative_differs_by_one_word_of_the_same_kind(tiny_training_world):
    swaps = load_lexicon([tiny_training_world / "cirr"])
    kinds = {w: k for k, words in scene_lexicon().items() for w in words}
    assert "heart" not in swaps and set(load_lexicon([tiny_training_world / "fashioniq"])["star"]) == {"heart", "flower"}
    caption = "two small green balls on the left, a large blue cube in the middle and a red cone on the right on a grey background"
    rng = np.random.default_rng(0)
    for _ in range(200):
        negative = swap_negative(caption, swaps, rng)
        changed = [(a, b) for a, b in zip(caption.split(" "), negative.split(" ")) if a != b]
        assert len(changed) == 1 and len(negative.split(" ")) == len(caption.split(" "))
        (a, b), = changed
        assert kinds[a.rstrip(",")] == kinds[b.rstrip(",")] and a.endswith(",") == b.endswith(",")
    assert swap_negative("nothing to swap here", swaps, rng) is None
    rows = negative_captions([caption, "nothing to swap here"], swaps, per_caption=3, seed=1)
    assert len(rows[0]) == 3 and all(n != caption for n in rows[0]) and rows[1] == ["nothing to swap here"] * 3


def test_the_loss_adds_negatives_on_the_image_side_only():
    gen = torch.Generator().manual_seed(0)
    image, text, negatives = (torch.randn(6, 8, generator=gen) for _ in range(3))
    scale = torch.tensor(2.0).log()
    usable = torch.tensor([True, True, False, True, True, True])
    got = contrastive_loss(image, text, scale, negatives, usable)
    # a naive reference: each image against all captions and every usable negative
    i, t, n = (F.normalize(x, dim=-1) for x in (image, text, negatives))
    rows = []
    for k in range(6):
        candidates = torch.cat([t, n[usable]])  # (6 + 5, D)
        rows.append(F.cross_entropy(2.0 * (i[k] @ candidates.T)[None], torch.tensor([k])))
    image_to_text = torch.stack(rows).mean()
    text_to_image = F.cross_entropy(2.0 * t @ i.T, torch.arange(6))
    assert float(got) == pytest.approx(float((image_to_text + text_to_image) / 2), rel=1e-5)
    none = contrastive_loss(image, text, scale, negatives, torch.zeros(6, dtype=torch.bool))
    assert float(none) == pytest.approx(float(contrastive_loss(image, text, scale)), rel=1e-6)


def test_pretraining_with_negatives_runs(tiny_training_world, tmp_path):
    from cir_demo.cli import main

    argv = ["train", "clip-pretrain", "--data", str(tiny_training_world / "fashioniq"), str(tiny_training_world / "cirr"),
            "--out", str(tmp_path), "--epochs", "1", "--batch-size", "16", "--hard-negatives", "2", "--group-batches",
            "--trim-vocabulary", "--no-progress"]
    assert main(argv) == 0
    assert (tmp_path / "best.safetensors").is_file()
