"""Issue 10's bad-input battery through the library's public image path.

Every file goes through ``open_image`` then ``encode_pil_images`` with the tiny registered model
(random weights). Each case states its outcome: it works (features (1, D), finite), or it raises
``ImageReadError`` -- ``ImageShapeError`` where the size is the problem -- with a message naming
the file and the reason. Nothing else may escape.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cir_demo.pipeline.encode import (
    ImageReadError,
    ImageShapeError,
    encode_image_files,
    encode_pil_images,
    open_image,
)


@pytest.fixture(scope="module")
def clip():
    from cir_demo.model import load_clip

    return load_clip("cir-tiny")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2, rows: bytes = b"") -> bytes:
    """A PNG written by hand: any header size, with ``rows`` (filter byte + pixels each) as data."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows))
            + _chunk(b"IEND", b""))


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _photo(size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _rgba() -> Image.Image:
    arr = np.zeros((30, 20, 4), np.uint8)
    arr[..., 0], arr[10:20, 5:15, 3] = 200, 255  # a red square on a transparent field
    return Image.fromarray(arr, "RGBA")


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (20, 30), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (5, 5, 15, 25))
    return _save(image, "PNG", transparency=0)


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (20, 30), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _rgb16() -> bytes:
    rows = b"".join(b"\x00" + np.full((16, 3), 40000, ">u2").tobytes() for _ in range(8))
    return png_bytes(16, 8, bit_depth=16, colour_type=2, rows=rows)


OK = "ok"
CASES = {
    # name: (file bytes, expected outcome: OK, or (error type, words the message must hold))
    "non_image.png": (lambda: b"hello, I am plain text and not a picture", (ImageReadError, "not an image in a format")),
    "zero_bytes.jpg": (lambda: b"", (ImageReadError, "not an image in a format")),
    "truncated.png": (lambda: _save(_photo(), "PNG")[:120], (ImageReadError, "cannot read image")),
    "truncated.jpg": (lambda: _save(_photo(), "JPEG")[:400], (ImageReadError, "cannot read image")),
    "header_0x0.png": (lambda: png_bytes(0, 0), (ImageReadError, "not an image in a format")),
    "bad_header.ppm": (lambda: b"P6\n" + b"1" * 300 + b" 2\n255\n", (ImageReadError, "Token too long")),
    "thin_1x100000.png": (lambda: _save(Image.new("RGB", (1, 100_000)), "PNG"), (ImageShapeError, "1 x 100000")),
    "wide_100000x1.png": (lambda: _save(Image.new("RGB", (100_000, 1)), "PNG"), (ImageShapeError, "100000 x 1")),
    "bomb_30000x30000.png": (lambda: png_bytes(30_000, 30_000), (ImageReadError, "decompression bomb")),
    "bomb_10000x10000.png": (lambda: png_bytes(10_000, 10_000), (ImageReadError, "decompression bomb")),
    "cmyk.jpg": (lambda: _save(Image.new("CMYK", (40, 30), (10, 200, 30, 5)), "JPEG"), OK),
    "grey16.png": (lambda: _save(Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50), "PNG"), OK),
    "rgb16.png": (_rgb16, OK),
    "palette_transparency.png": (_palette_with_transparency, OK),
    "rgba.png": (lambda: _save(_rgba(), "PNG"), OK),
    "grey_alpha.png": (lambda: _save(_rgba().convert("LA"), "PNG"), OK),
    "bilevel.png": (lambda: _save(_photo().convert("1"), "PNG"), OK),
    "animated.gif": (lambda: _animated("GIF"), OK),
    "animated.webp": (lambda: _animated("WEBP"), OK),
    "lab.tiff": (lambda: _save(Image.new("LAB", (20, 30), (50, 10, 10)), "TIFF"), OK),
    "float.tiff": (lambda: _save(Image.fromarray(np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30)), "TIFF"),
                   OK),
    "one_pixel.png": (lambda: _save(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), OK),
    "aspect_1000.png": (lambda: _save(Image.new("RGB", (3, 3000), (9, 99, 199)), "PNG"), OK),
    "photo.jpg": (lambda: _save(_photo((640, 480)), "JPEG"), OK),
}


def _outcome(run) -> object:
    """``run()``'s features, or the library error it raised; anything else fails the test."""
    try:
        return run()
    except ImageReadError as err:
        return err
    except Exception as err:  # pragma: no cover - what the battery exists to catch
        pytest.fail(f"{type(err).__name__} escaped: {err}")


@pytest.mark.parametrize("name", list(CASES))
def test_file_upload(name, clip, tmp_path):
    make, expected = CASES[name]
    path = tmp_path / name
    path.write_bytes(make())
    for source in (path, str(path), io.BytesIO(path.read_bytes())):
        result = _outcome(lambda source=source: encode_pil_images(clip, [open_image(source)]))
        if expected == OK:
            assert isinstance(result, torch.Tensor), f"{name}: {result}"
            assert result.shape == (1, clip.feature_dim) and bool(torch.isfinite(result).all())
        else:
            kind, words = expected
            assert isinstance(result, kind), f"{name}: expected {kind.__name__}, got {result!r}"
            message = str(result)
            assert words in message and "\n" not in message, message
            if not isinstance(source, io.BytesIO):
                assert name in message  # the file is named


def test_transparent_pixels_are_white_and_animations_use_frame_one(tmp_path):
    path = tmp_path / "rgba.png"
    path.write_bytes(CASES["rgba.png"][0]())
    from cir_demo.data.transforms import to_rgb

    rgb = np.asarray(to_rgb(open_image(path)))
    assert (rgb[0, 0] == 255).all() and tuple(rgb[15, 10]) == (200, 0, 0)
    path = tmp_path / "animated.webp"
    path.write_bytes(CASES["animated.webp"][0]())
    assert to_rgb(open_image(path)).getpixel((5, 5))[0] > 200  # the red first frame


@pytest.mark.parametrize("image, kind, words", [
    (Image.new("RGB", (0, 0)), ImageShapeError, "no pixels"),  # was ZeroDivisionError
    (Image.new("RGB", (0, 7)), ImageShapeError, "no pixels"),
    (Image.new("L", (1, 100_000)), ImageShapeError, "aspect ratio"),  # was a ~24 GB canvas
    (None, ImageReadError, "expected a PIL image"),
    (np.zeros((8, 8, 3), np.uint8), ImageReadError, "expected a PIL image"),
    ("photo.jpg", ImageReadError, "expected a PIL image"),
])
def test_in_memory_upload(image, kind, words, clip):
    result = _outcome(lambda: encode_pil_images(clip, [image]))
    assert isinstance(result, kind) and words in str(result), result


def test_lazily_opened_truncated_file_fails_as_ours(tmp_path, clip):
    """An image opened but not decoded (how a caller may hand one over) fails inside preprocessing."""
    path = tmp_path / "cut.png"
    path.write_bytes(_save(_photo(), "PNG")[:200])
    lazy = Image.open(path)
    result = _outcome(lambda: encode_pil_images(clip, [lazy]))
    assert isinstance(result, ImageReadError) and "cannot decode the image" in str(result)
    assert isinstance(_outcome(lambda: encode_pil_images(clip, [])), ImageReadError)


@pytest.mark.parametrize("workers", [0, 1])
def test_indexing_path_names_the_bad_file(tmp_path, clip, workers):
    paths = []
    for name in ("photo.jpg", "cmyk.jpg", "thin_1x100000.png", "animated.gif"):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(CASES[name][0]())
    result = _outcome(lambda: encode_image_files(clip, paths, batch_size=2, num_workers=workers))
    assert isinstance(result, ImageShapeError) and "thin_1x100000.png" in str(result), result
    assert "Traceback" not in str(result)
    good = encode_image_files(clip, [p for p in paths if "thin" not in p.name], batch_size=2, num_workers=workers)
    assert good.shape == (3, clip.feature_dim) and bool(torch.isfinite(good).all())


def test_every_case_decodes_to_what_it_claims(tmp_path):
    """The battery's files are what their names say (so the cases above test what they claim)."""
    checks = {"cmyk.jpg": "CMYK", "grey16.png": "I;16", "palette_transparency.png": "P", "rgba.png": "RGBA",
              "grey_alpha.png": "LA", "bilevel.png": "1", "lab.tiff": "LAB", "float.tiff": "F"}
    for name, mode in checks.items():
        with Image.open(io.BytesIO(CASES[name][0]())) as image:
            assert image.mode == mode, name
    for name in ("animated.gif", "animated.webp"):
        with Image.open(io.BytesIO(CASES[name][0]())) as image:
            assert image.is_animated and image.n_frames == 3
    with Image.open(io.BytesIO(_rgb16())) as image:
        assert image.size == (16, 8)  # Pillow reads 16-bit RGB as 8-bit RGB
