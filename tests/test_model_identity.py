"""ClipModel.fingerprint covers what makes image features (architecture, image weights, preprocessing)
and nothing else (the text tower may change under it); identity() summarises it for messages."""

import copy

import open_clip
import pytest
import torch

from cir_demo.model import load_checkpoint, save_checkpoint
from cir_demo.model.clip import ClipModel, model_config_for


def tiny_config(**changes):
    config = model_config_for("cir-tiny")
    config.update(changes)
    return config


def clip_with(config, state=None, preprocess="targetpad", name="cir-tiny"):
    model = open_clip.CLIP(**copy.deepcopy(config)).eval()
    if state is not None:
        model.load_state_dict(state)
    return ClipModel(model, name=name, model_config=config, preprocess=preprocess)


def images(clip, n=3):
    return torch.randn(n, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(7))


@pytest.fixture()
def base():
    torch.manual_seed(11)
    return clip_with(tiny_config())


def test_same_weights_under_gelu_and_quickgelu_differ(base):
    assert base.model_config["quick_gelu"] is True
    gelu = clip_with(tiny_config(quick_gelu=False), base.model.state_dict())
    with torch.no_grad():
        gap = (base.encode_image(images(base)) - gelu.encode_image(images(gelu))).abs().max()
    assert gap > 1e-4  # the architecture alone changes the features...
    assert gelu.fingerprint() != base.fingerprint()  # ...so it changes the identity
    assert gelu.identity()["architecture"] != base.identity()["architecture"]
    twin = clip_with(tiny_config(), base.model.state_dict())
    assert twin.fingerprint() == base.fingerprint()  # same architecture and weights: same identity


def test_vision_cfg_setting_that_keeps_weight_shapes_changes_fingerprint(base):
    pooled = tiny_config(vision_cfg={**tiny_config()["vision_cfg"], "pool_type": "avg"})
    other = clip_with(pooled, base.model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(other.encode_image(images(base)), base.encode_image(images(base)))
    assert other.fingerprint() != base.fingerprint()


def test_spelled_out_defaults_do_not_change_fingerprint(base):
    explicit = tiny_config(vision_cfg={**tiny_config()["vision_cfg"], "mlp_ratio": 4.0, "pool_type": "tok"})
    assert clip_with(explicit, base.model.state_dict()).fingerprint() == base.fingerprint()
    gelu = clip_with(tiny_config(quick_gelu=False), base.model.state_dict())
    implicit = tiny_config()
    del implicit["quick_gelu"]
    assert clip_with(implicit, base.model.state_dict()).fingerprint() == gelu.fingerprint()


def test_text_tower_changes_keep_fingerprint(base):
    before = base.fingerprint()
    with torch.no_grad():
        base.model.token_embedding.weight.add_(1.0)
        for p in base.model.transformer.parameters():
            p.mul_(0.5)
        base.model.text_projection.add_(0.1)
    assert base.fingerprint() == before
    shallow_text = tiny_config(text_cfg={**tiny_config()["text_cfg"], "layers": 1, "context_length": 16})
    other = clip_with(shallow_text)
    other.model.visual.load_state_dict(base.model.visual.state_dict())
    assert other.fingerprint() == before


def test_image_weight_change_after_a_first_call_changes_fingerprint(base):
    before = base.fingerprint()
    with torch.no_grad():
        next(base.model.visual.parameters()).add_(0.01)  # in place, as an optimiser step
    assert base.fingerprint() != before


def test_fp16_storage_keeps_fingerprint(base, tmp_path):
    before = base.fingerprint()
    path = save_checkpoint(tmp_path / "half.safetensors", clip=base, dtype=torch.float16)
    loaded = load_checkpoint(path).clip
    assert loaded.dtype == torch.float32 and loaded.fingerprint() == before
    assert loaded.to("cpu", "fp16").dtype == torch.float16 and loaded.fingerprint() == before
    with torch.inference_mode():
        base.model.double()  # inference tensors: they keep no version counter to cache on
    assert next(base.model.visual.parameters()).is_inference() and base.fingerprint() == before


def test_preprocessing_changes_fingerprint(base):
    before = base.fingerprint()
    squared = clip_with(tiny_config(), base.model.state_dict(), preprocess="squarepad")
    assert squared.fingerprint() != before
    base.preprocess = squared.preprocess  # swapped after a first call, as load_clip(preprocess=...) does
    assert base.fingerprint() == squared.fingerprint()


def test_identity_summarises_the_model(base):
    ident = base.identity()
    assert ident["fingerprint"] == base.fingerprint()
    assert ident["model_name"] == "cir-tiny" and ident["feature_dim"] == 96 and ident["image_size"] == 64
    assert ident["preprocess"] == {"mode": "targetpad", "image_size": 64, "ratio": 1.25}
    assert isinstance(ident["architecture"], str) and len(ident["architecture"]) == 12
    assert "cir-tiny" in base.summary() and base.fingerprint() in base.summary()
