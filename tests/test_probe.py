"""The attribute probe: a linear probe that finds linearly coded attributes, not absent ones, and
reads the world's own attributes."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from cir_demo.cli import main
from cir_demo.data.synth.attributes import SCENE_LABELS, labels, load_attributes
from cir_demo.data.synth.world import SIZES, plan_fashion, plan_scenes
from cir_demo.eval.probe import fit_linear_probe, probe_accuracy, probe_world
from cir_demo.model import load_clip


def _coded(n: int, classes: int, dim: int, seed: int, noise: float):
    """Features holding the label along a random direction per class, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    centres = torch.randn(classes, dim, generator=gen)
    return centres[y] + noise * torch.randn(n, dim, generator=gen), [f"c{v}" for v in y.tolist()]


def test_a_linearly_coded_attribute_is_read_and_an_absent_one_is_not():
    x, y = _coded(1200, 5, 32, seed=1, noise=0.3)
    accuracy, majority, classes = probe_accuracy(x[:800], y[:800], x[800:], y[800:])
    assert classes == 5 and accuracy > 99
    # the majority baseline, counted independently: the commonest training label's share of the test set
    common = Counter(y[:800]).most_common(1)[0][0]
    assert majority == pytest.approx(100 * sum(v == common for v in y[800:]) / 400)
    noise = torch.randn(1200, 32, generator=torch.Generator().manual_seed(2))
    accuracy, majority, _ = probe_accuracy(noise[:800], y[:800], noise[800:], y[800:])
    assert accuracy < majority + 6  # nothing to read: no better than guessing the commonest label


def test_the_fit_reaches_the_regularised_optimum():
    x, y = _coded(600, 4, 16, seed=3, noise=2.0)
    target = torch.tensor([int(v[1:]) for v in y])
    w, b = fit_linear_probe(x, target, 4, weight_decay=1e-3)
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    loss = F.cross_entropy(x @ w + b, target) + 1e-3 * (w * w).sum()
    loss.backward()
    assert float(w.grad.abs().max()) < 1e-3 and float(b.grad.abs().max()) < 1e-3  # a stationary point


def test_attributes_file_round_trips_the_plan(tiny_training_world):
    stored = load_attributes(tiny_training_world / "cirr")
    planned = {it.name: it.content for p in plan_scenes(3, SIZES["tiny"]).values() for it in p.items}
    assert stored == planned
    stored = load_attributes(tiny_training_world / "fashioniq")
    planned = {it.name: it.content for c in plan_fashion(3, SIZES["tiny"]).values() for p in c.values()
               for it in p.items}
    assert stored == planned
    assert set(labels(next(iter(load_attributes(tiny_training_world / "cirr").values())))) == set(SCENE_LABELS)


def test_probe_world_uses_train_to_fit_and_val_to_score(tiny_training_world):
    torch.manual_seed(0)
    results = {r.attribute: r for r in probe_world(load_clip("cir-tiny"), tiny_training_world / "cirr")}
    attributes = load_attributes(tiny_training_world / "cirr")
    for split, key in (("train", "n_train"), ("val", "n_test")):
        scenes = [s for n, s in attributes.items() if n.startswith(f"{split}-")]
        assert getattr(results["background"], key) == len(scenes)
        occupied = sum(s.slots[0] is not None for s in scenes)
        assert getattr(results["left shape"], key) == occupied  # an empty slot has no shape to probe
    assert all(0 <= r.accuracy <= 100 and 0 <= r.majority <= 100 for r in results.values())


def test_probe_command_prints_a_table(tiny_training_world, tiny_clip_file, capsys):
    assert main(["probe", "--data", str(tiny_training_world / "fashioniq"), "--clip", str(tiny_clip_file),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| colour | 12 |" in out or "| colour |" in out
    assert "majority" in out and "| sleeve |" in out
