"""Reading images: bad files give a clear error naming them; odd formats decode."""

import numpy as np
import pytest
from PIL import Image

from cir_demo.pipeline.encode import ImageReadError, open_image


def test_truncated_and_non_image_files_are_named(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(good, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (truncated, text, tmp_path / "missing.png"):
        with pytest.raises(ImageReadError, match=path.name):
            open_image(path)
    assert open_image(good).size == (64, 64)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # 90,000 pixels is "too many" here
    with pytest.raises(ImageReadError, match="big.png"):
        open_image(path)


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    first = open_image(path).convert("RGB")
    assert first.size == (20, 10) and first.getpixel((5, 5))[0] > 200
