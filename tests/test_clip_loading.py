"""Loading CLIP through open_clip: tags fail fast offline; files and local dirs load; each model gets
the tokenizer its config names, never downloaded offline, with a bounded BPE memo."""

import json
import socket
import time

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from cir_demo.model import ClipModel, WeightsUnavailableError, load_checkpoint, load_clip, save_checkpoint
from cir_demo.model import tokenizers as tokenizers_module
from cir_demo.model.clip import model_config_for, openai_model_name
from cir_demo.model.tokenizers import make_tokenizer


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


# ---- tokenizers: the one the config names, never a download offline, a bounded BPE memo ----------

TEXTS = ["A Red-Dress, with DOTS!!", "is_darker & has 'orange' lettering...", "🙂 مرحبا"]


def canonical_config():
    config = model_config_for("cir-tiny")
    config["text_cfg"]["tokenizer_kwargs"] = {"clean": "canonicalize"}
    return config


def test_config_tokenizer_kwargs_are_honoured(tmp_path):
    (tmp_path / "cir-test-canonical.json").write_text(json.dumps(canonical_config()))
    open_clip.add_model_config(tmp_path)
    expected = open_clip.get_tokenizer("cir-test-canonical")(TEXTS)
    clip = load_clip("cir-test-canonical")
    assert torch.equal(clip.tokenize(TEXTS), expected)
    assert not torch.equal(expected, open_clip.SimpleTokenizer(context_length=32)(TEXTS))  # the kwarg matters
    # Rebuilt from our checkpoint under a name open_clip does not know: the config alone decides.
    model = open_clip.CLIP(**canonical_config())
    custom = ClipModel(model, name="unregistered-canonical", model_config=canonical_config())
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c.safetensors", clip=custom)).clip
    reference = open_clip.SimpleTokenizer(context_length=32, clean="canonicalize")
    assert torch.equal(loaded.tokenize(TEXTS), reference(TEXTS))


@pytest.mark.parametrize("name", ["RN50", "cir-tiny", "ViT-B-32"])
def test_default_models_keep_openai_bpe(name):
    config = model_config_for(name)
    context = config["text_cfg"].get("context_length", 77)
    got = make_tokenizer(name, config)(TEXTS)
    assert torch.equal(got, open_clip.get_tokenizer(name)(TEXTS))
    assert torch.equal(got, open_clip.SimpleTokenizer(context_length=context)(TEXTS))


@pytest.mark.parametrize("name", ["ViT-L-14-worldwide", "ViT-L-14-CLIPA", "ViT-B-16-SigLIP"])
def test_models_with_downloaded_tokenizers_fail_fast_offline(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(tokenizers_module, "_has_transformers", lambda: True)  # reach the offline check
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE"):
        make_tokenizer(name, model_config_for(name))
    assert time.monotonic() - start < 5


def test_hf_tokenizer_without_transformers_or_network_is_clear(monkeypatch):
    config = model_config_for("ViT-L-14-worldwide")
    monkeypatch.setattr(tokenizers_module, "_has_transformers", lambda: False)
    with pytest.raises(WeightsUnavailableError, match="transformers"):
        make_tokenizer("ViT-L-14-worldwide", config)
    monkeypatch.setattr(tokenizers_module, "_has_transformers", lambda: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(address, timeout=None):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(WeightsUnavailableError, match="unreachable"):
        make_tokenizer("ViT-L-14-worldwide", config)


def test_model_with_unavailable_tokenizer_still_encodes_images():
    config = model_config_for("cir-tiny")
    config["text_cfg"]["hf_tokenizer_name"] = "google/mt5-base"  # not cached here, never downloaded
    clip = ClipModel(open_clip.CLIP(**config), name="tiny-mt5", model_config=config)
    with torch.no_grad():
        assert clip.encode_image(torch.zeros(1, 3, 64, 64)).shape == (1, 96)
    with pytest.raises(WeightsUnavailableError, match="google/mt5-base"):
        clip.tokenize(["a red dress"])


def unique_captions(count, words=12, seed=0):
    rng = torch.Generator().manual_seed(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"

    def word():
        n = int(torch.randint(4, 11, (1,), generator=rng))
        return "".join(letters[i] for i in torch.randint(0, 26, (n,), generator=rng).tolist())

    return [" ".join(word() for _ in range(words)) for _ in range(count)]


def test_bpe_memo_stays_bounded_and_ids_stay_exact(monkeypatch):
    monkeypatch.setattr(tokenizers_module, "BPE_CACHE_SIZE", 200)
    config = model_config_for("cir-tiny")
    config["text_cfg"]["context_length"] = 64  # room for every word of a caption: all BPEs are compared
    clip = ClipModel(open_clip.CLIP(**config), name="tiny-64", model_config=config)
    reference = open_clip.SimpleTokenizer(context_length=64)  # open_clip's own, unbounded memo
    captions = unique_captions(300) + ["<start_of_text> x " + "y" * 1000, "<end_of_text> again"]
    for _ in range(2):  # the second pass meets evicted and kept words alike
        assert torch.equal(clip.tokenize(captions), reference(captions))
    assert len(reference.cache) > 3000  # what the unbounded memo grew to
    assert len(clip.tokenizer.cache) <= 200
    assert {"<start_of_text>", "<end_of_text>"} <= set(clip.tokenizer.cache)  # special tokens pinned
