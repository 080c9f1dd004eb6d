"""The evaluation wiring: CIRR test1 submission files from a generated world."""

import json

import torch

from cir_demo.data.datasets import load_cirr
from cir_demo.data.synth import generate_world
from cir_demo.eval.submission import cirr_test_submission
from cir_demo.model import load_clip, make_composer


def test_cirr_test1_submission_files(tmp_path):
    generate_world(tmp_path / "w", size="tiny", seed=4, flavours=("scenes",), progress=False)
    root = tmp_path / "w" / "cirr"
    torch.manual_seed(0)
    clip = load_clip("cir-tiny")
    composers = {"sum": make_composer("sum"), "image": make_composer("image")}
    files = cirr_test_submission(clip, composers, root, tmp_path / "sub")
    assert sorted(f.name for f in files) == sorted(
        f"{kind}_submission_{name}.json" for kind in ("recall", "recall_subset") for name in composers)
    test1 = load_cirr(root, "test1")
    recall = json.loads((tmp_path / "sub" / "recall_submission_sum.json").read_text())
    subset = json.loads((tmp_path / "sub" / "recall_subset_submission_sum.json").read_text())
    assert (recall["version"], recall["metric"], subset["metric"]) == ("rc2", "recall", "recall_subset")
    gallery = set(test1.image_names)
    for t in test1.triplets:
        ranked = recall[str(t.pair_id)]
        assert len(ranked) == min(50, len(gallery) - 1) and t.reference not in ranked and set(ranked) <= gallery
        top3 = subset[str(t.pair_id)]
        assert len(top3) == 3 and set(top3) <= set(t.group) - {t.reference}
    image_only = json.loads((tmp_path / "sub" / "recall_submission_image.json").read_text())
    assert image_only != recall  # each composer ranks with its own queries
