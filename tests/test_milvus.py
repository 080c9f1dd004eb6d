"""Galleries in Milvus (Milvus Lite, started by the test itself from a local file: no mock): the
same answers as the exact in-process search on the same vectors, through the engine and a
deployment, and written by the index command."""

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from cir_demo.index import Gallery  # noqa: E402
from cir_demo.index.milvus import MilvusGallery, write_collection  # noqa: E402
from cir_demo.index.store import GalleryIndex  # noqa: E402

N, D = 3000, 96


@pytest.fixture(scope="module")
def vectors():
    g = torch.Generator().manual_seed(3)
    raw = (torch.randn(N, D, generator=g) * 0.5 + torch.randn(1, D, generator=g) * 0.3).half()  # clustered
    names = [f"shelf-{i % 7}/item {i:05d}.jpg" for i in range(N)]
    names[11] = 'it\'s "quoted".jpg'
    queries = torch.nn.functional.normalize(raw[:25].float() + 0.4 * torch.randn(25, D, generator=g), dim=-1)
    return raw, names, queries


@pytest.fixture(scope="module")
def milvus_gallery(vectors, tmp_path_factory):
    raw, names, _ = vectors
    uri = str(tmp_path_factory.mktemp("milvus") / "gallery.db")
    write_collection(uri, "items", raw, names, {"model_fingerprint": "fp-test", "image_root": "/x"})
    return MilvusGallery(uri, "items")


def test_top_k_equals_the_exact_in_process_search(vectors, milvus_gallery):
    raw, names, queries = vectors
    local = Gallery(raw, names, device="cpu")
    for k in (1, 20, 50):
        got_scores, got_rows = milvus_gallery.topk(queries, k)
        want_scores, want_rows = local.topk(queries, k)
        assert torch.equal(got_rows, want_rows), k
        assert torch.allclose(got_scores, want_scores, atol=2e-5)
    exclude = want_rows[:, 0]  # leave each query's best row out, as CIRR leaves the reference out
    got_scores, got_rows = milvus_gallery.topk(queries, 10, exclude_rows=exclude)
    want_scores, want_rows = local.topk(queries, 10, exclude_rows=exclude)
    assert torch.equal(got_rows, want_rows) and not (got_rows == exclude[:, None]).any()


def test_names_rows_and_stored_features(vectors, milvus_gallery):
    raw, names, queries = vectors
    assert len(milvus_gallery) == N and milvus_gallery.dim == D and milvus_gallery.fingerprint == "fp-test"
    assert milvus_gallery.names[11] == names[11] and milvus_gallery.row_of[names[11]] == 11
    assert milvus_gallery.names[100:104] == names[100:104]
    assert names[42] in milvus_gallery.row_of and "missing.jpg" not in milvus_gallery.row_of
    assert milvus_gallery.row_of.get(["not", "a", "name"]) is None
    rows = torch.tensor([5, 11, 2999])
    assert torch.equal(milvus_gallery.raw_features(rows), raw[rows])
    local = Gallery(raw, names, device="cpu")
    assert torch.allclose(milvus_gallery.scores_of(queries[:3], rows), local.scores_of(queries[:3], rows), atol=2e-5)
    got, want = milvus_gallery.subset_ranking(queries[0], rows), local.subset_ranking(queries[0], rows)
    assert torch.equal(got[0], want[0])
    with pytest.raises(KeyError, match="unknown gallery image name"):
        milvus_gallery.rows_of(["missing.jpg"])


def test_the_engine_serves_a_milvus_gallery_as_it_serves_an_index(vectors, milvus_gallery):
    from cir_demo.model import load_checkpoint
    from cir_demo.serve.engine import Engine

    from cir_demo.config import WEIGHTS_DIR

    raw, names, _ = vectors
    ckpt = load_checkpoint(WEIGHTS_DIR / "fashioniq.safetensors")
    engine = Engine(ckpt.clip, ckpt.combiner, device="cpu", text_precision="fp32", compose_precision="fp32")
    milvus_gallery.manifest["model_fingerprint"] = ckpt.clip.fingerprint()  # stand-in features of this model
    engine.add_gallery("milvus", milvus_gallery)
    engine.add_gallery("local", GalleryIndex(raw, names, {"model_fingerprint": ckpt.clip.fingerprint()}))
    for reference in (names[3], names[11]):
        a = engine.search("milvus", reference=reference, caption="is darker", k=15)
        b = engine.search("local", reference=reference, caption="is darker", k=15)
        assert [h.name for h in a.hits] == [h.name for h in b.hits]
        assert [h.score for h in a.hits] == pytest.approx([h.score for h in b.hits], abs=2e-5)


def photos(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng(i)
        pixels = np.clip(rng.normal(rng.integers(0, 256, 3), 25, (70, 56, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i:02d}.jpg")


def test_a_deployment_serves_a_folder_from_milvus(tmp_path):
    from cir_demo.serve.deploy import parse_config
    from cir_demo.serve.prepare import load_deployment

    folder = tmp_path / "photos"
    photos(folder, 12)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    config = {"cache_dir": str(tmp_path / "cache"), "bundles": [
        {"name": "fiq", "clip": "{project}/weights/fashioniq.safetensors",
         "combiner": "{project}/weights/fashioniq.safetensors",
         "galleries": [{"name": "mine", "images": str(folder), "milvus": "milvus/mine.db"},
                       {"name": "local", "images": str(folder)}]}]}
    deployment = parse_config(config, base=tmp_path)
    assert deployment.bundles[0].galleries[0].milvus == str(tmp_path / "milvus" / "mine.db")
    lines = []
    first = load_deployment(deployment, device="cpu", progress=False, report=lines.append,
                            text_precision="fp32", compose_precision="fp32")
    assert any("wrote 12 images (1 unreadable skipped)" in line for line in lines)
    a = first.search("mine", reference="p03.jpg", caption="is brighter", k=8)
    b = first.search("local", reference="p03.jpg", caption="is brighter", k=8)
    assert [h.name for h in a.hits] == [h.name for h in b.hits]
    assert first.image_path("mine", "p03.jpg") == folder.resolve() / "p03.jpg"
    lines.clear()
    again = load_deployment(deployment, device="cpu", progress=False, report=lines.append,
                            text_precision="fp32", compose_precision="fp32")
    assert any("12 images in Milvus" in line for line in lines)  # reused, not rewritten
    assert again.page("mine", 1, 5).names == sorted(p.name for p in folder.glob("p*.jpg"))[:5]


def test_the_index_command_writes_a_milvus_collection(tmp_path):
    from cir_demo.commands import index as command
    from cir_demo.config import WEIGHTS_DIR
    from cir_demo.model import load_checkpoint

    folder = tmp_path / "photos"
    photos(folder, 9)
    uri = str(tmp_path / "cli.db")
    args = argparse.Namespace(data=None, images=str(folder), split="val", category=None, out=None, milvus=uri,
                              collection="cli", milvus_index="FLAT", clip=str(WEIGHTS_DIR / "fashioniq.safetensors"),
                              clip_model="RN50x4", device="cpu", batch_size=4, num_workers=0, no_progress=True)
    assert command.run(args) == 0
    gallery = MilvusGallery(uri, "cli")
    clip = load_checkpoint(WEIGHTS_DIR / "fashioniq.safetensors").clip
    assert len(gallery) == 9 and gallery.fingerprint == clip.fingerprint()
    assert sorted(gallery.names[0:9]) == sorted(p.name for p in folder.glob("*.jpg"))
