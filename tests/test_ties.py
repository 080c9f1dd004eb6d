"""One tie rule everywhere (score descending, then gallery row ascending), against a literal reference.

Galleries here hold exact duplicate rows, so their scores tie exactly. The reference scores each
*distinct* vector once with math.fsum in float64 and gives every copy that same value, so its
ties are exact by construction; distinct vectors are kept far enough apart (asserted) that fp32
rounding cannot reorder them. The reference then applies the rule literally: a Python sort by
(-score, row) for rankings and the counting formula for ranks.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from cir_demo.eval import metrics
from cir_demo.index import Gallery
from cir_demo.index import kernels as K

MIN_GAP = 2e-5  # distinct reference scores of one query differ by more (fp32 errors here are < 3e-6)


# ---- the literal reference --------------------------------------------------------------------
def ref_scores(base, base_of, query):
    """Float64 score of every row: one fsum per distinct vector, copied to each of its rows."""
    per_base = [math.fsum(float(a) * float(b) for a, b in zip(v, query)) / math.sqrt(math.fsum(float(a) ** 2 for a in v))
                for v in base]
    return [per_base[b] for b in base_of]


def ref_ranking(sims, exclude=-1, rows=None):
    """Rows sorted by (score descending, row ascending), the excluded row left out."""
    rows = range(len(sims)) if rows is None else rows
    return sorted((r for r in rows if r != exclude), key=lambda r: (-sims[r], r))


def ref_rank(sims, target, exclude=-1):
    """1 + #{s_r > s_t} + #{s_r == s_t and r < t}, excluded row never counted (the formula)."""
    return 1 + sum(1 for r in range(len(sims)) if r not in (target, exclude)
                   and (sims[r] > sims[target] or (sims[r] == sims[target] and r < target)))


def min_gap(sims):
    distinct = sorted(set(sims))
    return min(b - a for a, b in itertools.pairwise(distinct))


def dup_world(seed, n_base=30, dim=24, big_group=300, n_queries=8):
    """Raw fp16 base vectors (not unit norm), each copied 1-6 times (one copied big_group times) into
    shuffled rows; queries near some bases. Returns (base, base_of, raw rows, unit queries, sims)."""
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal((n_base, dim)) * 3).astype(np.float16)
    counts = rng.integers(1, 7, n_base)
    counts[0] = big_group
    base_of = rng.permutation(np.repeat(np.arange(n_base), counts))
    raw = torch.from_numpy(base[base_of])  # (N, D) fp16, exact copies
    picks = [0, 0, 1, 2, 3, 5, 7, 11][:n_queries]  # two queries near the big group: big ties at the top
    queries, sims = [], []
    for p in picks:
        for _ in range(50):  # redraw until fp32 rounding cannot reorder distinct vectors
            q = base[p].astype(np.float32) + 0.3 * rng.standard_normal(dim).astype(np.float32)
            q = torch.nn.functional.normalize(torch.from_numpy(q), dim=-1)  # (D,)
            s = ref_scores(base, base_of, q.double().numpy())
            if min_gap(s) > MIN_GAP:
                break
        assert min_gap(s) > MIN_GAP
        queries.append(q)
        sims.append(s)
    return base, base_of, raw, torch.stack(queries), sims


@pytest.fixture(scope="module")
def world():
    return dup_world(seed=4)


def mixed_exclusions(sims):
    """Per query: exclude the best row for even queries, nothing (-1) for odd ones."""
    return torch.tensor([ref_ranking(s)[0] if q % 2 == 0 else -1 for q, s in enumerate(sims)])


# ---- the rule itself, on arbitrary score matrices ---------------------------------------------
def test_topk_by_rule_and_rank_among_match_literal_rule_on_heavy_ties():
    rng = np.random.default_rng(0)
    for trial in range(40):
        q, c = 5, int(rng.integers(2, 60))
        scores = torch.from_numpy(rng.integers(0, 4, (q, c)).astype(np.float32))  # (Q, C), many ties
        if trial % 2:
            scores[0, 0] = float("-inf")  # an excluded row
        rows = torch.from_numpy(np.stack([rng.permutation(500)[:c] for _ in range(q)]))  # (Q, C) distinct
        for k in sorted({1, int(rng.integers(1, c + 1)), c}):
            vals, got = K.topk_by_rule(scores, k, rows)
            for i in range(q):
                s = {int(r): float(v) for r, v in zip(rows[i], scores[i])}
                want = sorted(s, key=lambda r: (-s[r], r))[:k]
                assert got[i].tolist() == want
                assert vals[i].tolist() == [s[r] for r in want]
        t_col = torch.from_numpy(rng.integers(1 if trial % 2 else 0, c, q))  # (Q,) never the -inf column
        t_rows, t_scores = rows.gather(1, t_col[:, None])[:, 0], scores.gather(1, t_col[:, None])[:, 0]
        ranks = K.rank_among(scores, t_scores, t_rows, rows)
        for i in range(q):
            s = [float(v) for v in scores[i]]
            r = [int(x) for x in rows[i]]
            t = int(t_col[i])
            want = 1 + sum(1 for j in range(c) if j != t and s[j] != float("-inf")
                           and (s[j] > s[t] or (s[j] == s[t] and r[j] < r[t])))
            assert int(ranks[i]) == want


def test_exact_kernels_follow_rule_on_duplicate_rows(world):
    _, _, raw, queries, sims = world
    matrix = torch.nn.functional.normalize(raw.float(), dim=-1)  # (N, D) fp32, copies identical
    for excl in (None, mixed_exclusions(sims)):
        for k in (1, 3, 299, 301, 320):
            _, rows = K.exact_topk(queries, matrix, k, excl)
            for q, s in enumerate(sims):
                e = -1 if excl is None else int(excl[q])
                assert rows[q].tolist() == ref_ranking(s, e)[:k]
        ex = [-1] * len(sims) if excl is None else excl.tolist()
        targets = torch.tensor([ref_ranking(s, e)[j] for s, e, j in zip(sims, ex, (1, 5, 298, 299, 2, 7, 0, 40))])
        ranks = K.exact_ranks(queries, matrix, targets, excl)
        for q, (s, e) in enumerate(zip(sims, ex)):
            assert int(ranks[q]) == ref_rank(s, int(targets[q]), e)
            assert int(ranks[q]) == ref_ranking(s, e).index(int(targets[q])) + 1  # formula == sort


# ---- Gallery: every path, every scan dtype ------------------------------------------------------
@pytest.fixture(params=["rescore", "dense"])
def path(request, monkeypatch):
    """Force the candidate-rescoring or the dense-rescoring branch of the two-stage filter."""
    monkeypatch.setattr(K, "DENSE_FRACTION", 0 if request.param == "rescore" else 10 ** 9)
    return request.param


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("excluding", [False, True])
def test_gallery_topk_rank_and_subset_follow_rule(world, dtype, excluding, path):
    _, base_of, raw, queries, sims = world
    gal = Gallery(raw, [f"r{i}" for i in range(len(raw))], device="cpu", compute_dtype=dtype)
    excl = mixed_exclusions(sims) if excluding else None
    ex = [-1] * len(sims) if excl is None else excl.tolist()
    for k in (1, 2, 299, 300, 305):  # cuts inside the 300-copy group and inside small groups
        scores, rows = gal.topk(queries, k, exclude_rows=excl)
        for q, s in enumerate(sims):
            want = ref_ranking(s, ex[q])[:k]
            assert rows[q].tolist() == want
            np.testing.assert_allclose(scores[q].numpy(), [s[r] for r in want], atol=2e-6)
    # targets: the first, a middle and the last copy of tied groups, and singles
    targets = torch.tensor([ref_ranking(s, e)[j] for s, e, j in zip(sims, ex, (0, 150, 298, 299, 1, 4, 12, 60))])
    ranks = gal.rank_of(queries, targets, exclude_rows=excl)
    for q, s in enumerate(sims):
        assert int(ranks[q]) == ref_rank(s, int(targets[q]), ex[q])
    subset = ref_ranking(sims[0])[::37][::-1] + [int(np.flatnonzero(base_of == 0)[3])]  # ties, shuffled order
    subset = list(dict.fromkeys(subset))
    sub_rows, sub_scores = gal.subset_ranking(queries[0], subset)
    assert sub_rows.tolist() == ref_ranking(sims[0], rows=subset)
    np.testing.assert_allclose(sub_scores.numpy(), [sims[0][r] for r in sub_rows.tolist()], atol=2e-6)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_position_in_topk_is_rank_of(world, dtype):
    """Whenever rank_of(t) <= k, topk lists t exactly at that position; otherwise not at all."""
    _, _, raw, queries, sims = world
    gal = Gallery(raw, [f"r{i}" for i in range(len(raw))], device="cpu", compute_dtype=dtype)
    excl = mixed_exclusions(sims)
    k = 310
    _, hits = gal.topk(queries, k, exclude_rows=excl)
    rng = np.random.default_rng(1)
    for q in range(len(sims)):
        candidates = [t for t in rng.permutation(len(raw))[:60].tolist() + hits[q].tolist()[:40] if t != int(excl[q])]
        ts = torch.tensor(candidates)
        ranks = gal.rank_of(queries[q].expand(len(ts), -1), ts, exclude_rows=excl[q].expand(len(ts)))
        one_by_one = [int(gal.rank_of(queries[q], t, exclude_rows=int(excl[q]))) for t in candidates[:10]]
        assert ranks[:10].tolist() == one_by_one  # batch shape changes nothing
        for t, r in zip(candidates, ranks.tolist()):
            if r <= k:
                assert int(hits[q, r - 1]) == t
            else:
                assert t not in hits[q].tolist()


def test_scan_dtype_and_query_batch_change_no_bit():
    """Every answer is in canonical scores: fp32/bf16/fp16 scans and batch shapes give the same bits."""
    g = torch.Generator().manual_seed(2)
    raw = (torch.randn(3000, 64, generator=g) * 2 + torch.randn(1, 64, generator=g)).half()
    raw[1000:1010] = raw[7]  # a few exact copies as well
    queries = torch.nn.functional.normalize(torch.randn(5, 64, generator=g), dim=-1)
    queries[0] = torch.nn.functional.normalize(raw[7].float(), dim=0)
    names = [str(i) for i in range(len(raw))]
    gals = [Gallery(raw, names, device="cpu", compute_dtype=dt) for dt in ("fp32", "bf16", "fp16")]
    excl = torch.tensor([7, -1, 3, -1, 0])
    want_s, want_r = gals[0].topk(queries, 40, exclude_rows=excl)
    assert want_r[0, :10].tolist() == list(range(1000, 1010))  # copies of the excluded row 7, by row
    targets = torch.tensor([1005, 17, 2999, 1500, 1])
    want_ranks = gals[0].rank_of(queries, targets, exclude_rows=excl)
    for gal in gals:
        s, r = gal.topk(queries, 40, exclude_rows=excl)
        assert torch.equal(s, want_s) and torch.equal(r, want_r)
        assert torch.equal(gal.rank_of(queries, targets, exclude_rows=excl), want_ranks)
        for q in range(5):
            s1, r1 = gal.topk(queries[q], 40, exclude_rows=int(excl[q]))
            assert torch.equal(s1, want_s[q]) and torch.equal(r1, want_r[q])
            assert torch.equal(gal.scores_of(queries[q], r1), want_s[q])


# ---- metrics: recalls, subset ranks and submissions -------------------------------------------
def metric_world(seed=7):
    """Duplicate-heavy gallery (unit fp32 rows) with CIRR-style groups; targets are later copies of
    their vector for half the queries, so copies at lower rows tie with them and rank first."""
    _, base_of, raw, queries, sims = dup_world(seed, n_base=40, big_group=20, n_queries=8)
    gallery = torch.nn.functional.normalize(raw.float(), dim=-1)
    names = [f"g{i:03d}" for i in range(len(raw))]
    rng = np.random.default_rng(seed)
    targets, refs, groups = [], [], []
    for q, s in enumerate(sims):
        order = ref_ranking(s)
        copies = sorted(int(r) for r in np.flatnonzero(base_of == base_of[order[0]]))
        t = copies[-1] if q % 2 == 0 else order[int(rng.integers(0, 30))]
        r = next(x for x in order[1:] if x != t)  # a high-ranking reference, removed in CIRR
        tied = [x for x in order if s[x] == s[t] and x != t][:2]  # the target's copies join its group
        others = [int(x) for x in rng.permutation(len(raw)) if x not in (t, r)][:3]
        members = list(dict.fromkeys([r, t, *tied, *others]))
        rng.shuffle(members)
        targets.append(t)
        refs.append(r)
        groups.append([names[m] for m in members])
    return gallery, names, queries, sims, targets, refs, groups


def test_metrics_follow_rule_with_duplicates():
    gallery, names, queries, sims, targets, refs, groups = metric_world()
    row = {n: i for i, n in enumerate(names)}
    fiq_ranks = [ref_rank(s, t) for s, t in zip(sims, targets)]
    assert any(r > 1 and s.count(s[t]) > 1 for r, s, t in zip(fiq_ranks, sims, targets))  # ties decide
    ks = (1, 2, 3, 5, 10, 20, 50)
    got = metrics.fashioniq_recalls(queries, gallery, names, [names[t] for t in targets], ks=ks)
    for k in ks:
        assert got[f"R@{k}"] == pytest.approx(100.0 * sum(r <= k for r in fiq_ranks) / len(fiq_ranks))
    ranks = [ref_rank(s, t, r) for s, t, r in zip(sims, targets, refs)]
    sub = [ref_ranking(s, r, rows=[row[m] for m in g]).index(t) + 1
           for s, t, r, g in zip(sims, targets, refs, groups)]
    got = metrics.cirr_recalls(queries, gallery, names, [names[r] for r in refs], [names[t] for t in targets], groups)
    for k in (1, 5, 10, 50):
        assert got[f"R@{k}"] == pytest.approx(100.0 * sum(r <= k for r in ranks) / len(ranks)), k
    for k in (1, 2, 3):
        assert got[f"Rs@{k}"] == pytest.approx(100.0 * sum(r <= k for r in sub) / len(sub)), k
    recall, subset = metrics.cirr_submission(queries, gallery, names, [names[r] for r in refs],
                                             list(range(len(refs))), groups)
    for q, (s, r, g) in enumerate(zip(sims, refs, groups)):
        assert recall[str(q)] == [names[x] for x in ref_ranking(s, r)[:50]]
        assert subset[str(q)] == [names[x] for x in ref_ranking(s, r, rows=[row[m] for m in g])[:3]]


# ---- K validation ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -2, True, False, 2.0, 2.5, "3", None])
def test_check_k_rejects_non_whole_numbers_with_a_user_message(bad):
    with pytest.raises(ValueError, match=r"K must be a whole number ≥ 1, got "):
        K.check_k(bad, 10, excluding=False)


def test_check_k_clamps_and_accepts_numpy_integers():
    assert K.check_k(50, 10, excluding=False) == 10
    assert K.check_k(50, 10, excluding=True) == 9
    assert K.check_k(np.int64(3), 10, excluding=False) == 3
    with pytest.raises(ValueError, match="no row left"):
        K.check_k(1, 1, excluding=True)
