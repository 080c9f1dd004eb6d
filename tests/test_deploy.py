"""Deployment configs: validated before anything loads, every error naming its key; hub files offline."""

import pytest

from cir_demo.config import PROJECT_DIR
from cir_demo.model import WeightsUnavailableError
from cir_demo.serve.deploy import BUILTIN_CONFIG, ConfigError, parse_config, read_config
from cir_demo.serve.prepare import resolve_source

GOOD = {
    "title": "t",
    "world": {"seed": 3, "size": "tiny", "splits": ["val"]},
    "bundles": [{"name": "fiq", "clip": "{project}/weights/fashioniq.safetensors",
                 "galleries": [{"name": "dress", "data": "{world}/fashioniq", "category": "dress"}]}],
}


def with_(path, value):
    """A copy of GOOD with one key (a dotted path with list indexes) replaced, or removed for None."""
    import copy

    data = copy.deepcopy(GOOD)
    *parents, last = path
    node = data
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return data


def test_builtin_config_is_valid_and_serves_four_galleries():
    deployment = read_config(BUILTIN_CONFIG)
    assert deployment.gallery_names() == ["dress", "shirt", "toptee", "scenes"]
    assert [b.name for b in deployment.bundles] == ["fashioniq", "cirr"]
    fiq, cirr = deployment.bundles
    assert fiq.clip == str(PROJECT_DIR / "weights" / "fashioniq.safetensors") == fiq.combiner
    assert cirr.clip == str(PROJECT_DIR / "weights" / "cirr.safetensors")
    assert deployment.world.splits == ("val",)
    assert fiq.galleries[0].data == str(deployment.world_dir / "fashioniq")
    assert fiq.galleries[0].index == str(deployment.cache_dir / "indexes" / "fashioniq-dress")


def test_real_example_config_parses():
    deployment = read_config(PROJECT_DIR / "cir_demo" / "serve" / "configs" / "real_rn50x4.toml")
    assert deployment.world is None
    assert {b.clip_model for b in deployment.bundles} == {"RN50x4"}
    assert all(b.clip.endswith(".pt") for b in deployment.bundles)


def test_paths_resolve_against_the_config_folder_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIR_DEMO_CACHE", str(tmp_path / "cache"))
    data = with_(("bundles", 0, "galleries", 0, "index"), "idx/dress")
    deployment = parse_config(data, base=tmp_path / "conf")
    gallery = deployment.bundles[0].galleries[0]
    assert gallery.index == str(tmp_path / "conf" / "idx" / "dress")
    assert gallery.data == str(tmp_path / "cache" / "world" / "fashioniq")
    assert deployment.world.seed == 3 and deployment.world.size == "tiny"


@pytest.mark.parametrize("path, value, key", [
    (("bundles",), [], "bundles"),
    (("bundles", 0, "clip"), None, "bundles[0].clip is required"),
    (("bundles", 0, "clip"), 5, "bundles[0].clip must be a string"),
    (("bundles", 0, "galleries", 0, "split"), "dev", "bundles[0].galleries[0].split must be one of"),
    (("bundles", 0, "galleries", 0, "colour"), "red", "bundles[0].galleries[0].colour is not a known key"),
    (("bundles", 0, "galleries", 0, "name"), "../x", "bundles[0].galleries[0].name must be letters"),
    (("bundles", 0, "preprocess"), "stretch", "bundles[0].preprocess must be one of"),
    (("world", "size"), "huge", "world.size must be one of"),
    (("world", "seed"), "zero", "world.seed must be an integer"),
    (("world", "splits"), ["val", "later"], "world.splits must be"),
    (("extra",), 1, "extra is not a known key"),
])
def test_each_error_names_its_key(path, value, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_config(with_(path, value), source="cfg.toml")


def test_duplicate_gallery_names_and_world_placeholder_without_world():
    data = with_(("bundles", 0, "galleries"), [GOOD["bundles"][0]["galleries"][0]] * 2)
    with pytest.raises(ConfigError, match="'dress' appears more than once"):
        parse_config(data)
    with pytest.raises(ConfigError, match=r"uses \{world\} but the config has no \[world\] table"):
        parse_config(with_(("world",), None))


def test_bad_toml_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[bundles]\nname = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        read_config(tmp_path / "missing.toml")


def test_hub_sources_stay_as_written_and_fail_fast_offline(tmp_path, monkeypatch):
    data = with_(("bundles", 0, "clip"), "hf://someone/cir-weights/tuned_clip.pt")
    spec = parse_config(data).bundles[0]
    assert spec.clip == "hf://someone/cir-weights/tuned_clip.pt"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="cannot fetch hf://someone/cir-weights/tuned_clip.pt"):
        resolve_source(spec.clip, tmp_path)
    with pytest.raises(WeightsUnavailableError, match="hf://owner/repo/path"):
        resolve_source("hf://just-a-repo", tmp_path)
    assert resolve_source("openai", tmp_path) == "openai"


def test_a_relative_cache_dir_is_taken_from_the_config_folder(tmp_path):
    data = {**GOOD, "cache_dir": "mycache"}
    deployment = parse_config(data, base=tmp_path / "cfg")
    assert deployment.cache_dir == tmp_path / "cfg" / "mycache"
    assert deployment.world_dir == tmp_path / "cfg" / "mycache" / "world"
    assert deployment.bundles[0].galleries[0].data == str(tmp_path / "cfg" / "mycache" / "world" / "fashioniq")
