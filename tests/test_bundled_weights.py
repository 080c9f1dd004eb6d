"""The shipped weights on a world they never saw (another seed): far above chance, and the
Combiner beats the sum and both single-modality baselines, as the paper's ordering says."""

import pytest

from cir_demo.config import WEIGHTS_DIR
from cir_demo.data.synth import generate_world
from cir_demo.eval.protocol import evaluate
from cir_demo.model import COMPOSER_NAMES, load_checkpoint, make_composer


@pytest.fixture(scope="module")
def fresh_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh")
    generate_world(root, seed=1, size="small", progress=False)
    return root


@pytest.mark.parametrize("dataset, metric, chance", [
    ("fashioniq", ("average", "R@10"), 100 * 10 / 140),  # 140 gallery images per category
    ("cirr", ("cirr", "R@5"), 100 * 5 / 149),            # 150 images, the reference removed
])
def test_shipped_weights_beat_baselines_on_an_unseen_world(fresh_world, dataset, metric, chance):
    ckpt = load_checkpoint(WEIGHTS_DIR / f"{dataset}.safetensors")
    assert ckpt.clip is not None and ckpt.combiner is not None
    composers = {n: make_composer(n, ckpt.combiner) for n in COMPOSER_NAMES}
    results = evaluate(ckpt.clip, composers, fresh_world / dataset)
    selection = {name: r["selection"] for name, r in results.items()}
    assert selection["combiner"] > selection["sum"] > max(selection["image"], selection["text"])
    group, key = metric
    assert results["combiner"][group][key] > 4 * chance
