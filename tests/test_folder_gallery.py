"""Your own images as a gallery: indexed incrementally (new, changed and removed files), unreadable
files skipped, nothing outside the folder indexed or served, and served end to end."""

import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cir_demo.model import load_clip
from cir_demo.pipeline.folders import folder_files, update_folder_index
from cir_demo.serve.checks import QueryError
from cir_demo.serve.deploy import ConfigError, parse_config, read_config
from cir_demo.serve.prepare import load_deployment


def photo(path, seed: int, size=(48, 60), fmt=None):
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, 3)
    pixels = np.clip(rng.normal(colour, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, fmt)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "catalogue"
    for i in range(6):
        photo(root / f"item-{i}.jpg", i)
    photo(root / "shoes" / "red pair.png", 10)
    (root / "notes.jpg").write_text("not an image, only a jpg name")
    photo(root / ".hidden.jpg", 11)
    secret = photo(tmp_path / "outside" / "secret.jpg", 12)
    (root / "link-out.jpg").symlink_to(secret)
    return root


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip("cir-tiny")


def test_the_listing_keeps_the_folders_own_images_only(folder):
    names = list(folder_files(folder))
    assert names == sorted(names) and "shoes/red pair.png" in names and "notes.jpg" in names
    assert not any(n.startswith(".") or "link-out" in n for n in names)


def test_a_folder_is_indexed_incrementally(folder, clip, tmp_path):
    out = tmp_path / "index"
    first = update_folder_index(clip, folder, out, progress=False)
    assert (first.encoded, first.kept, first.removed, first.skipped) == (7, 0, 0, ["notes.jpg"])
    assert first.index.count == 7 and "shoes/red pair.png" in first.index.names
    before = {n: first.index.features[first.index.row_of[n]].clone() for n in first.index.names}
    # add two, change one, remove one
    photo(folder / "item-6.jpg", 20)
    photo(folder / "new" / "item-7.png", 21)
    time.sleep(0.01)
    photo(folder / "item-1.jpg", 99, size=(50, 61))  # other bytes, other size
    os.remove(folder / "item-2.jpg")
    second = update_folder_index(clip, folder, out, progress=False)
    assert (second.kept, second.encoded, second.removed) == (5, 3, 1), second.summary()
    names = second.index.names
    assert "item-2.jpg" not in names and {"item-6.jpg", "new/item-7.png", "item-1.jpg"} <= set(names)
    for name in ("item-0.jpg", "item-3.jpg", "shoes/red pair.png"):  # reused, not re-encoded
        assert torch.equal(second.index.features[second.index.row_of[name]], before[name])
    assert not torch.equal(second.index.features[second.index.row_of["item-1.jpg"]], before["item-1.jpg"])
    # every row equals a fresh encoding of its file
    fresh = update_folder_index(clip, folder, tmp_path / "fresh", progress=False)
    assert fresh.index.names == names
    assert torch.allclose(fresh.index.features.float(), second.index.features.float(), atol=2e-3)
    # nothing changed: nothing encoded; another model: everything encoded again
    assert update_folder_index(clip, folder, out, progress=False).encoded == 0
    torch.manual_seed(5)
    other = load_clip("cir-tiny")
    assert update_folder_index(other, folder, out, progress=False).encoded == len(names)


def test_a_folder_without_images_is_refused(tmp_path, clip):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no usable images"):
        update_folder_index(clip, tmp_path / "empty", tmp_path / "out", progress=False)


def folder_deployment(folder, cache):
    return parse_config({"cache_dir": str(cache), "bundles": [
        {"name": "fiq", "clip": "{project}/weights/fashioniq.safetensors",
         "combiner": "{project}/weights/fashioniq.safetensors",
         "galleries": [{"name": "mine", "images": str(folder), "label": "my catalogue"}]}]})


def test_a_folder_gallery_is_served_with_its_names_only(folder, tmp_path):
    catalog = load_deployment(folder_deployment(folder, tmp_path / "cache"), device="cpu", progress=False,
                              text_precision="fp32", compose_precision="fp32")
    info = catalog.info("mine")
    assert (info.dataset, info.triplets, info.count, info.label, info.exclude_reference) == (None, 0, 7, "my catalogue",
                                                                                         False)
    result = catalog.search("mine", reference="shoes/red pair.png", caption="is blue", k=5)
    assert len(result.hits) == 5 and result.target is None and result.subset == []
    assert catalog.image_path("mine", "shoes/red pair.png") == folder.resolve() / "shoes" / "red pair.png"
    for name in ("../outside/secret.jpg", "link-out.jpg", "notes.jpg", str(folder / "item-0.jpg")):
        with pytest.raises(QueryError, match="unknown gallery image name"):
            catalog.image_path("mine", name)
    assert catalog.image_roots() == [folder.resolve()]
    with pytest.raises(QueryError, match="no known triplets"):
        catalog.rank_split("mine")
    assert catalog.curated("mine") is None and catalog.random_reference("mine") in catalog.names("mine")


def test_config_and_command_line_folders(folder, tmp_path):
    with pytest.raises(ConfigError, match="exactly one of data"):
        parse_config({"bundles": [{"name": "b", "clip": "x.safetensors",
                                   "galleries": [{"name": "g", "data": "d", "images": "i"}]}]})
    deployment = read_config(None).with_folder(str(folder), bundle="cirr")
    assert deployment.bundles[0].name == "cirr" and deployment.bundles[0].galleries[0].name == "catalogue"
    assert deployment.bundles[0].galleries[0].images == str(folder.resolve())
    with pytest.raises(ConfigError, match="not a bundle"):
        read_config(None).with_folder(str(folder), bundle="nope")
    with pytest.raises(ConfigError, match="not a folder"):
        read_config(None).with_folder(str(tmp_path / "missing"))


@pytest.mark.slow
def test_a_folder_gallery_through_the_api(folder_app, http_status):
    from gradio_client import Client

    _, catalog, base, root = folder_app
    client = Client(base, verbose=False)
    galleries = client.predict(api_name="/galleries")
    assert galleries[0]["name"] == "my-photos" and galleries[0]["count"] == 9 and galleries[0]["triplets"] == 0
    pick = client.predict("my-photos", api_name="/random_reference")
    assert pick["captions"] == [] and pick["reference"] in catalog.names("my-photos")
    out = client.predict("my-photos", pick["reference"], "is brighter", 5, "combiner", api_name="/search")
    assert len(out["hits"]) == 5 and out["target"] is None
    from urllib.parse import quote

    assert http_status(f"{base}gradio_api/file={quote(str(root / 'p0.jpg'))}") == 200
    assert http_status(f"{base}gradio_api/file={quote(str(root.parent / 'outside.txt'))}") in (403, 404)
