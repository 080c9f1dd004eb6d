"""The app's own cache heals: a deleted or changed world file, an emptied manifest or features
zeroed in place are rebuilt on the next start (never a crash loop, never served); an index a user
provides outside the cache that fails its content check is refused with the way to rebuild it."""

import json

import pytest

from cir_demo.index import IndexFormatError
from cir_demo.serve.deploy import parse_config
from cir_demo.serve.prepare import load_deployment

FAST = {"progress": False, "device": "cpu", "text_precision": "fp32", "compose_precision": "fp32"}


def deployment(tmp_path, index=None):
    gallery = {"name": "dress", "data": "{world}/fashioniq", "category": "dress"}
    if index:
        gallery["index"] = str(index)
    return parse_config({"cache_dir": str(tmp_path / "cache"), "world": {"seed": 3, "size": "tiny"},
                         "bundles": [{"name": "fiq", "clip": "{project}/weights/fashioniq.safetensors",
                                      "combiner": "{project}/weights/fashioniq.safetensors",
                                      "galleries": [gallery]}]})


def answer(catalog):
    names = catalog.names("dress")
    return [h.name for h in catalog.search("dress", reference=names[1], caption="is darker", k=8).hits]


def zero_inside(file, count: int = 2048) -> None:
    """Overwrite ``count`` bytes after the safetensors header with zeros; the size stays the same."""
    data = bytearray(file.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    count = min(count, len(data) - start)
    data[start:start + count] = bytes(count)
    file.write_bytes(bytes(data))


def test_a_damaged_cache_is_rebuilt_on_the_next_start(tmp_path):
    dep = deployment(tmp_path)
    first = load_deployment(dep, **FAST)
    want = answer(first)
    image = first.image_path("dress", first.names("dress")[2])
    index = tmp_path / "cache" / "indexes" / "fiq-dress"
    assert (index / "manifest.json").is_file()

    image.unlink()  # a gallery image gone: the world is redrawn, not a DatasetError on every start
    again = load_deployment(dep, **FAST)
    assert image.is_file() and answer(again) == want

    (index / "manifest.json").write_text("")  # an emptied manifest: rebuilt, not "refusing to overwrite"
    assert answer(load_deployment(dep, **FAST)) == want

    zero_inside(index / "features.safetensors")  # zeroed rows, size unchanged: rebuilt, never served
    healed = load_deployment(dep, **FAST)
    assert answer(healed) == want
    assert healed.engine_for("dress").galleries["dress"].gallery.raw_features([0]).abs().sum() > 0

    captions = next((tmp_path / "cache" / "world" / "fashioniq" / "captions").glob("*.json"))
    captions.write_text(json.dumps([]))  # a world file altered in place
    assert answer(load_deployment(dep, **FAST)) == want
    assert json.loads(captions.read_text()) != []


def test_a_damaged_index_outside_the_cache_is_refused_with_its_rebuild_command(tmp_path):
    mine = tmp_path / "my-indexes" / "dress"
    dep = deployment(tmp_path, index=mine)
    load_deployment(dep, **FAST)  # a missing index is built where the config says
    zero_inside(mine / "features.safetensors")
    with pytest.raises(IndexFormatError) as err:
        load_deployment(dep, **FAST)
    message = str(err.value)
    assert str(mine) in message and "rebuild" in message and "content no longer matches" in message
    assert (mine / "manifest.json").is_file()  # the user's folder is left as it is
