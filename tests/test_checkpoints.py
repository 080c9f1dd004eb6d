"""Checkpoints: ours round-trips, official CLIP4Cir files load, arbitrary pickles and malformed metadata are refused."""

import json
import os
import pickle

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from cir_demo.model import (
    CheckpointError,
    Combiner,
    ModelMismatchError,
    load_checkpoint,
    load_clip,
    read_checkpoint_config,
    save_checkpoint,
)
from cir_demo.model.checkpoint import FORMAT, METADATA_KEY
from cir_demo.model.clip import ClipModel, model_config_for


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(1)
    return load_clip("cir-tiny")


def _images(clip, n=2):
    return torch.randn(n, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(3))


CAPTIONS = ["is darker and has orange lettering", "has long sleeves"]


def test_official_combiner_file_reproduces_outputs(tmp_path):
    combiner = Combiner(32, 128, 256).eval()
    path = tmp_path / "combiner.pt"
    torch.save({"epoch": 7, "Combiner": combiner.state_dict()}, path)
    loaded = load_checkpoint(path).combiner
    image, text = torch.randn(4, 32), torch.randn(4, 32)
    assert loaded.dims() == combiner.dims()
    assert not loaded.training
    assert torch.equal(loaded.combine_features(image, text), combiner.combine_features(image, text))


def test_official_clip_file_loads_into_quickgelu_rn50(tmp_path):
    torch.manual_seed(2)
    original = open_clip.create_model("RN50-quickgelu").eval()
    path = tmp_path / "tuned_clip.pt"
    torch.save({"epoch": 3, "CLIP": original.state_dict()}, path)
    ckpt = load_checkpoint(path)  # the architecture is read off the state dict
    assert ckpt.clip.name == "RN50-quickgelu" and ckpt.config["provenance"]["epoch"] == 3
    images = torch.randn(2, 3, 224, 224)
    tokens = ckpt.clip.tokenize(CAPTIONS)
    with torch.no_grad():
        assert torch.equal(ckpt.clip.encode_image(images), original.encode_image(images))
        assert torch.equal(ckpt.clip.encode_text(tokens), original.encode_text(tokens))
    # The same file through load_clip(pretrained=file), asking for the plain name: QuickGELU is chosen.
    clip = load_clip("RN50", str(path))
    assert clip.name == "RN50-quickgelu"
    with torch.no_grad():
        assert torch.equal(clip.encode_text(CAPTIONS), original.encode_text(tokens))


def test_our_checkpoint_round_trips(tmp_path, tiny_clip):
    combiner = Combiner.for_feature_dim(tiny_clip.feature_dim).eval()
    path = save_checkpoint(tmp_path / "both.safetensors", clip=tiny_clip, combiner=combiner,
                           provenance={"stage": 2, "epoch": 4, "metrics": {"R@10": 12.5}})
    config = read_checkpoint_config(path)
    assert config["clip"]["model_name"] == "cir-tiny" and config["provenance"]["metrics"]["R@10"] == 12.5
    assert config["clip"]["model_config"] == model_config_for("cir-tiny")
    ckpt = load_checkpoint(path)
    images = _images(tiny_clip)
    with torch.no_grad():
        assert torch.equal(ckpt.clip.encode_image(images), tiny_clip.encode_image(images))
        assert torch.equal(ckpt.clip.encode_text(CAPTIONS), tiny_clip.encode_text(CAPTIONS))
        x, t = torch.randn(3, tiny_clip.feature_dim), torch.randn(3, tiny_clip.feature_dim)
        assert torch.equal(ckpt.combiner.combine_features(x, t), combiner.combine_features(x, t))
    assert ckpt.clip.fingerprint() == tiny_clip.fingerprint()
    assert [p.name for p in tmp_path.iterdir()] == ["both.safetensors"]  # no temporary left behind


def test_fp16_storage_loads_back_close(tmp_path, tiny_clip):
    path = save_checkpoint(tmp_path / "half.safetensors", clip=tiny_clip, dtype=torch.float16)
    clip = load_clip("ignored-name", str(path))
    assert clip.dtype == torch.float32 and clip.name == "cir-tiny"
    images = _images(tiny_clip)
    with torch.no_grad():
        assert torch.allclose(clip.encode_image(images), tiny_clip.encode_image(images), atol=2e-2)
    assert os.path.getsize(path) < 0.6 * sum(p.numel() * 4 for p in tiny_clip.model.parameters())


def test_checkpoint_rebuilds_an_unregistered_architecture(tmp_path):
    config = model_config_for("cir-tiny")
    config["text_cfg"]["layers"] = 1  # not any registered config: must rebuild from the file alone
    model = open_clip.CLIP(**config)
    clip = ClipModel(model, name="my-custom", model_config=config, preprocess="squarepad")
    path = save_checkpoint(tmp_path / "custom.safetensors", clip=clip)
    loaded = load_checkpoint(path).clip
    assert loaded.name == "my-custom" and loaded.preprocess.mode == "squarepad"
    assert len(loaded.model.transformer.resblocks) == 1


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/cir_demo_pwned",))


def test_arbitrary_pickle_is_refused_and_not_executed(tmp_path):
    if os.path.exists("/tmp/cir_demo_pwned"):
        os.unlink("/tmp/cir_demo_pwned")
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"epoch": 1, "Combiner": Payload()}, handle)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/cir_demo_pwned")


class Custom:
    pass


def test_torch_saved_custom_object_is_refused(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"epoch": 1, "Combiner": Combiner(4, 8, 8).state_dict(), "extra": Custom()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)


def test_wrong_content_gives_clear_errors(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not an official CLIP4Cir checkpoint"):
        load_checkpoint(path)
    mismatch = tmp_path / "mismatch.pt"
    bad = Combiner(8, 16, 32).state_dict()
    bad["output_layer.weight"] = torch.zeros(3, 3)
    torch.save({"Combiner": bad}, mismatch)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(mismatch)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(garbage)


def test_failed_write_leaves_previous_file_intact(tmp_path, tiny_clip, monkeypatch):
    path = save_checkpoint(tmp_path / "c.safetensors", combiner=Combiner(4, 8, 8))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("cir_demo.model.checkpoint.save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, combiner=Combiner(4, 8, 8))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


# ---- malformed metadata and declared-versus-stored shapes --------------------------------------


def write_ours(path, metadata_text, tensors=None):
    tensors = tensors if tensors is not None else {"combiner." + k: v.contiguous()
                                                   for k, v in Combiner(2, 2, 2).state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: metadata_text})
    return path


def meta(**config):
    return json.dumps({"format": FORMAT, "provenance": {}, **config})


TINY_COMBINER = {"clip_feature_dim": 2, "projection_dim": 2, "hidden_dim": 2}


@pytest.mark.parametrize("text, problem", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object, found list"),
    (meta(clip={"model_name": "cir-tiny"}), "model_config"),
    (meta(clip=["cir-tiny"]), "'clip' must be an object"),
    (meta(combiner={**TINY_COMBINER, "dropout_rate": 0.5}), "dropout_rate"),
    (meta(combiner={"clip_feature_dim": 2, "projection_dim": 2}), "hidden_dim"),
    (meta(combiner={**TINY_COMBINER, "hidden_dim": "2"}), "positive integers"),
    (meta(provenance="yesterday"), "provenance"),
])
def test_malformed_metadata_is_a_checkpoint_error(tmp_path, text, problem):
    path = write_ours(tmp_path / "bad.safetensors", text)
    for load in (read_checkpoint_config, load_checkpoint):
        with pytest.raises(CheckpointError, match=problem):
            load(path)


def test_unbuildable_clip_config_is_a_checkpoint_error(tmp_path, tiny_clip):
    spec = tiny_clip.describe()
    spec["model_config"] = {**spec["model_config"], "not_an_open_clip_argument": 1}
    tensors = {"clip." + k: v.contiguous() for k, v in tiny_clip.model.state_dict().items()}
    path = write_ours(tmp_path / "odd.safetensors", meta(clip=spec), tensors)
    with pytest.raises(CheckpointError, match="cannot be built.*not_an_open_clip_argument"):
        load_checkpoint(path)


def test_small_file_declaring_a_huge_combiner_is_refused_before_allocating(tmp_path):
    huge = {"clip_feature_dim": 10 ** 7, "projection_dim": 4 * 10 ** 7, "hidden_dim": 8 * 10 ** 7}
    path = write_ours(tmp_path / "huge.safetensors", meta(combiner=huge))
    assert path.stat().st_size < 2000
    expected = r"do not fit the declared.*combiner_layer.weight: stored \[2, 4\], declared \[80000000, 80000000\]"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)


def test_declared_clip_shapes_must_match_stored_ones(tmp_path, tiny_clip):
    spec = tiny_clip.describe()
    spec["model_config"] = {**spec["model_config"], "embed_dim": 10 ** 12}  # petabytes if allocated
    tensors = {"clip." + k: v.contiguous() for k, v in tiny_clip.model.state_dict().items()}
    path = write_ours(tmp_path / "wide.safetensors", meta(clip=spec), tensors)
    with pytest.raises(CheckpointError, match="CLIP tensors do not fit the declared architecture"):
        load_checkpoint(path)
    deep = tiny_clip.describe()
    deep["model_config"] = {**deep["model_config"], "text_cfg": {**deep["model_config"]["text_cfg"], "layers": 200}}
    path = write_ours(tmp_path / "deep.safetensors", meta(clip=deep), tensors)
    with pytest.raises(CheckpointError, match="declares 204 layers but the file stores only 110"):
        load_checkpoint(path)
    grid = tiny_clip.describe()  # a grid tower of a million blocks is refused before any is built
    grid["model_config"] = {**grid["model_config"], "conv_tower": {"widths": [4] * 10 ** 6}}
    path = write_ours(tmp_path / "grid.safetensors", meta(clip=grid), tensors)
    with pytest.raises(CheckpointError, match="declares 1000008 layers"):
        load_checkpoint(path)


def test_a_bundle_whose_combiner_does_not_fit_its_clip_is_refused(tmp_path, tiny_clip):
    wrong = Combiner(640, 16, 16)
    with pytest.raises(ModelMismatchError, match="640.*96"):
        save_checkpoint(tmp_path / "never.safetensors", clip=tiny_clip, combiner=wrong)
    assert not (tmp_path / "never.safetensors").exists()
    tensors = {"clip." + k: v.contiguous() for k, v in tiny_clip.model.state_dict().items()}
    tensors.update({"combiner." + k: v.contiguous() for k, v in wrong.state_dict().items()})
    path = write_ours(tmp_path / "mixed.safetensors", meta(clip=tiny_clip.describe(), combiner=wrong.dims()), tensors)
    with pytest.raises(CheckpointError, match="640.*96"):
        load_checkpoint(path)
