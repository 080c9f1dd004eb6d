"""cir_demo.index: exact search vs a numpy brute force, and the index artifact on disk."""

import json

import numpy as np
import pytest
import torch

from cir_demo.index import (
    FaissGallery,
    Gallery,
    IndexFormatError,
    IndexMismatchError,
    load_index,
    recall_at_k_vs_exact,
    resolve_dtype,
    save_index,
    store,
)
from cir_demo.index import kernels as K

DTYPES = ["fp32", "bf16", "fp16"]  # fp32: plain scan; bf16/fp16: low-precision scan + exact rescoring


@pytest.fixture(scope="module")
def data():
    """Raw fp16 gallery (not unit norm, like CLIP features) and unit fp32 queries."""
    g = torch.Generator().manual_seed(0)
    n, d = 3000, 48
    raw = (torch.randn(n, d, generator=g) * 3 + torch.randn(1, d, generator=g)).half()
    queries = torch.nn.functional.normalize(torch.randn(6, d, generator=g), dim=-1)
    queries[:3] = torch.nn.functional.normalize(raw[:3].float() + 0.3 * torch.randn(3, d, generator=g), dim=-1)
    return raw, [f"img_{i}" for i in range(n)], queries


def brute_order(raw, query, exclude=-1):
    """Rows sorted by float64 cosine score, best first, with the excluded row dropped."""
    unit = raw.double().numpy()
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    sims = unit @ query.double().numpy()
    order = [int(i) for i in np.argsort(-sims, kind="stable") if i != exclude]
    return order, sims


def assert_ranking(rows, order, sims, exact_prefix=50):
    """Rows equal the brute-force order: exactly over the head, and everywhere up to fp32 near-ties
    (a full ranking of thousands has neighbours closer than fp32 rounding)."""
    rows = rows.tolist()
    head = min(exact_prefix, len(rows))
    assert rows[:head] == order[:head]
    assert sorted(rows) == sorted(order[:len(rows)])
    np.testing.assert_allclose(sims[rows], sims[order[:len(rows)]], atol=1e-6)


@pytest.fixture(scope="module", params=DTYPES)
def gallery(request, data):
    raw, names, _ = data
    return Gallery(raw, names, device="cpu", compute_dtype=request.param)


@pytest.mark.parametrize("k", [1, 50, 700])
def test_topk_equals_brute_force(gallery, data, k):
    raw, _, queries = data
    scores, rows = gallery.topk(queries, k)
    assert scores.dtype == torch.float32 and rows.dtype == torch.int64 and rows.shape == (6, k)
    for q in range(6):
        order, sims = brute_order(raw, queries[q])
        assert_ranking(rows[q], order, sims)
        np.testing.assert_allclose(scores[q].numpy(), sims[order[:k]], atol=2e-6)


def test_topk_with_exclusion_including_k_n_minus_1(gallery, data):
    raw, _, queries = data
    n = len(gallery)
    exclude = torch.tensor([0, 1, 2, -1, 5, n - 1])  # queries 0-2 would rank their own row first
    for k in (10, n - 1, n + 5):
        scores, rows = gallery.topk(queries, k, exclude_rows=exclude)
        assert rows.shape == ((6, n - 1) if k >= n - 1 else (6, k))
        for q in range(6):
            order, sims = brute_order(raw, queries[q], int(exclude[q]))
            assert int(exclude[q]) not in rows[q].tolist()
            assert_ranking(rows[q], order, sims)


def test_rank_of_equals_brute_force(gallery, data):
    raw, _, queries = data
    targets = torch.tensor([0, 17, 2999, 1500, 42, 1])
    exclude = torch.tensor([5, 0, -1, 1, 2, 0])
    for excl in (None, exclude):
        ranks = gallery.rank_of(queries, targets, exclude_rows=excl)
        for q in range(6):
            order, sims = brute_order(raw, queries[q], -1 if excl is None else int(excl[q]))
            t = int(targets[q])
            others = np.array([sims[r] for r in order if r != t])
            # brute rank, allowing only neighbours closer than fp32 rounding to swap with the target
            low, high = 1 + np.sum(others > sims[t] + 1e-6), 1 + np.sum(others > sims[t] - 1e-6)
            assert low <= int(ranks[q]) <= high and high - low <= 1
            if low == high:
                assert int(ranks[q]) == order.index(t) + 1
    with pytest.raises(ValueError):
        gallery.rank_of(queries[:1], [3], exclude_rows=[3])


def test_single_query_subset_and_stored_features(gallery, data):
    raw, names, queries = data
    scores, rows = gallery.topk(queries[4], 5)
    assert rows.shape == (5,) and rows.tolist() == brute_order(raw, queries[4])[0][:5]
    subset = [10, 200, 3, 2500, 77]
    sorted_rows, sub_scores = gallery.subset_ranking(queries[4], subset)
    order, sims = brute_order(raw, queries[4])
    assert sorted_rows.tolist() == [r for r in order if r in subset]
    np.testing.assert_allclose(sub_scores.numpy(), sims[sorted_rows.numpy()], atol=2e-6)
    assert torch.equal(gallery.raw_features([7, 8]), raw[[7, 8]])
    assert torch.equal(gallery.feature_of(names[9]), raw[9])
    with pytest.raises(KeyError, match="unknown"):
        gallery.feature_of("nope")


def test_bad_k_and_rows(gallery, data):
    queries = data[2]
    for k in (0, -3, True, 2.5, "5", None):
        with pytest.raises(ValueError, match="K must be a whole number"):
            gallery.topk(queries, k)
    with pytest.raises(IndexError):
        gallery.topk(queries[:1], 3, exclude_rows=[len(gallery)])
    with pytest.raises(ValueError):
        gallery.topk(torch.ones(2, 5), 3)


def test_scan_dtype_choice():
    cpu = torch.device("cpu")
    fp32, bf16, fp16 = torch.float32, torch.bfloat16, torch.float16

    def timer(times):
        return lambda dtype, n, d: times[dtype]
    # the fastest measured wins; fp32 is kept when within 5 % of it
    assert resolve_dtype("auto", cpu, 100_000, timer=timer({fp32: 20.0, bf16: 8.0, fp16: 4.5})) == fp16
    assert resolve_dtype("auto", cpu, 100_000, timer=timer({fp32: 20.0, bf16: 7.0, fp16: 9.0})) == bf16
    assert resolve_dtype("auto", cpu, 1000, timer=timer({fp32: 1.02, bf16: 1.0, fp16: 1.1})) == fp32
    measured = resolve_dtype("auto", cpu, 5000, 32)  # the real probe: some float dtype, remembered
    assert measured in (fp32, bf16, fp16) and resolve_dtype("auto", cpu, 5000, 32) == measured
    assert resolve_dtype("auto", torch.device("cuda"), 10) == torch.float16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_dtype("int8", cpu)


@pytest.mark.parametrize("dim,dtype", [(2, "fp32"), (3, "fp32"), (8, "fp32"), (2, "bf16"), (2, "fp16"),
                                       (640, "fp32"), (640, "bf16"), (640, "fp16")])
def test_error_bound_covers_scan_and_rescorer(dim, dtype):
    """The filter compares scan scores with rescored (canonical) scores, so its bound must cover
    both errors. At small D the rounding terms (normalisation, fp32 rescoring) are as large as
    the accumulation term, so a bound that leaves one out is exceeded here."""
    g = torch.Generator().manual_seed(dim)
    n = 20_000 if dim < 64 else 2_000
    raw = (torch.randn(n, dim, generator=g) * 3).half()  # (N, D) not unit norm
    queries = torch.nn.functional.normalize(torch.randn(16, dim, generator=g), dim=-1)  # (Q, D)
    gal = Gallery(raw, [str(i) for i in range(n)], device="cpu", compute_dtype=dtype)
    canonical = gal.scores_of(queries, torch.arange(n)).double()  # (Q, N)
    scan = gal._scan(queries).double()  # (Q, N)
    x = raw.double().numpy()
    exact = torch.from_numpy(queries.double().numpy() @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T)
    eps = gal._eps(queries).double()[:, None]  # (Q, 1)
    assert bool(((scan - canonical).abs() <= eps).all())
    assert bool(((scan - exact).abs() + (canonical - exact).abs() <= eps).all())


def test_query_blocking_changes_nothing(data, monkeypatch):
    raw, names, queries = data
    gal = Gallery(raw, names, device="cpu", compute_dtype="bf16")
    want = gal.topk(queries, 20, exclude_rows=[1, 2, 3, 4, 5, 6])
    ranks = gal.rank_of(queries, [9, 8, 7, 6, 5, 4])
    monkeypatch.setattr(K, "MAX_BLOCK_ELEMS", 2 * len(gal))
    got = gal.topk(queries, 20, exclude_rows=[1, 2, 3, 4, 5, 6])
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    assert torch.equal(gal.rank_of(queries, [9, 8, 7, 6, 5, 4]), ranks)


# ---- the artifact -------------------------------------------------------------------------
MANIFEST = {"model_fingerprint": "sha256:aaa", "model_name": "RN50x4-quickgelu", "preprocess": {"kind": "targetpad"},
            "image_root": "/data/fashioniq/images", "dataset": "fashioniq", "split": "val", "category": "dress",
            "rebuild_command": "python -m cir_demo index --dataset fashioniq --split val"}


def _small():
    feats = (torch.randn(40, 8, generator=torch.Generator().manual_seed(1)) * 5).half()
    return feats, [f"name-{i}-é" for i in range(40)]


def test_content_changed_in_place_is_refused(tmp_path):
    """Zeroed blocks inside the features (same size), or renamed rows, fail the content check."""
    feats, names = _small()
    path = save_index(tmp_path / "idx", feats, names, MANIFEST)
    file = path / "features.safetensors"
    data = bytearray(file.read_bytes())
    data[-160:-32] = bytes(128)  # the last rows' values, header untouched
    file.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="content no longer matches"):
        load_index(path)
    assert load_index(path, verify=False).count == 40  # the check can be skipped for huge indexes
    path = save_index(tmp_path / "idx2", feats, names, MANIFEST)
    (path / "names.json").write_text(json.dumps(names[::-1]), encoding="utf-8")
    with pytest.raises(IndexFormatError, match="content no longer matches"):
        load_index(path)


def test_save_load_round_trip_bit_exact(tmp_path):
    feats, names = _small()
    path = save_index(tmp_path / "idx", feats, names, MANIFEST)
    index = load_index(path, expected_fingerprint="sha256:aaa")
    assert index.features.dtype == torch.float16
    assert torch.equal(index.features.view(torch.int16), feats.view(torch.int16))
    assert index.names == names and index.count == 40 and index.dim == 8
    import hashlib

    want = hashlib.blake2b(feats.numpy().tobytes() + json.dumps(names, ensure_ascii=False).encode(), digest_size=16)
    assert index.manifest == {**MANIFEST, "format": "cir-index/1", "count": 40, "dim": 8, "created_by": "cir_demo",
                              "content_hash": want.hexdigest()}
    gal = Gallery.from_index(index, device="cpu")
    assert gal.manifest["dataset"] == "fashioniq" and torch.equal(gal.feature_of(names[3]), feats[3])
    save_index(path, feats[:10], names[:10], MANIFEST)  # replacing an existing index is allowed
    assert load_index(path).count == 10


def test_mismatched_fingerprint_is_refused(tmp_path):
    feats, names = _small()
    save_index(tmp_path / "idx", feats, names, MANIFEST)
    with pytest.raises(IndexMismatchError) as err:
        load_index(tmp_path / "idx", expected_fingerprint="sha256:bbb", expected_model_name="RN50")
    message = str(err.value)
    assert "rebuild" in message and MANIFEST["rebuild_command"] in message
    assert "RN50x4-quickgelu" in message and "'RN50'" in message and "sha256:bbb" in message


@pytest.mark.parametrize("damage", ["truncate", "no_names", "names_count", "dup_names", "manifest_count",
                                    "manifest_garbage", "wrong_dtype"])
def test_corrupt_index_gives_clear_error(tmp_path, damage):
    feats, names = _small()
    path = save_index(tmp_path / "idx", feats, names, MANIFEST)
    blob = path / "features.safetensors"
    if damage == "truncate":
        blob.write_bytes(blob.read_bytes()[:300])
    elif damage == "no_names":
        (path / "names.json").unlink()
    elif damage in ("names_count", "dup_names"):
        (path / "names.json").write_text(json.dumps(names[:-1] if damage == "names_count" else names[:-1] + names[:1]))
    elif damage == "manifest_count":
        (path / "manifest.json").write_text(json.dumps({**MANIFEST, "format": "cir-index/1", "count": 41, "dim": 8}))
    elif damage == "manifest_garbage":
        (path / "manifest.json").write_text("{not json")
    else:
        from safetensors.torch import save_file
        save_file({"features": feats.float()}, str(blob))
    with pytest.raises(IndexFormatError, match="rebuild it with"):
        load_index(path)


def test_missing_folder_and_non_index_overwrite(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_index(tmp_path / "nothing")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    feats, names = _small()
    with pytest.raises(FileExistsError):
        save_index(tmp_path / "mine", feats, names, MANIFEST)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_failed_write_leaves_no_partial_index(tmp_path, monkeypatch):
    feats, names = _small()
    save_index(tmp_path / "old", feats[:5], names[:5], MANIFEST)

    def boom(file, obj):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "_write_json", boom)  # features already written when this fires
    for target in ("new", "old"):
        with pytest.raises(RuntimeError, match="disk full"):
            save_index(tmp_path / target, feats, names, MANIFEST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no temp folder, no "new"
    assert load_index(tmp_path / "old").count == 5  # the previous index is intact


# ---- approximate backend ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_faiss_recall_vs_exact(kind):
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(40, 32, generator=g) * 3
    feats = centers[torch.randint(0, 40, (4000,), generator=g)] + torch.randn(4000, 32, generator=g)
    names = [f"x{i}" for i in range(4000)]
    queries = torch.nn.functional.normalize(feats[:20] + 0.5 * torch.randn(20, 32, generator=g), dim=-1)
    exact = Gallery(feats, names, device="cpu")
    approx = FaissGallery(feats, names, kind=kind)
    assert recall_at_k_vs_exact(approx, exact, queries, k=50) >= 0.9
    excl = torch.arange(20)
    assert recall_at_k_vs_exact(approx, exact, queries, k=50, exclude_rows=excl) >= 0.9
    _, rows = approx.topk(queries, 50, exclude_rows=excl)
    assert not bool((rows == excl[:, None]).any())


def test_faiss_mixed_exclusions_with_unfilled_slots():
    """IVF probing one small list leaves slots unfilled (row -1); some queries exclude a row that
    FAISS returns, one excludes a row it does not return, the others exclude nothing (-1)."""
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(2000, 16, generator=g)
    names = [f"x{i}" for i in range(2000)]
    queries = torch.nn.functional.normalize(feats[:6] + 0.1 * torch.randn(6, 16, generator=g), dim=-1)
    approx = FaissGallery(feats, names, kind="ivf", nlist=64, nprobe=1)
    k = 200  # far more than one probed list holds (~31 rows)
    raw_scores, raw_rows = approx.index.search(queries.numpy(), k + 1)  # what topk post-processes
    far = next(r for r in range(2000) if r not in raw_rows[3])
    excl = torch.tensor([0, -1, 2, far, -1, 5])  # 0, 2, 5: each query's own row, returned first
    scores, rows = approx.topk(queries, k, exclude_rows=excl)
    assert rows.shape == (6, k) and scores.shape == (6, k)
    unit = torch.nn.functional.normalize(feats, dim=-1).double().numpy()
    for q in range(6):
        listed = [(int(r), float(s)) for r, s in zip(raw_rows[q], raw_scores[q])]
        e = int(excl[q])
        kept = [p for p in listed if p[0] != e] if e >= 0 and e in [r for r, _ in listed] else listed[:k]
        assert len(kept) == k
        assert rows[q].tolist() == [r for r, _ in kept]
        filled = rows[q] >= 0
        assert int((~filled).sum()) > 0 and bool((scores[q][~filled] == float("-inf")).all())
        want = unit[rows[q][filled].numpy()] @ queries[q].double().numpy()
        np.testing.assert_allclose(scores[q][filled].numpy(), want, atol=1e-5)
        assert e not in rows[q].tolist() or e < 0
    _, one_r = approx.topk(queries[1], k, exclude_rows=-1)
    assert one_r.shape == (k,) and torch.equal(one_r, rows[1])
