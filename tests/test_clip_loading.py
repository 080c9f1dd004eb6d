"""Loading CLIP through open_clip: tags fail fast offline; files and local dirs load."""

import json
import socket
import time

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from cir_demo.model import WeightsUnavailableError, load_clip
from cir_demo.model.clip import openai_model_name


def test_openai_tag_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_clip("RN50x4", "openai", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "RN50x4-quickgelu" in message and "local weights file" in message and "network" in message


def test_unreachable_network_fails_fast_without_offline_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def refuse(address, timeout=None):
        calls.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="unreachable"):
        load_clip("RN50", "openai", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 5
    assert calls and calls[0][1] <= 5


def test_unknown_tag_lists_known_ones():
    with pytest.raises(WeightsUnavailableError, match="known tags: openai"):
        load_clip("RN50x4", "laion9000")


def test_openai_weights_use_quickgelu_variants():
    assert openai_model_name("RN50") == "RN50-quickgelu"
    assert openai_model_name("RN50x4") == "RN50x4-quickgelu"
    assert openai_model_name("RN50x4-quickgelu") == "RN50x4-quickgelu"


def test_plain_open_clip_weights_file_and_local_dir(tmp_path):
    torch.manual_seed(4)
    reference = open_clip.create_model("cir-tiny").eval()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    weights = tmp_path / "tiny.safetensors"
    save_file(state, str(weights))
    context = open_clip.get_model_config("cir-tiny")["text_cfg"]["context_length"]
    tokens = open_clip.SimpleTokenizer(context_length=context)(["a red dress"])
    with torch.no_grad():
        expected = reference.encode_text(tokens)
        clip = load_clip("cir-tiny", str(weights))
        assert torch.equal(clip.encode_text(["a red dress"]), expected)
        folder = tmp_path / "dir"
        folder.mkdir()
        (folder / "open_clip_config.json").write_text(json.dumps(
            {"model_cfg": open_clip.get_model_config("cir-tiny"), "preprocess_cfg": {}}))
        save_file(state, str(folder / "open_clip_model.safetensors"))
        local = load_clip(f"local-dir:{folder}")
        assert torch.equal(local.encode_text(["a red dress"]), expected)


def test_missing_file_and_unknown_model_are_clear(tmp_path):
    with pytest.raises(Exception, match="not found"):
        load_clip("cir-tiny", str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_clip("RN51")


def test_features_are_raw_and_captions_truncate():
    clip = load_clip("cir-tiny")
    long_caption = "is darker " * 2000
    tokens = clip.tokenize([long_caption, "🙂 مرحبا"])
    assert tokens.shape == (2, clip.context_length) and clip.context_length == 32  # cir-tiny's own context
    assert int(tokens[0].argmax()) == clip.context_length - 1  # cut, with the end token kept last
    with torch.no_grad():
        feats = clip.encode_text(tokens)
    assert feats.shape == (2, clip.feature_dim)
    assert not torch.allclose(feats.norm(dim=-1), torch.ones(2))  # raw, not normalised
