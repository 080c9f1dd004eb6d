"""One rank per triplet: the validation browser lists the rank a search shows, whatever precision the
bundle serves; the served precision is decided once per machine and model and kept."""

import json

import pytest
import torch

from cir_demo.model import load_checkpoint
from cir_demo.serve import plan as P
from cir_demo.serve.deploy import parse_config
from cir_demo.serve.engine import Engine
from cir_demo.serve.prepare import load_deployment

CONFIG = {
    "world": {"seed": 1, "size": "small", "splits": ["val"]},
    "bundles": [
        {"name": "fashioniq", "clip": "{project}/weights/fashioniq.safetensors",
         "combiner": "{project}/weights/fashioniq.safetensors",
         "galleries": [{"name": "dress", "data": "{world}/fashioniq", "category": "dress"}]},
        {"name": "cirr", "clip": "{project}/weights/cirr.safetensors", "combiner": "{project}/weights/cirr.safetensors",
         "galleries": [{"name": "scenes", "data": "{world}/cirr"}]},
    ],
}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    return parse_config({**CONFIG, "cache_dir": str(tmp_path_factory.mktemp("cache"))})


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_browser_lists_the_rank_a_search_shows(deployment, precision):
    """int8 moves scores a little; the browser must move with them (it once ranked in fp32 while
    searches ran int8: 10% of the built-in triplets showed two different ranks)."""
    catalog = load_deployment(deployment, device="cpu", progress=False, text_precision=precision,
                              compose_precision=precision)
    moved = 0  # triplets whose served rank differs from eval's fp32 one
    for gallery in ("dress", "scenes"):
        for composer in ("combiner", "sum"):
            ranks = catalog.rank_split(gallery, composer)
            assert len(ranks.rows) >= 10
            for row in ranks.rows:
                result = catalog.search(gallery, reference=row.reference, caption=row.caption, k=1, composer=composer)
                assert result.target == row.target and result.target_rank == row.rank, (gallery, composer, row)
                if gallery == "scenes":
                    group = [h.name for h in result.subset]
                    assert group.index(row.target) + 1 == row.subset_rank
            exact = precision == "fp32"
            assert (ranks.reference_summary is None) == exact  # eval's fp32 figures come along when they may differ
            assert all((r.reference_rank is None) == exact for r in ranks.rows)
            moved += sum(r.reference_rank is not None and r.reference_rank != r.rank for r in ranks.rows)
    # int8 does move some of these 600 ranks (about 5% here): a browser ranking in fp32 would disagree
    assert (moved > 0) == (precision == "int8")


def test_served_fp32_figures_are_evals(deployment):
    from cir_demo.eval.protocol import query_set_from_features, rank_query_set

    catalog = load_deployment(deployment, device="cpu", progress=False, text_precision="fp32",
                              compose_precision="fp32")
    for gallery in ("dress", "scenes"):
        engine = catalog.engine_for(gallery)
        record = catalog._galleries[gallery]
        qs = query_set_from_features(engine.clip, record.dataset, engine.galleries[gallery].gallery)
        ranks, subset, summary = rank_query_set(qs, engine.reference_composer("combiner"))
        served = catalog.rank_split(gallery)
        assert [r.rank for r in served.rows] == ranks.tolist()
        assert served.summary == pytest.approx(summary)


@pytest.fixture(scope="module")
def bundle():
    from cir_demo.config import WEIGHTS_DIR

    ckpt = load_checkpoint(WEIGHTS_DIR / "fashioniq.safetensors")
    return ckpt.clip, ckpt.combiner


def test_the_plan_is_recorded_once_per_machine_and_model(bundle, tmp_path, monkeypatch):
    clip, combiner = bundle
    record = tmp_path / "precision.json"
    first = Engine(clip, combiner, device="cpu", precision_record=record)
    assert first.plan["recorded"] is False and first.exact  # the built-in model is fast in fp32
    assert first.plan["fp32_ms"]["text"] > 0 and first.plan["reason"] == "fp32 is within the latency budget"
    saved = json.loads(record.read_text())
    assert list(saved) == [first.plan["key"]] and saved[first.plan["key"]]["text"] == "fp32"
    again = Engine(clip, combiner, device="cpu", precision_record=record)
    assert again.plan["recorded"] is True and again.plan["key"] == first.plan["key"]
    assert not again.text_tower.choice.probed and again.text_tower.choice.name == "fp32"
    # over the budget, the probe decides, and that decision is what later starts serve
    monkeypatch.setattr(P, "cpu_description", lambda: {"cpu": "another machine"})
    slow = Engine(clip, combiner, device="cpu", precision_record=record, latency_budget_ms=0.0)
    assert slow.plan["recorded"] is False and slow.plan["key"] != first.plan["key"]
    assert slow.plan["reason"] == "fp32 misses the latency budget" and slow.text_tower.choice.probed
    chosen = (slow.text_tower.choice.name, slow.compose_choice.name)
    later = Engine(clip, combiner, device="cpu", precision_record=record, latency_budget_ms=0.0)
    assert later.plan["recorded"] and (later.text_tower.choice.name, later.compose_choice.name) == chosen
    assert len(json.loads(record.read_text())) == 2
    # another model is another key
    other = Engine(clip, None, device="cpu", precision_record=record)
    assert other.plan["key"] not in (first.plan["key"], slow.plan["key"])


def test_a_broken_record_is_measured_again(bundle, tmp_path):
    clip, combiner = bundle
    record = tmp_path / "precision.json"
    record.write_text("{not json")
    engine = Engine(clip, combiner, device="cpu", precision_record=record)
    assert engine.plan["recorded"] is False and json.loads(record.read_text())[engine.plan["key"]]["compose"] == "fp32"
    explicit = Engine(clip, combiner, device="cpu", text_precision="int8", compose_precision="fp32",
                      precision_record=record)
    assert explicit.plan is None and explicit.text_tower.choice.name == "int8" and not explicit.exact
    assert torch.isfinite(explicit.text_features(["is darker"])).all()
