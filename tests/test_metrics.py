"""cir_demo.eval.metrics against an independent brute-force reference (numpy + plain loops)."""

import json
import math

import numpy as np
import pytest
import torch

from cir_demo.eval import metrics
from cir_demo.eval.submission import write_submission
from cir_demo.index import kernels as K


# ---- independent reference: full similarity list, argsort, find the target by loop ---------
def brute_ranking(query, gallery, names, exclude=None):
    sims = gallery.astype(np.float64) @ query.astype(np.float64)
    order = np.argsort(-sims, kind="stable")
    return [names[i] for i in order if names[i] != exclude]


def brute_rank(query, gallery, names, target, exclude=None):
    for position, name in enumerate(brute_ranking(query, gallery, names, exclude), start=1):
        if name == target:
            return position
    raise AssertionError("target missing")


def brute_subset_rank(query, gallery, names, target, group, reference):
    subset = [n for n in brute_ranking(query, gallery, names, reference) if n in group and n != reference]
    return subset.index(target) + 1


def brute_recall(ranks, k):
    return 100.0 * sum(1 for r in ranks if r <= k) / len(ranks)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def world():
    """Random gallery; queries near their targets with varied noise so recalls are not trivial."""
    rng = np.random.default_rng(0)
    n, q, d = 400, 90, 24
    gallery = unit(rng.standard_normal((n, d))).astype(np.float32)
    names = [f"img{i:03d}" for i in range(n)]
    targets = rng.choice(n, q, replace=False)
    refs = np.array([(t + 1 + rng.integers(n - 1)) % n for t in targets])
    noise = rng.uniform(0.05, 4.0, size=(q, 1))
    queries = unit(gallery[targets] + noise * rng.standard_normal((q, d)) / math.sqrt(d)).astype(np.float32)
    groups = []
    for t, r in zip(targets, refs):
        others = [i for i in rng.permutation(n) if i not in (t, r)][:4]
        members = [names[i] for i in [r, t, *others]]
        rng.shuffle(members)
        groups.append(members)
    return dict(gallery=gallery, names=names, queries=queries, groups=groups,
                targets=[names[i] for i in targets], refs=[names[i] for i in refs])


def test_fashioniq_matches_brute_force(world):
    w = world
    got = metrics.fashioniq_recalls(torch.from_numpy(w["queries"]), torch.from_numpy(w["gallery"]),
                                    w["names"], w["targets"], ks=(1, 10, 50))
    ranks = [brute_rank(q, w["gallery"], w["names"], t) for q, t in zip(w["queries"], w["targets"])]
    assert 0 < got["R@10"] < 100
    for k in (1, 10, 50):
        assert got[f"R@{k}"] == pytest.approx(brute_recall(ranks, k), abs=1e-9)


def test_cirr_matches_brute_force_with_reference_removed(world, monkeypatch):
    w = world
    monkeypatch.setattr(K, "MAX_BLOCK_ELEMS", 7 * 400)  # many query blocks: blocking changes nothing
    got = metrics.cirr_recalls(torch.from_numpy(w["queries"]), torch.from_numpy(w["gallery"]), w["names"],
                               w["refs"], w["targets"], w["groups"])
    args = list(zip(w["queries"], w["targets"], w["refs"], w["groups"]))
    ranks = [brute_rank(q, w["gallery"], w["names"], t, exclude=r) for q, t, r, _ in args]
    sub = [brute_subset_rank(q, w["gallery"], w["names"], t, g, r) for q, t, r, g in args]
    expected = {f"R@{k}": brute_recall(ranks, k) for k in (1, 5, 10, 50)}
    expected.update({f"Rs@{k}": brute_recall(sub, k) for k in (1, 2, 3)})
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["mean"] == pytest.approx(sum(expected.values()) / 7)
    assert got["avg"] == pytest.approx((expected["R@5"] + expected["Rs@1"]) / 2)
    assert 0 < got["Rs@1"] < 100 and 0 < got["R@5"] < 100


def test_reference_that_would_rank_first_is_removed():
    rng = np.random.default_rng(1)
    gallery = unit(rng.standard_normal((50, 16))).astype(np.float32)
    names = [f"n{i}" for i in range(50)]
    # query = reference nudged toward the target: reference first, target second if not removed
    queries = unit(gallery[[3, 7]] + 0.45 * (gallery[[10, 11]] - gallery[[3, 7]])).astype(np.float32)
    for q, r, t in zip(queries, ["n3", "n7"], ["n10", "n11"]):
        assert brute_ranking(q, gallery, names)[:2] == [r, t]
    groups = [["n3", "n10", "n1", "n2", "n4", "n5"], ["n7", "n11", "n1", "n2", "n4", "n5"]]
    q, g = torch.from_numpy(queries), torch.from_numpy(gallery)
    cirr = metrics.cirr_recalls(q, g, names, ["n3", "n7"], ["n10", "n11"], groups)
    assert cirr["R@1"] == 100.0 and cirr["Rs@1"] == 100.0
    fiq = metrics.fashioniq_recalls(q, g, names, ["n10", "n11"], ks=(1, 2))
    assert fiq == {"R@1": 0.0, "R@2": 100.0}  # FashionIQ keeps the reference in the ranking
    recall, subset = metrics.cirr_submission(q, g, names, ["n3", "n7"], [1, 2], groups)
    assert recall["1"][0] == "n10" and "n3" not in recall["1"] and subset["2"][0] == "n11"


def _angles(degrees):
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return torch.from_numpy(np.stack([np.cos(rad), np.sin(rad)], axis=1)).float()


# Hand-computed: gallery a..f at 0,10,..,50 degrees; score = cos(angle difference), so the
# ranking is by angular distance. Queries at 0, 12, 50 and 33 degrees.
GALLERY = _angles([0, 10, 20, 30, 40, 50])
NAMES = list("abcdef")
QUERIES = _angles([0, 12, 50, 33])


def test_hand_computed_fashioniq():
    # q@0 target a: rank 1.  q@12 target c: b(2) c(8) -> rank 2.
    # q@50 target c: f(0) e(10) d(20) c(30) -> rank 4.  q@33 target a: d e c f b a -> rank 6.
    got = metrics.fashioniq_recalls(QUERIES, GALLERY, NAMES, ["a", "c", "c", "a"], ks=(1, 2, 5, 6))
    assert got == {"R@1": 25.0, "R@2": 50.0, "R@5": 75.0, "R@6": 100.0}


def test_hand_computed_cirr():
    refs, targets = ["a", "b", "f", "d"], ["b", "a", "c", "a"]
    groups = [list("abcdef"), ["b", "a", "c", "d"], ["f", "c", "a", "b"], ["d", "a", "b", "c"]]
    # ranks without the reference:  q@0 (-a): b first -> 1.  q@12 (-b): c(8) a(12) -> 2.
    # q@50 (-f): e d c -> 3.  q@33 (-d): e(7) c(13) f(17) b(23) a(33) -> 5.
    # subset ranks (group minus reference): q@0: b,c,d,e,f -> 1.  q@12: c(8) a(12) d -> 2.
    # q@50: c(30) b(40) a(50) -> 1.  q@33: c(13) b(23) a(33) -> 3.
    got = metrics.cirr_recalls(QUERIES, GALLERY, NAMES, refs, targets, groups)
    expected = {"R@1": 25.0, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0, "Rs@1": 50.0, "Rs@2": 75.0,
                "Rs@3": 100.0}
    assert {k: got[k] for k in expected} == expected
    assert got["mean"] == pytest.approx(550 / 7)
    assert got["avg"] == 75.0  # (R@5 + Rs@1) / 2
    assert got["harmonic_mean"] == pytest.approx(7 / sum(1 / v for v in expected.values()))


def test_hand_computed_ties_go_to_the_lower_row():
    # a@0, b@10, c@10 (an exact copy of b, one row later), d@20. Exact ties are broken by row:
    # c always ranks right after b, so a target c never takes b's place (the old rule, counting
    # only strictly higher scores, ranked c first at q@10).
    gallery, names = _angles([0, 10, 10, 20]), list("abcd")
    queries = _angles([10, 12, 0])
    # q@10: b c -> 2.  q@12: b c (2 deg) d a -> 2.  q@0: a b c -> 3.
    fiq = metrics.fashioniq_recalls(queries, gallery, names, ["c", "c", "c"], ks=(1, 2, 3))
    assert fiq == pytest.approx({"R@1": 0.0, "R@2": 200 / 3, "R@3": 100.0})
    # reference removed: q@10 (-b): c -> 1.  q@12 (-a): b c -> 2.  q@0 (-a): b c -> 2.
    # subsets minus reference: q@10: {a, c, d} -> 1.  q@12: {b, c, d} -> 2.  q@0: {b, c} -> 2.
    refs, groups = ["b", "a", "a"], [list("abcd"), list("abcd"), list("abc")]
    cirr = metrics.cirr_recalls(queries, gallery, names, refs, ["c", "c", "c"], groups)
    assert cirr["R@1"] == pytest.approx(100 / 3) and cirr["R@5"] == 100.0
    assert cirr["Rs@1"] == pytest.approx(100 / 3) and cirr["Rs@2"] == 100.0
    recall, subset = metrics.cirr_submission(queries, gallery, names, refs, [0, 1, 2], groups)
    assert recall["0"][0] == "c" and recall["1"] == list("bcd") and recall["2"] == list("bcd")
    assert subset["1"] == list("bcd") and subset["2"] == list("bc")


def test_hand_computed_submission_and_files(tmp_path):
    refs = ["a", "b", "f", "d"]
    groups = [list("abcdef"), ["b", "a", "c", "d"], ["f", "c", "a", "b"], ["d", "a", "b", "c"]]
    recall, subset = metrics.cirr_submission(QUERIES, GALLERY, NAMES, refs, [10, "11", 12, 13], groups)
    assert recall["version"] == "rc2" and recall["metric"] == "recall"
    assert subset["version"] == "rc2" and subset["metric"] == "recall_subset"
    assert recall["10"] == list("bcdef")  # top-50 clamps to the 5 rows left after the reference
    assert recall["13"] == list("ecfba")
    assert subset["10"] == list("bcd") and subset["11"] == list("cad") and subset["13"] == list("cba")
    paths = write_submission(tmp_path / "sub", "run1", recall, subset)
    assert [p.name for p in paths] == ["recall_submission_run1.json", "recall_subset_submission_run1.json"]
    assert json.loads(paths[0].read_text()) == recall and json.loads(paths[1].read_text()) == subset
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(p.name for p in paths)
    with pytest.raises(ValueError):
        write_submission(tmp_path, "bad", subset, recall)


def test_submission_matches_brute_force(world):
    w = world
    recall, subset = metrics.cirr_submission(torch.from_numpy(w["queries"]), torch.from_numpy(w["gallery"]),
                                             w["names"], w["refs"], list(range(len(w["refs"]))), w["groups"])
    assert set(recall) == {"version", "metric", *map(str, range(len(w["refs"])))}
    for i, (q, r, g) in enumerate(zip(w["queries"], w["refs"], w["groups"])):
        ranking = brute_ranking(q, w["gallery"], w["names"], exclude=r)
        assert recall[str(i)] == ranking[:50]
        assert subset[str(i)] == [n for n in ranking if n in g][:3]


def test_average_fashioniq():
    per = {"dress": {"R@10": 30.0, "R@50": 50.0}, "shirt": {"R@10": 40.0, "R@50": 60.0},
           "toptee": {"R@10": 35.0, "R@50": 70.0}}
    out = metrics.average_fashioniq(per)
    assert out["dress"] == per["dress"]
    assert out["average"] == pytest.approx({"R@10": 35.0, "R@50": 60.0, "avg": 47.5})


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="not in its group"):
        metrics.cirr_recalls(QUERIES[:1], GALLERY, NAMES, ["a"], ["f"], [["a", "b", "c"]])
    with pytest.raises(ValueError, match="not in the gallery"):
        metrics.fashioniq_recalls(QUERIES[:1], GALLERY, NAMES, ["zzz"])
    with pytest.raises(ValueError, match="queries"):
        metrics.fashioniq_recalls(QUERIES, GALLERY, NAMES, ["a"])
