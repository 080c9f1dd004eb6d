"""The Combiner against the paper's formula, written out independently, and the composers."""

import pytest
import torch
import torch.nn.functional as F

from cir_demo.model import Combiner, ModelMismatchError, check_compatible, make_composer
from cir_demo.model.combiner import ModelMismatchError as FromCombiner


def paper_formula(sd, image, text):
    """PAPER.md's combine_features, with explicit matrix products on the state dict (eval mode)."""
    def linear(x, name):
        return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    t = torch.clamp(linear(text, "text_projection_layer"), min=0)
    i = torch.clamp(linear(image, "image_projection_layer"), min=0)
    raw = torch.cat([t, i], dim=-1)
    h = torch.clamp(linear(raw, "combiner_layer"), min=0)
    lam = 1 / (1 + torch.exp(-linear(torch.clamp(linear(raw, "dynamic_scalar.0"), min=0), "dynamic_scalar.3")))
    out = linear(h, "output_layer") + lam * text + (1 - lam) * image
    return out / out.norm(dim=-1, keepdim=True), lam


def test_combiner_matches_paper_formula_in_eval_mode():
    combiner = Combiner(16, 64, 128).eval()
    for p in combiner.parameters():  # random, non-default weights so every term matters
        torch.nn.init.normal_(p, std=0.2)
    image, text = torch.randn(5, 16, dtype=torch.float64), torch.randn(5, 16, dtype=torch.float64)
    sd = {k: v.double() for k, v in combiner.state_dict().items()}
    expected, expected_lam = paper_formula(sd, image, text)
    combiner.double()
    got, lam = combiner.combine_with_lambda(image, text)
    assert torch.allclose(got, expected, atol=1e-12)
    assert torch.allclose(lam, expected_lam, atol=1e-12)
    assert torch.allclose(combiner.combine_features(image, text), expected, atol=1e-12)
    assert 0 < lam.min() and lam.max() < 1


def test_forward_gives_scaled_logits_against_normalised_targets():
    combiner = Combiner(8, 32, 64).eval()
    image, text, target = torch.randn(4, 8), torch.randn(4, 8), torch.randn(6, 8)
    logits = combiner(image, text, target)
    expected = 100 * combiner.combine_features(image, text) @ F.normalize(target, dim=-1).T
    assert logits.shape == (4, 6)
    assert torch.allclose(logits, expected, atol=1e-4)
    assert "logit_scale" not in combiner.state_dict()


def test_dropout_is_active_in_train_mode_only():
    combiner = Combiner(8, 32, 64)
    image, text = torch.randn(3, 8), torch.randn(3, 8)
    combiner.train()
    assert not torch.allclose(combiner.combine_features(image, text), combiner.combine_features(image, text))
    combiner.eval()
    assert torch.equal(combiner.combine_features(image, text), combiner.combine_features(image, text))


def test_parameter_count_and_official_names():
    combiner = Combiner(640, 2560, 5120)
    assert sum(p.numel() for p in combiner.parameters()) == 59_003_521
    assert set(combiner.state_dict()) == {
        f"{layer}.{kind}" for layer in ("text_projection_layer", "image_projection_layer", "combiner_layer",
                                        "output_layer", "dynamic_scalar.0", "dynamic_scalar.3")
        for kind in ("weight", "bias")}
    assert Combiner.for_feature_dim(1024).dims() == {"clip_feature_dim": 1024, "projection_dim": 4096,
                                                    "hidden_dim": 8192}


def test_constructor_validates():
    with pytest.raises(ValueError, match="projection_dim"):
        Combiner(8, 0, 16)


def test_composers_follow_their_definitions():
    image, text = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.allclose(make_composer("sum")(image, text), (image + text) / (image + text).norm(dim=-1, keepdim=True))
    assert torch.allclose(make_composer("image")(image, text), image / image.norm(dim=-1, keepdim=True))
    assert torch.allclose(make_composer("text")(image, text), text / text.norm(dim=-1, keepdim=True))
    combiner = Combiner(8, 32, 64).eval()
    composition = make_composer("combiner", combiner).compose(image, text)
    assert composition.lam.shape == (3, 1)
    assert torch.allclose(composition.features, combiner.combine_features(image, text))
    assert make_composer("sum").compose(image, text).lam is None
    with pytest.raises(ValueError, match="trained Combiner"):
        make_composer("combiner")
    with pytest.raises(ValueError, match="unknown composer"):
        make_composer("product")


class FakeClip:
    name = "cir-tiny"
    feature_dim = 96


def test_check_compatible_names_both_widths():
    check_compatible(FakeClip(), Combiner.for_feature_dim(96))  # fits: no error
    check_compatible(FakeClip(), None)  # no Combiner: nothing to check
    with pytest.raises(ModelMismatchError) as info:
        check_compatible(FakeClip(), Combiner(640, 16, 16))
    message = str(info.value)
    assert "640" in message and "96" in message and "cir-tiny" in message
    assert isinstance(info.value, ValueError) and ModelMismatchError is FromCombiner
