"""Image preprocessing exactly as the paper: ``targetpad`` (default), ``squarepad`` and ``clip``.

All three end the same way: resize the shorter side to the model's input size (bicubic),
centre-crop, convert to a tensor and normalise with CLIP's mean/std. They differ in the
padding applied first, which keeps wide or tall garments from being cropped away.

Cost is bounded by the output, not by the padding. Padding a 1 x 100,000 image towards aspect
1.25 would make an 80,000 x 100,000 canvas (24 GB) only to shrink it to 224 px, and ``clip`` mode
would first stretch it to 224 x 22,400,000. So the padded and resized geometry is computed
arithmetically (:class:`Geometry`), and:

* when the padded canvas and the resized image are small (every ordinary photo up to ~15 Mpx:
  a canvas of at most 16 Mpx), the original route runs unchanged -- pad with torchvision, resize
  with PIL's bicubic, centre-crop;
* otherwise :func:`resample_crop` computes the same crop directly from the unpadded pixels. It
  reproduces Pillow's two-pass bicubic resampling (its coefficients, 22-bit fixed point and
  8-bit rounding between the passes) for the output pixels that are kept only, and lets the
  black padding contribute its zeros without being allocated. Its output equals the padded
  route's pixel for pixel (checked in the tests on many sizes); its cost grows with the input
  and the output, never with the padding.

Images without pixels (0 x N) or with an aspect ratio above ``MAX_ASPECT`` (1000:1) are refused
with :class:`ImageShapeError`, undecodable or otherwise unusable ones with :class:`ImageReadError`
(both ``ValueError`` s; ``pipeline.encode`` re-exports them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from cir_demo.config import CLIP_MEAN, CLIP_STD, PREPROCESS_MODES, TARGETPAD_RATIO

# The padded route (the original code) runs when the padded canvas it builds has at most
# DIRECT_MAX_CANVAS pixels (64 MB; no canvas at all when nothing is padded) and the resized image
# at most DIRECT_MAX_RESIZED: every ordinary photo up to ~15 Mpx. Anything else goes through
# resample_crop, which gives the same pixels without either.
DIRECT_MAX_CANVAS = 1 << 24
DIRECT_MAX_RESIZED = 1 << 22
# Longer side / shorter side beyond which an image is refused (a 1 x 100,000 strip is no photo).
# Below it every size is handled, at a cost bounded by the image and the output (see above).
MAX_ASPECT = 1000


class ImageReadError(ValueError):
    """An image cannot be used (undecodable, truncated, a decompression bomb, no pixels); the
    message names it and says why."""


class ImageShapeError(ImageReadError):
    """An image whose size cannot be preprocessed (it has no pixels)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an RGB copy of any PIL image: palette, alpha, CMYK, 16-bit, greyscale.

    Transparent pixels are composited on white (how a product photo with alpha is seen),
    16-bit images are scaled to 8 bits rather than clipped, animated images use frame 0.
    """
    if getattr(image, "is_animated", False):
        image.seek(0)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if arr.size and arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / scale * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB") if image.mode != "RGB" else image


def check_size(width: int, height: int) -> None:
    """Refuse an image without pixels, or one more than ``MAX_ASPECT`` times longer than wide
    (``ImageShapeError``): no photo is, and it would be all padding."""
    if width <= 0 or height <= 0:
        raise ImageShapeError(f"the image has no pixels ({width} x {height})")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageShapeError(f"the image is {width} x {height} pixels: an aspect ratio above {MAX_ASPECT}:1 "
                              f"is not a photo")


def targetpad_amounts(width: int, height: int, ratio: float = TARGETPAD_RATIO) -> tuple[int, int]:
    """Horizontal and vertical padding (each side) that ``targetpad`` adds; (0, 0) if none.

    Mirrors the paper: leave the image when ``max/min < ratio``; otherwise pad towards
    aspect ``ratio`` with ``s = max(w, h) / ratio`` and ``int((s - side) / 2)`` per side.
    """
    check_size(width, height)
    if max(width, height) / min(width, height) < ratio:
        return 0, 0
    scaled = max(width, height) / ratio
    return max(int((scaled - width) / 2), 0), max(int((scaled - height) / 2), 0)


def squarepad_amounts(width: int, height: int) -> tuple[int, int]:
    """Horizontal and vertical padding (each side) that makes the image square."""
    check_size(width, height)
    side = max(width, height)
    return int((side - width) / 2), int((side - height) / 2)


def pad(image: Image.Image, horizontal: int, vertical: int) -> Image.Image:
    """Pad with black: ``horizontal`` pixels left and right, ``vertical`` top and bottom."""
    if horizontal == 0 and vertical == 0:
        return image
    return TF.pad(image, [horizontal, vertical, horizontal, vertical], fill=0, padding_mode="constant")


@dataclass(frozen=True)
class Geometry:
    """Where one image goes: padded canvas, resized canvas and the centre crop, in pixels.

    The image sits at (``left``, ``top``) of a ``padded_w`` x ``padded_h`` black canvas, which is
    resized to ``resized_w`` x ``resized_h`` (shorter side = ``size``, as torchvision computes it)
    and cropped to ``size`` x ``size`` at (``crop_left``, ``crop_top``).
    """

    width: int
    height: int
    left: int
    top: int
    padded_w: int
    padded_h: int
    resized_w: int
    resized_h: int
    crop_left: int
    crop_top: int
    size: int

    @property
    def padded_pixels(self) -> int:
        return self.padded_w * self.padded_h

    @property
    def resized_pixels(self) -> int:
        return self.resized_w * self.resized_h


def geometry(width: int, height: int, mode: str, size: int, ratio: float = TARGETPAD_RATIO) -> Geometry:
    """The :class:`Geometry` of a ``width`` x ``height`` image, computed without touching pixels."""
    if mode == "targetpad":
        left, top = targetpad_amounts(width, height, ratio)
    elif mode == "squarepad":
        left, top = squarepad_amounts(width, height)
    else:
        check_size(width, height)
        left, top = 0, 0
    pw, ph = width + 2 * left, height + 2 * top
    # torchvision's _compute_resized_output_size for an int size, with its float arithmetic
    short, long = (pw, ph) if pw <= ph else (ph, pw)
    new_long = int(size * long / short)
    rw, rh = (size, new_long) if pw <= ph else (new_long, size)
    # torchvision's center_crop (the resized image is never smaller than the crop)
    crop_top, crop_left = round((rh - size) / 2.0), round((rw - size) / 2.0)  # half to even, as there
    return Geometry(width, height, left, top, pw, ph, rw, rh, crop_left, crop_top, size)


# ---- Pillow's bicubic resampling, restricted to the kept outputs ---------------------------
_PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2
_HALF = 1 << (_PRECISION_BITS - 1)


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic kernel (a = -0.5), evaluated with the same double operations."""
    x = np.abs(x)
    out = np.zeros_like(x)
    near, far = x < 1.0, (x >= 1.0) & (x < 2.0)
    xn, xf = x[near], x[far]
    out[near] = ((-0.5 + 2.0) * xn - (-0.5 + 3.0)) * xn * xn + 1
    out[far] = (((xf - 5) * xf + 8) * xf - 4) * -0.5
    return out


class _Axis:
    """Pillow's bicubic resampling along one axis of a resize ``in_size`` -> ``out_size``
    (``precompute_coeffs`` and ``normalize_coeffs_8bpc`` of its Resample.c), one output at a time.

    ``[lo, hi)`` is the span of input holding the image; the rest is black padding, so an output
    whose window misses that span is exactly 0 and needs no weights.
    """

    def __init__(self, in_size: int, out_size: int, lo: int, hi: int):
        self.in_size, self.lo, self.hi = in_size, lo, hi
        self.scale = float(np.float32(in_size)) / out_size  # Pillow passes the box as C floats
        self.filterscale = max(self.scale, 1.0)
        self.support = 2.0 * self.filterscale

    def window(self, xx: int) -> tuple[int, int, float]:
        """First and end input index read by output ``xx``, and its centre."""
        center = (xx + 0.5) * self.scale
        return (max(int(center - self.support + 0.5), 0),
                min(int(center + self.support + 0.5), self.in_size), center)

    def live(self, xx: int) -> bool:
        xmin, xmax, _ = self.window(xx)
        return xmin < min(xmax, self.hi) and xmax > self.lo

    def weights(self, xx: int) -> tuple[int, np.ndarray]:
        """(first input index, fixed-point int64 weights) of output ``xx``, as Pillow computes them."""
        xmin, xmax, center = self.window(xx)
        w = _bicubic((np.arange(xmin, xmax, dtype=np.float64) - center + 0.5) * (1.0 / self.filterscale))
        total = np.cumsum(w)[-1]  # Pillow sums in order; np.sum would pair up terms
        if total != 0.0:
            w = w / total
        w = w * float(1 << _PRECISION_BITS)
        return xmin, np.where(w < 0, np.trunc(w - 0.5), np.trunc(w + 0.5))


def _clip8(acc: np.ndarray) -> np.ndarray:
    """Pillow's clip8: the fixed-point sum shifted down to 8 bits and clamped to 0..255."""
    return np.clip(acc.astype(np.int64) >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def resample_crop(image: Image.Image, geo: Geometry) -> np.ndarray:
    """The ``size`` x ``size`` x 3 uint8 crop of the padded, bicubic-resized RGB ``image``.

    Equals ``center_crop(resize(pad(image)))`` (Pillow's BICUBIC, 8-bit) without building the
    padded or the resized image. Memory: the rows of ``image`` that reach the crop, ``size``
    columns of each, and one resampling window at a time; time: those rows times the windows.
    Weights and pixels are integers and Pillow's sums stay below 2**31, so the float64 (BLAS)
    products and sums here are exact.
    """
    s = geo.size
    h_axis = _Axis(geo.padded_w, geo.resized_w, geo.left, geo.left + geo.width)
    v_axis = _Axis(geo.padded_h, geo.resized_h, geo.top, geo.top + geo.height)
    cols = [j for j in range(s) if h_axis.live(geo.crop_left + j)]
    rows = [i for i in range(s) if v_axis.live(geo.crop_top + i)]
    out = np.zeros((s, s, 3), np.uint8)
    if not cols or not rows:
        return out
    # the image rows that some kept output row reads
    r0 = max(v_axis.window(geo.crop_top + rows[0])[0] - geo.top, 0)
    r1 = min(v_axis.window(geo.crop_top + rows[-1])[1] - geo.top, geo.height)
    # horizontal pass: those rows, live columns only, rounded to 8 bits as Pillow does in between
    temp = np.zeros((r1 - r0, len(cols), 3), np.uint8)  # the other columns are exactly 0
    t = 0
    while t < len(cols):
        group = [h_axis.weights(geo.crop_left + cols[t])]
        while t + len(group) < len(cols) and len(group) < 16:  # neighbours share most of a window
            xmin, k = h_axis.weights(geo.crop_left + cols[t + len(group)])
            if (xmin + len(k) - group[0][0]) * (len(group) + 1) > (1 << 20):
                break
            group.append((xmin, k))
        a = max(group[0][0], geo.left)
        b = min(max(xmin + len(k) for xmin, k in group), geo.left + geo.width)
        band = np.zeros((b - a, len(group)))  # (n, g): the group's weights on image columns a..b
        for g, (xmin, k) in enumerate(group):
            lo, hi = max(xmin, a), min(xmin + len(k), b)
            band[lo - a:hi - a, g] = k[lo - xmin:hi - xmin]
        step = max(1, (1 << 20) // (3 * (b - a)))  # bounds the float64 temporaries to ~8 MB
        for y in range(r0, r1, step):  # read the image band by band: no full copy of it
            y1 = min(y + step, r1)
            block = np.asarray(image.crop((a - geo.left, y, b - geo.left, y1)))  # (R, n, 3) uint8
            acc = block.transpose(0, 2, 1).astype(np.float64) @ band  # (R, 3, g)
            temp[y - r0:y1 - r0, t:t + len(group)] = _clip8(acc.transpose(0, 2, 1) + _HALF)
        t += len(group)
    # vertical pass over the live columns
    first, last = geo.top + r0, geo.top + r1
    for i in rows:
        ymin, k = v_axis.weights(geo.crop_top + i)
        a, b = max(ymin, first), min(ymin + len(k), last)
        block = temp[a - first:b - first].astype(np.float64)  # (n, live, 3)
        out[i, cols] = _clip8(np.tensordot(k[a - ymin:b - ymin], block, axes=([0], [0])) + _HALF)
    return out


class Preprocess:
    """PIL image -> normalised (3, S, S) float tensor, for one mode and input size ``S``."""

    def __init__(self, mode: str = "targetpad", image_size: int = 224, ratio: float = TARGETPAD_RATIO):
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing {mode!r}; choose one of {', '.join(PREPROCESS_MODES)}")
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.mode, self.image_size, self.ratio = mode, int(image_size), float(ratio)

    def geometry(self, width: int, height: int) -> Geometry:
        """Padding, resize and crop of a ``width`` x ``height`` image (``ImageShapeError`` if empty)."""
        return geometry(width, height, self.mode, self.image_size, self.ratio)

    def padded(self, image: Image.Image) -> Image.Image:
        """The RGB image after this mode's padding, before resizing (for inspection).

        This builds the whole padded canvas, so it refuses one that would be over 4x the image
        and 16 Mpx; ``__call__`` never builds it.
        """
        image = _rgb(image)
        geo = self.geometry(*image.size)
        if geo.padded_pixels > max(4 * geo.width * geo.height, 1 << 24):
            raise ImageShapeError(f"padding a {geo.width} x {geo.height} image would make a "
                                  f"{geo.padded_w} x {geo.padded_h} canvas")
        return pad(image, geo.left, geo.top)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = _rgb(image)
        geo = self.geometry(*image.size)
        canvas = geo.padded_pixels if (geo.left or geo.top) else 0  # pad() copies only when it pads
        if canvas <= DIRECT_MAX_CANVAS and geo.resized_pixels <= DIRECT_MAX_RESIZED:
            image = pad(image, geo.left, geo.top)
            image = TF.resize(image, self.image_size, interpolation=TF.InterpolationMode.BICUBIC)
            image = TF.center_crop(image, self.image_size)
        else:
            image = Image.fromarray(resample_crop(image, geo))  # (S, S, 3) uint8: RGB
        tensor = TF.to_tensor(image)  # (3, S, S) in [0, 1]
        return TF.normalize(tensor, CLIP_MEAN, CLIP_STD)

    def describe(self) -> dict:
        """JSON-able description, stored in checkpoints and index manifests."""
        out = {"mode": self.mode, "image_size": self.image_size}
        if self.mode == "targetpad":
            out["ratio"] = self.ratio
        return out

    def __repr__(self) -> str:
        return f"Preprocess(mode={self.mode!r}, image_size={self.image_size}, ratio={self.ratio})"


def _rgb(image) -> Image.Image:
    """``to_rgb`` for preprocessing: anything that is not a usable PIL image is an ``ImageReadError``."""
    if not isinstance(image, Image.Image):
        raise ImageReadError(f"expected a PIL image, got {type(image).__name__}")
    check_size(*image.size)
    try:
        image.load()  # decodes a lazily opened image: a truncated file fails here, not in a resize
        return to_rgb(image)
    except Exception as err:  # OSError, SyntaxError, ValueError, MemoryError... from the decoder or convert()
        raise ImageReadError(f"cannot decode the image ({type(err).__name__}: {err})") from None


def make_preprocess(mode: str = "targetpad", image_size: int = 224, ratio: float = TARGETPAD_RATIO) -> Callable:
    """The preprocessing callable for ``mode`` at the model's input size."""
    return Preprocess(mode, image_size, ratio)
