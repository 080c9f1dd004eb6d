"""The engine against brute force, the upload path against indexing, and bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from cir_demo.index import IndexMismatchError, load_index, save_index
from cir_demo.model import Combiner, load_clip
from cir_demo.pipeline.indexing import index_folder, index_manifest
from cir_demo.serve.engine import Engine, QueryError
from cir_demo.serve.text_tower import encode_text_truncated, make_text_tower


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip("cir-tiny")


@pytest.fixture(scope="module")
def combiner(clip):
    torch.manual_seed(1)
    return Combiner.for_feature_dim(clip.feature_dim).eval()


@pytest.fixture(scope="module")
def engine(clip, combiner, tmp_path_factory):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((300, clip.feature_dim)).astype(np.float32)
    names = [f"img{i:03d}" for i in range(300)]
    path = tmp_path_factory.mktemp("index") / "gallery"
    save_index(path, feats, names, index_manifest(clip, dataset="cirr"))
    eng = Engine(clip, combiner, device="cpu", text_precision="fp32", compose_precision="fp32")
    eng.add_gallery("g", load_index(path))
    return eng


def brute_force(engine, composer, ref, caption, exclude):
    """Independent ranking: numpy over the stored fp16 features, written out in full."""
    gallery = engine.galleries["g"].gallery
    raw = gallery.raw_features(torch.arange(len(gallery))).float().numpy()  # (N, D)
    row = gallery.row_of[ref]
    with torch.no_grad():
        text = engine.clip.encode_text([caption]).float()
        image = torch.from_numpy(raw[row:row + 1])
        query = engine.composers[composer](image, text)[0].numpy().astype(np.float64)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    scores = unit.astype(np.float64) @ query
    order = [i for i in np.argsort(-scores, kind="stable") if not (exclude and i == row)]
    return [gallery.names[i] for i in order], scores


@pytest.mark.parametrize("composer", ["combiner", "sum", "image", "text"])
@pytest.mark.parametrize("exclude", [True, False])
def test_search_equals_brute_force(engine, composer, exclude):
    result = engine.search("g", reference="img007", caption="add a red cube", k=25, composer=composer,
                           exclude_reference=exclude)
    expected, scores = brute_force(engine, composer, "img007", "add a red cube", exclude)
    assert [h.name for h in result.hits] == expected[:25]
    assert [h.rank for h in result.hits] == list(range(1, 26))
    assert ("img007" in [h.name for h in result.hits]) == (not exclude and "img007" in expected[:25])
    assert [h.score for h in result.hits] == pytest.approx([scores[int(n[3:])] for n in expected[:25]], abs=1e-4)
    assert (result.lam is not None) == (composer == "combiner")
    assert {"text", "image", "compose", "search", "total"} <= set(result.timings_ms)


def test_target_rank_beyond_k_and_subset(engine):
    expected, _ = brute_force(engine, "combiner", "img010", "make it blue", True)
    target = expected[120]
    subset = ["img010", expected[3], expected[200], expected[50]]
    result = engine.search("g", reference="img010", caption="make it blue", k=5, target=target, subset=subset)
    assert result.target_rank == 121
    assert [h.name for h in result.subset] == [expected[3], expected[50], expected[200]]  # reference dropped


def test_batch_search_matches_single_queries(engine):
    refs, caps = ["img001", "img002", "img003"], ["add a ball", "remove the star", "add a ball"]
    scores, names = engine.search_batch("g", refs, caps, k=10)
    for ref, cap, row in zip(refs, caps, names):
        assert row == [h.name for h in engine.search("g", reference=ref, caption=cap, k=10).hits]


def test_caption_features_are_cached(engine, monkeypatch):
    calls = []
    real = engine.text_tower.forward
    monkeypatch.setattr(engine.text_tower, "forward", lambda t: calls.append(len(t)) or real(t))
    engine.search("g", reference="img001", caption="a caption seen once", k=3)
    engine.search("g", reference="img002", caption="a caption seen once", k=3, composer="sum")
    assert calls == [1]


def test_truncated_text_tower_is_exact(clip):
    captions = ["red", "is darker and has orange lettering with long sleeves and a v-neck", "🙂 مرحبا"]
    tokens = clip.tokenize(captions)
    with torch.no_grad():
        expected = clip.model.encode_text(tokens)
        assert torch.allclose(encode_text_truncated(clip.model, tokens), expected, atol=1e-5)
        tower = make_text_tower(clip.model, torch.device("cpu"), "fp32")
        assert torch.allclose(tower(tokens), expected, atol=1e-5)
        low = make_text_tower(clip.model, torch.device("cpu"), "bf16")
        assert next(low.parameters()).dtype == torch.bfloat16
        assert next(clip.model.parameters()).dtype == torch.float32  # the shared model is untouched
        cos = torch.nn.functional.cosine_similarity(low(tokens), expected)
        assert cos.min() > 0.99


def test_uploaded_image_equals_indexed_image(clip, combiner, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        array = (rng.random((40 + i, 50, 3)) * 255).astype(np.uint8)
        Image.fromarray(array).save(folder / f"p{i:02d}.png")
    index = index_folder(clip, folder, tmp_path / "idx", progress=False)
    eng = Engine(clip, combiner, device="cpu", text_precision="fp32", compose_precision="fp32")
    eng.add_gallery("mine", index)
    by_name = eng.search("mine", reference="p04.png", caption="is darker", k=12)
    upload = eng.search("mine", reference=Image.open(folder / "p04.png"), caption="is darker", k=12)
    # Stored features are fp16: scores agree to fp16 precision, and so does the order.
    assert [h.score for h in upload.hits] == pytest.approx([h.score for h in by_name.hits], abs=2e-3)
    a, b = [h.name for h in by_name.hits], [h.name for h in upload.hits]
    gaps = np.diff([h.score for h in by_name.hits])
    for i in range(len(a)):
        if (i == 0 or -gaps[i - 1] > 5e-3) and (i == len(a) - 1 or -gaps[i] > 5e-3):
            assert a[i] == b[i]


def test_index_from_another_model_is_refused(clip, tmp_path):
    torch.manual_seed(9)
    other = load_clip("cir-tiny")
    save_index(tmp_path / "idx", np.zeros((3, other.feature_dim), np.float32), ["a", "b", "c"],
               index_manifest(other, rebuild_command="python -m cir_demo index --images x --out idx"))
    eng = Engine(clip, None, device="cpu")
    with pytest.raises(IndexMismatchError, match="rebuild it with: python -m cir_demo index"):
        eng.add_gallery("x", load_index(tmp_path / "idx"))
    with pytest.raises(IndexMismatchError, match="rebuild"):
        load_index(tmp_path / "idx", clip.fingerprint())


@pytest.mark.parametrize("kwargs, message", [
    ({"reference": "nope"}, "unknown gallery image"),
    ({"k": 0}, "K must be"),
    ({"k": 10 ** 6}, "K must be"),
    ({"k": "5"}, "K must be"),
    ({"caption": "   "}, "please write"),
    ({"composer": "magic"}, "unknown composer"),
    ({"reference": 42}, "reference must be"),
])
def test_bad_queries_are_refused_clearly(engine, kwargs, message):
    query = {"reference": "img001", "caption": "add a ball", "k": 5, **kwargs}
    with pytest.raises(QueryError, match=message):
        engine.search("g", **query)


def test_odd_captions_are_answered(engine):
    from cir_demo.serve.checks import MAX_CAPTION_CHARS

    for caption in ["x" * MAX_CAPTION_CHARS, "🙂🙂 make it 🔴", "اجعلها حمراء", "  trailing  "]:
        assert len(engine.search("g", reference="img001", caption=caption, k=3).hits) == 3
    assert engine.search("g", reference="img001", caption="", k=3, composer="image").hits


def test_captions_past_the_limit_are_refused_with_a_short_message(engine):
    from cir_demo.serve.checks import MAX_CAPTION_CHARS

    for caption in ["x" * (MAX_CAPTION_CHARS + 1), "y" * 2 ** 20]:
        with pytest.raises(QueryError, match="please keep it under") as err:
            engine.search("g", reference="img001", caption=caption, k=3)
        assert len(str(err.value)) < 100  # never echoed back
    with pytest.raises(QueryError) as err:
        engine.search("g", reference="z" * 2 ** 20, caption="x", k=3)
    assert "unknown gallery image name" in str(err.value) and len(str(err.value)) < 200


def test_unknown_gallery(engine):
    with pytest.raises(QueryError, match="unknown gallery 'h'"):
        engine.search("h", reference="img001", caption="x")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphed_text_tower_matches_eager(clip):
    gpu = torch.device("cuda")
    model = load_clip("cir-tiny").model.to(gpu).eval()
    for precision, atol in (("fp32", 1e-4), ("fp16", 2e-2)):
        graphed = make_text_tower(model, gpu, precision, cuda_graphs=True, capture="eager")
        eager = make_text_tower(model, gpu, precision, cuda_graphs=False)
        assert graphed._graphs and all(entry.graph is not None for entry in graphed._graphs.values())
        for caption in ["red", "is darker and has orange lettering", "make the background blue " * 3]:
            tokens = clip.tokenize([caption])
            assert torch.allclose(graphed(tokens), eager(tokens), atol=atol)


def test_small_caption_cache_and_batches_larger_than_it(clip, combiner, engine):
    small = Engine(clip, combiner, device="cpu", text_precision="fp32", compose_precision="fp32",
                   text_cache_size=2)
    small.galleries = engine.galleries
    scores, names = small.search_batch("g", ["img001", "img002", "img003"], ["a dog", "a cat", "a cow"], k=4)
    assert len(names) == 3 and len(small._text_cache) == 2


def test_unknown_subset_member_is_a_query_error(engine):
    with pytest.raises(QueryError, match="unknown gallery image name 'ghost'"):
        engine.search("g", reference="img001", caption="x", subset=["img002", "ghost"])


def test_compare_encodes_an_upload_once(engine, monkeypatch):
    calls = []
    real = engine.image_features
    monkeypatch.setattr(engine, "image_features", lambda image: calls.append(1) or real(image))
    upload = Image.new("RGB", (40, 50), (200, 30, 30))
    results = engine.compare("g", reference=upload, caption="make it blue", k=5)
    assert set(results) == {"combiner", "sum", "image", "text"} and len(calls) == 1
    assert results["combiner"].lam is not None and results["sum"].lam is None
