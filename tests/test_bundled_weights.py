"""The shipped weights on a world they never saw (another seed): far above chance, the paper's
ordering of composers (Combiner > sum > image only > text only), free-text edits in phrasings
training never saw answered more often by the Combiner than by the image alone, and image
features that read the world's attributes better than the majority guess."""

import pytest

from cir_demo.config import WEIGHTS_DIR
from cir_demo.data.synth import generate_world
from cir_demo.eval.probe import probe_world
from cir_demo.eval.protocol import evaluate
from cir_demo.eval.visitor import run_visitor
from cir_demo.model import COMPOSER_NAMES, load_checkpoint, make_composer


@pytest.fixture(scope="module")
def fresh_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh")
    generate_world(root, seed=1, size="small", progress=False)
    return root


@pytest.fixture(scope="module")
def fresh_val_world(tmp_path_factory):
    """The validation split of a default-size world of that seed (1,800 garment and 320 scene queries):
    on the small world's 600 and 100 the stronger composers tie at 100 % or within one query."""
    root = tmp_path_factory.mktemp("fresh-val")
    generate_world(root, seed=1, size="default", splits=["val"], progress=False)
    return root


@pytest.fixture(scope="module", params=["fashioniq", "cirr"])
def bundle(request):
    return request.param, load_checkpoint(WEIGHTS_DIR / f"{request.param}.safetensors")


CHANCE = {"fashioniq": (("average", "R@10"), 100 * 10 / 490),  # 490 gallery images per category
          "cirr": (("cirr", "R@5"), 100 * 5 / 479)}             # 480 images, the reference removed


def test_shipped_weights_keep_the_papers_ordering_on_an_unseen_world(fresh_val_world, bundle):
    dataset, ckpt = bundle
    assert ckpt.clip is not None and ckpt.combiner is not None
    composers = {n: make_composer(n, ckpt.combiner) for n in COMPOSER_NAMES}
    results = evaluate(ckpt.clip, composers, fresh_val_world / dataset)
    selection = {name: r["selection"] for name, r in results.items()}
    assert selection["combiner"] > selection["sum"] > selection["image"] > selection["text"], selection
    (group, key), chance = CHANCE[dataset]
    assert results["combiner"][group][key] > 4 * chance


def test_visitor_edits_need_the_caption(fresh_world, bundle):
    dataset, ckpt = bundle
    combiner = run_visitor(ckpt.clip, make_composer("combiner", ckpt.combiner), fresh_world / dataset, per_kind=15)
    image = run_visitor(ckpt.clip, make_composer("image"), fresh_world / dataset, per_kind=15)
    assert combiner.hit_rate > image.hit_rate + 15, (combiner.hit_rate, image.hit_rate)
    assert combiner.reference_first < len(combiner.outcomes)


def test_image_features_read_the_worlds_attributes(fresh_world, bundle):
    dataset, ckpt = bundle
    results = {r.attribute: r for r in probe_world(ckpt.clip, fresh_world / dataset)}
    read = ["colour", "pattern", "sleeve", "length"] if dataset == "fashioniq" else \
        ["background", "groups", "left occupied", "centre colour", "right size"]
    for attribute in read:
        assert results[attribute].accuracy > results[attribute].majority + 10, results[attribute]
    if dataset == "cirr":  # what a scene slot holds, not only that it is there: the previous bundle's
        # attention-pooled tower read shape at 31-37 % and count at 55-62 % (seed 0's validation split);
        # this world's seed-1 images read 85-90 % and 93-100 %
        for slot in ("left", "centre", "right"):
            assert results[f"{slot} shape"].accuracy > 70, results[f"{slot} shape"]
            assert results[f"{slot} count"].accuracy > 80, results[f"{slot} count"]


@pytest.mark.parametrize("dataset", ["fashioniq", "cirr"])
def test_the_pages_examples_are_words_the_shipped_models_read(dataset):
    """An example with a word outside the trimmed vocabulary would reach the text tower as the
    unknown token ("has a floral pattern" once found nothing floral): every example must be read whole."""
    from cir_demo.ui.handlers import EXAMPLES

    tokenizer = load_checkpoint(WEIGHTS_DIR / f"{dataset}.safetensors").clip.tokenizer
    assert EXAMPLES[dataset]
    for example in EXAMPLES[dataset]:
        assert tokenizer.unknown_id not in tokenizer([example])[0].tolist(), example
