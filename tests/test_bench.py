"""The bench command runs end to end and prints one JSON object per measurement (no timing asserted)."""

import json

import pytest

from cir_demo.bench.serving import bench_captions, run_bench
from cir_demo.serve.precision import CPU_CANDIDATES


@pytest.fixture(scope="module")
def records():
    lines = []
    run_bench(model="cir-tiny", sizes=(600,), queries=2, index_images=2, num_workers=0, emit_line=lines.append)
    return [json.loads(line) for line in lines]


def test_bench_prints_every_measurement_as_json(records):
    measures = {r["measure"] for r in records}
    assert {"machine", "precision_choice", "precision_effect", "query_gallery_reference", "query_uploaded_image",
            "stage_breakdown_gallery_reference", "topk", "approx_faiss_ivf", "indexing", "memory"} <= measures
    topk = next(r for r in records if r["measure"] == "topk")
    assert topk["gallery"] == 600 and topk["ours"]["n"] >= 20 and "ratio_ours_vs_faiss" in topk
    approx = next(r for r in records if r["measure"] == "approx_faiss_ivf")
    assert 0.0 <= approx["recall_at_k_vs_exact"] <= 1.0
    stages = next(r for r in records if r["measure"] == "stage_breakdown_gallery_reference")
    assert {"text_ms", "compose_ms", "search_ms", "total_ms"} <= set(stages)


def test_bench_names_the_machine_and_the_chosen_precisions(records):
    assert records[0]["measure"] == "machine" and "cpu_flags" in records[0]
    assert all(r["cpu"] == records[0]["cpu"] for r in records)
    choices = {r["stage"]: r for r in records if r["measure"] == "precision_choice"}
    assert set(choices) == {"text", "compose"}
    for choice in choices.values():
        assert choice["probed"] and choice["precision"] in CPU_CANDIDATES
        assert set(choice["timings_ms"]) | set(choice["rejected"]) | set(choice["skipped"]) == set(CPU_CANDIDATES)
    query = next(r for r in records if r["measure"] == "query_gallery_reference")
    assert query["text_precision"] == choices["text"]["precision"]
    assert query["compose_precision"] == choices["compose"]["precision"]


def test_bench_measures_how_far_each_precision_moves_results(records):
    effects = {r["variant"]: r for r in records if r["measure"] == "precision_effect"}
    reduced = [p for p in CPU_CANDIDATES if p != "fp32"]
    assert {f"text={p}" for p in reduced} | {f"compose={p}" for p in reduced} <= set(effects)
    assert any(v.startswith("served") for v in effects)
    for effect in effects.values():
        assert 0.0 <= effect["top_k_overlap_min"] <= effect["top_k_overlap_mean"] <= 1.0
        assert effect["query_cosine_min"] > 0.9


def test_forced_precisions_skip_the_probe():
    lines = []
    run_bench(model="cir-tiny", sizes=(300,), queries=2, index_images=0, use_faiss=False, text_precision="int8",
              compose_precision="fp32", precision_effect=False, emit_line=lines.append)
    records = [json.loads(line) for line in lines]
    choices = {r["stage"]: r for r in records if r["measure"] == "precision_choice"}
    assert choices["text"]["precision"] == "int8" and not choices["text"]["probed"]
    assert choices["compose"]["precision"] == "fp32" and not choices["compose"]["timings_ms"]
    assert not any(r["measure"] == "precision_effect" for r in records)


def test_bench_captions_are_distinct():
    captions = bench_captions(200)
    assert len(set(captions)) == 200 and all(captions)
