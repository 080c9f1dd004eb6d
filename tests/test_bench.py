"""The bench command runs end to end and prints one JSON object per measurement (no timing asserted)."""

import json

from cir_demo.bench.serving import run_bench


def test_bench_prints_every_measurement_as_json():
    lines = []
    run_bench(model="cir-tiny", sizes=(600,), queries=2, index_images=2, num_workers=0, emit_line=lines.append)
    records = [json.loads(line) for line in lines]
    measures = {r["measure"] for r in records}
    assert {"query_gallery_reference", "query_uploaded_image", "topk", "approx_faiss_ivf", "indexing",
            "memory"} <= measures
    topk = next(r for r in records if r["measure"] == "topk")
    assert topk["gallery"] == 600 and topk["ours"]["n"] >= 20 and "ratio_ours_vs_faiss" in topk
    approx = next(r for r in records if r["measure"] == "approx_faiss_ivf")
    assert 0.0 <= approx["recall_at_k_vs_exact"] <= 1.0
