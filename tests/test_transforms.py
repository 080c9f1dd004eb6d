"""Preprocessing against hand-computed padding."""

import numpy as np
import pytest
import torch
from PIL import Image

from cir_demo.config import CLIP_MEAN, CLIP_STD
from cir_demo.data.transforms import Preprocess, squarepad_amounts, targetpad_amounts, to_rgb


@pytest.mark.parametrize("size, expected", [
    ((101, 37), (0, 21)),    # s = 101 / 1.25 = 80.8 -> int((80.8 - 37) / 2) = 21 top and bottom
    ((37, 101), (21, 0)),    # the transpose pads left and right
    ((45, 40), (0, 0)),      # 45 / 40 = 1.125 < 1.25: left alone
    ((125, 100), (0, 0)),    # exactly 1.25 is padded, but to its own size: int((100 - 100) / 2) = 0
    ((301, 99), (0, 70)),    # s = 240.8 -> int(70.9) = 70
])
def test_targetpad_amounts_hand_computed(size, expected):
    assert targetpad_amounts(*size) == expected


def test_squarepad_amounts():
    assert squarepad_amounts(101, 37) == (0, 32)
    assert squarepad_amounts(37, 100) == (31, 0)


def test_targetpad_places_the_image_and_pads_black():
    image = Image.new("RGB", (101, 37), (200, 100, 50))
    padded = Preprocess("targetpad", 64).padded(image)
    assert padded.size == (101, 37 + 2 * 21)
    arr = np.asarray(padded)
    assert (arr[:21] == 0).all() and (arr[21 + 37:] == 0).all()
    assert (arr[21:21 + 37] == (200, 100, 50)).all()


def test_full_pipeline_matches_manual_resize_crop_normalise():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (37, 101, 3), dtype=np.uint8))
    out = Preprocess("targetpad", 64)(image)
    # By hand: pad 21 rows top/bottom -> 101 x 79; resize shorter side 79 -> 64 (width int(101*64/79)=81);
    # centre crop 64 from 81 -> left offset round((81-64)/2) = 8 (torchvision rounds half to even: 8.5 -> 8).
    padded = Image.new("RGB", (101, 79))
    padded.paste(image, (0, 21))
    resized = padded.resize((81, 64), Image.BICUBIC)
    crop = np.asarray(resized, dtype=np.float32)[:, 8:72] / 255.0
    expected = (torch.from_numpy(crop).permute(2, 0, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) \
        / torch.tensor(CLIP_STD)[:, None, None]
    assert out.shape == (3, 64, 64)
    assert torch.allclose(out, expected, atol=0.05)  # PIL vs torchvision bicubic differ by rounding only
    assert (out - expected).abs().mean() < 0.01


def test_clip_mode_crops_instead_of_padding():
    image = Image.new("RGB", (200, 50), (255, 255, 255))
    assert Preprocess("clip", 32).padded(image).size == (200, 50)
    assert Preprocess("squarepad", 32).padded(image).size == (200, 200)
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(Preprocess("clip", 32)(image)[:, 16, 16], white, atol=1e-4)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "I;16", "1"])
def test_any_pil_mode_becomes_rgb(mode):
    image = Image.new("RGB", (20, 30), (10, 200, 30)).convert(mode)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (20, 30)
    assert Preprocess("targetpad", 16)(image).shape == (3, 16, 16)


def test_alpha_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(image)).min() == 255


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="targetpad"):
        Preprocess("stretch", 224)
