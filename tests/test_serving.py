"""Bundles, catalog and preparation: each gallery meets only its own model; caches rebuilt when stale."""

import random

import numpy as np
import pytest
import torch

from cir_demo.config import WEIGHTS_DIR
from cir_demo.data.datasets import load_cirr, load_fashioniq
from cir_demo.index import IndexMismatchError, load_index, save_index
from cir_demo.model import Combiner, ModelMismatchError, load_checkpoint, load_clip
from cir_demo.pipeline.indexing import index_manifest
from cir_demo.serve.deploy import parse_config
from cir_demo.serve.engine import Engine, QueryError
from cir_demo.serve.prepare import ensure_index, load_deployment, world_is_current

CONFIG = {
    "world": {"seed": 0, "size": "tiny", "splits": ["val"]},
    "bundles": [
        {"name": "fashioniq", "clip": "{project}/weights/fashioniq.safetensors",
         "combiner": "{project}/weights/fashioniq.safetensors",
         "galleries": [{"name": "dress", "data": "{world}/fashioniq", "category": "dress"},
                       {"name": "shirt", "data": "{world}/fashioniq", "category": "shirt"}]},
        {"name": "cirr", "clip": "{project}/weights/cirr.safetensors", "combiner": "{project}/weights/cirr.safetensors",
         "galleries": [{"name": "scenes", "data": "{world}/cirr"}]},
    ],
}
EXACT = {"text_precision": "fp32", "compose_precision": "fp32"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIR_DEMO_CACHE", str(tmp_path_factory.mktemp("cache")))
        return parse_config(CONFIG, source="test")


@pytest.fixture(scope="module")
def catalog(deployment):
    return load_deployment(deployment, device="cpu", progress=False, **EXACT)


def alone(checkpoint, gallery, index_dir):
    """What a process holding only ``checkpoint`` answers: a fresh engine with just that gallery."""
    ckpt = load_checkpoint(WEIGHTS_DIR / f"{checkpoint}.safetensors")
    engine = Engine(ckpt.clip, ckpt.combiner, device="cpu", **EXACT)
    engine.add_gallery(gallery, load_index(index_dir))
    return engine


@pytest.mark.parametrize("gallery, checkpoint, other", [("dress", "fashioniq", "cirr"), ("scenes", "cirr", "fashioniq")])
def test_each_gallery_is_answered_by_its_own_checkpoint(catalog, deployment, gallery, checkpoint, other):
    index_dir = deployment.cache_dir / "indexes" / f"{checkpoint}-{gallery}"
    own, foreign = alone(checkpoint, gallery, index_dir), alone(other, gallery, index_dir)
    for reference in catalog.names(gallery)[:4]:
        for caption in ("is darker", "add a red ball"):
            got = catalog.search(gallery, reference=reference, caption=caption, k=10)
            want = own.search(gallery, reference=reference, caption=caption, k=10)
            assert [(h.name, h.score) for h in got.hits] == [(h.name, h.score) for h in want.hits]
            assert got.lam == want.lam
    # The two checkpoints share the image tower but not the text encoder and Combiner: the
    # other one answers differently, so routing by bundle is what makes the answer right.
    ref = catalog.names(gallery)[0]
    assert foreign.search(gallery, reference=ref, caption="is darker", k=10).lam != \
        catalog.search(gallery, reference=ref, caption="is darker", k=10).lam


def test_catalog_lists_pages_and_serves_only_gallery_names(catalog):
    info = {g.name: g for g in catalog.galleries()}
    assert set(info) == {"dress", "shirt", "scenes"}
    assert info["scenes"].exclude_reference and not info["dress"].exclude_reference
    assert info["dress"].bundle == "fashioniq" and info["scenes"].bundle == "cirr"
    names = catalog.names("dress")
    count = catalog.page("dress", 1, 5).pages
    assert count == -(-len(names) // 5) >= 2
    pages = [catalog.page("dress", p, 5) for p in range(1, count + 1)]
    assert sum((p.names for p in pages), []) == names
    assert catalog.page("dress", 99, 5).page == pages[0].pages  # clamped, not an error
    assert catalog.image_path("dress", names[0]).is_file()
    for bad in ("../../weights/fashioniq.safetensors", "/etc/passwd", names[0] + "/..", 3):
        with pytest.raises(QueryError, match="unknown gallery image name"):
            catalog.image_path("dress", bad)
    with pytest.raises(QueryError, match="unknown gallery 'hats'"):
        catalog.page("hats")
    with pytest.raises(QueryError, match="page must be a whole number"):
        catalog.page("dress", "two")
    roots = catalog.image_roots()
    assert all(any(root in catalog.image_path(g, catalog.names(g)[0]).resolve().parents for root in roots)
               for g in info)


def test_references_captions_and_ground_truth(catalog, deployment):
    ds = load_fashioniq(deployment.world_dir / "fashioniq", "dress", "val")
    triplet = ds.triplets[0]
    rng = random.Random(4)
    picks = {catalog.random_reference("dress", rng=rng) for _ in range(50)}
    assert picks <= {t.reference for t in ds.triplets}  # references with ground truth first
    val_caption = f"{triplet.captions[0].strip('.?, ').capitalize()} and {triplet.captions[1].strip('.?, ')}"
    assert val_caption in catalog.suggestions("dress", triplet.reference)
    known = catalog.search("dress", reference=triplet.reference, caption=val_caption.upper() + " ", k=3)
    assert known.target == triplet.target and known.target_rank >= 1
    # the target's rank, even beyond K, is the rank a plain search reports for it
    full = catalog.search("dress", reference=triplet.reference, caption=val_caption, k=len(ds.image_names))
    assert [h.name for h in full.hits].index(triplet.target) + 1 == known.target_rank
    assert catalog.search("dress", reference=triplet.reference, caption="something else", k=3).target is None


def test_cirr_group_is_ranked_for_a_known_triplet(catalog, deployment):
    ds = load_cirr(deployment.world_dir / "cirr", "val")
    t = ds.triplets[0]
    result = catalog.search("scenes", reference=t.reference, caption=t.captions[0], k=5)
    group = [m for m in t.group if m != t.reference]
    assert sorted(h.name for h in result.subset) == sorted(group)
    full = catalog.search("scenes", reference=t.reference, caption=t.captions[0], k=len(ds.image_names) - 1)
    order = [h.name for h in full.hits]
    assert [h.name for h in result.subset] == sorted(group, key=order.index)  # same scores, same order


def test_rank_split_is_the_eval_code_path(catalog, deployment):
    from cir_demo.eval.protocol import evaluate
    from cir_demo.model import make_composer

    ckpt = load_checkpoint(WEIGHTS_DIR / "fashioniq.safetensors")
    want = evaluate(ckpt.clip, {"combiner": make_composer("combiner", ckpt.combiner)},
                    deployment.world_dir / "fashioniq", categories=["dress"])["combiner"]["dress"]
    ranks = catalog.rank_split("dress")
    assert ranks.summary == pytest.approx(want, abs=1e-9)
    recall10 = 100 * sum(r.rank <= 10 for r in ranks.rows) / len(ranks.rows)
    assert recall10 == pytest.approx(ranks.summary["R@10"])
    for row in ranks.rows[:3]:  # each rank is the one a single query reports
        single = catalog.search("dress", reference=row.reference, caption=row.caption, k=1, target=row.target)
        assert single.target_rank == row.rank


def test_prepared_artifacts_are_reused_only_while_current(catalog, deployment, monkeypatch):
    assert world_is_current(deployment.world_dir, deployment.world) is None
    engine = catalog.engine_for("dress")
    ds = load_fashioniq(deployment.world_dir / "fashioniq", "dress", "val")
    path = deployment.cache_dir / "indexes" / "fashioniq-dress"
    built = []
    import cir_demo.pipeline.indexing as indexing

    real = indexing.index_dataset
    monkeypatch.setattr(indexing, "index_dataset", lambda *a, **k: built.append(1) or real(*a, **k))
    ensure_index(engine, ds, path, progress=False, report=lambda line: None)
    assert built == []  # current: reused
    image = ds.image_path(ds.image_names[0])
    image.write_bytes(image.read_bytes())  # same bytes, new mtime: the files changed as far as we can tell
    ensure_index(engine, ds, path, progress=False, report=lambda line: None)
    assert built == [1]
    cirr_engine = catalog.engine_for("scenes")
    torch.manual_seed(5)
    other = Engine(load_clip("cir-tiny"), None, device="cpu")
    messages = []
    ensure_index(other, ds, path, progress=False, report=messages.append)
    assert built == [1, 1] and "fingerprint" in messages[0]
    assert cirr_engine is not engine


def test_engine_refuses_indexes_it_cannot_serve(tmp_path):
    torch.manual_seed(0)
    clip = load_clip("cir-tiny")
    engine = Engine(clip, None, device="cpu")
    feats = np.random.default_rng(0).standard_normal((4, clip.feature_dim)).astype(np.float32)
    manifest = index_manifest(clip, rebuild_command="python -m cir_demo index --images x --out y")
    save_index(tmp_path / "ok", feats, list("abcd"), manifest)
    engine.add_gallery("ok", load_index(tmp_path / "ok"))
    save_index(tmp_path / "empty", feats, list("abcd"), {**manifest, "model_fingerprint": ""})
    with pytest.raises(IndexMismatchError, match="records no model fingerprint.*rebuild it with: python -m cir_demo"):
        engine.add_gallery("empty", load_index(tmp_path / "empty"))
    save_index(tmp_path / "wide", np.zeros((4, clip.feature_dim + 1), np.float32) + 1, list("abcd"), manifest)
    with pytest.raises(IndexMismatchError, match=f"{clip.feature_dim + 1}-d"):
        engine.add_gallery("wide", load_index(tmp_path / "wide"))
    with pytest.raises(ModelMismatchError, match="Combiner takes 50-dimensional"):
        Engine(clip, Combiner.for_feature_dim(50), device="cpu")


def test_catalog_refuses_duplicates_and_unknowns(catalog, deployment):
    with pytest.raises(ValueError, match="a bundle named 'cirr' is already in the catalog"):
        catalog.add_bundle(Engine(load_clip("cir-tiny"), None, device="cpu", name="cirr"))
    with pytest.raises(ValueError, match="a gallery named 'dress' is already in the catalog"):
        catalog.add_gallery("fashioniq", "dress", load_index(deployment.cache_dir / "indexes" / "fashioniq-dress"))
    with pytest.raises(QueryError, match="unknown gallery"):
        catalog.search("nope", reference="a", caption="b")


def test_concurrent_searches_with_a_tiny_caption_cache(catalog):
    """Gradio answers requests in threads: a 1-entry caption cache must not lose entries mid-query."""
    from concurrent.futures import ThreadPoolExecutor

    ckpt = load_checkpoint(WEIGHTS_DIR / "cirr.safetensors")
    engine = Engine(ckpt.clip, ckpt.combiner, device="cpu", text_cache_size=1, **EXACT)
    engine.galleries = catalog.engine_for("scenes").galleries
    reference = catalog.names("scenes")[0]
    captions = [f"add {n} red balls" for n in range(6)]
    want = {c: [h.name for h in engine.search("scenes", reference=reference, caption=c, k=5).hits] for c in captions}

    def one(i):
        caption = captions[i % len(captions)]
        got = engine.search("scenes", reference=reference, caption=caption, k=5)
        return [h.name for h in got.hits] == want[caption]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, range(8 * 150)))


def test_an_upload_is_decoded_upright_and_bad_bytes_are_refused_without_a_path(catalog):
    import io

    from PIL import Image

    from cir_demo.pipeline.encode import ImageReadError

    rng = np.random.default_rng(4)
    photo = Image.fromarray((rng.random((40, 70, 3)) * 255).astype(np.uint8))
    tagged = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the pixels are stored sideways
    photo.rotate(90, expand=True).save(tagged, "PNG", exif=exif)
    plain = io.BytesIO()
    photo.save(plain, "PNG")
    upright = catalog.encode_upload("dress", plain.getvalue())
    assert torch.allclose(catalog.encode_upload("dress", tagged.getvalue()), upright, atol=1e-5)
    engine = catalog.engine_for("dress")
    assert torch.allclose(upright, engine.image_features(photo).cpu(), atol=1e-6)
    for data, words in [(b"", "empty"), (b"text, not a picture", "not a JPEG, PNG, WebP or GIF"), (plain.getvalue()[:60], "image")]:
        with pytest.raises((QueryError, ImageReadError), match=words) as err:
            catalog.encode_upload("dress", data)
        assert "/" not in str(err.value)
