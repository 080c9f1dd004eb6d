"""Image preprocessing exactly as the paper: ``targetpad`` (default), ``squarepad`` and ``clip``.

All three end the same way: resize the shorter side to the model's input size (bicubic),
centre-crop, convert to a tensor and normalise with CLIP's mean/std. They differ in the
padding applied first, which keeps wide or tall garments from being cropped away.

Cost is bounded by the image, not by the padding. Padding a 1,000 x 100,000 strip towards aspect
1.25 would make an 80,000 x 100,000 canvas (24 GB) only to shrink it to 224 px, and ``clip`` mode
would first stretch a thin strip to 224 x 224,000. So the padded and resized geometry is computed
first (:class:`Geometry`): every ordinary photo up to ~15 Mpx (a canvas of at most 16 Mpx) takes the
paper's route unchanged -- pad with torchvision, resize with PIL's bicubic, centre-crop -- and
anything larger is first shrunk with ``Image.reduce`` or cut to the part that reaches the crop
(:func:`bounded`), which changes its crop by a little.

Images without pixels (0 x N) or with an aspect ratio above ``MAX_ASPECT`` (1000:1) are refused
with :class:`ImageShapeError`, undecodable or otherwise unusable ones with :class:`ImageReadError`
(both ``ValueError`` s; ``pipeline.encode`` re-exports them).
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from cir_demo.config import CLIP_MEAN, CLIP_STD, PREPROCESS_MODES, TARGETPAD_RATIO

# The paper's route runs as is when the padded canvas it builds has at most DIRECT_MAX_CANVAS
# pixels (48 MB in RGB; no canvas at all when nothing is padded) and the resized image at most
# DIRECT_MAX_RESIZED: every ordinary photo up to ~15 Mpx. Anything else is shrunk first (bounded).
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
    mode: str = "targetpad"
    ratio: float = TARGETPAD_RATIO

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
    return Geometry(width, height, left, top, pw, ph, rw, rh, crop_left, crop_top, size, mode, ratio)


def bounded(image: Image.Image, geo: Geometry) -> Image.Image:
    """An image whose padded canvas and resized size are small, giving about the same crop.

    A canvas too large to build (a 100:1 strip padded towards 1.25:1) is avoided by shrinking the
    image first with ``Image.reduce`` (box filter, an integer factor); a resized image too large
    to build (``clip`` mode on a strip) by first cutting the source to the part that reaches the
    centre crop, with a margin for the bicubic window. Only images far from photos take this route;
    the crop differs from the full route's by a little (tested), at a cost bounded by the image.
    """
    if geo.resized_pixels > DIRECT_MAX_RESIZED and not (geo.left or geo.top):  # padded ones stay near square
        scale = geo.resized_w / geo.padded_w  # both axes scale alike
        margin = 4  # output pixels of bicubic support on each side
        left = max(int((geo.crop_left - margin) / scale), 0)
        top = max(int((geo.crop_top - margin) / scale), 0)
        right = min(int((geo.crop_left + geo.size + margin) / scale) + 1, geo.width)
        bottom = min(int((geo.crop_top + geo.size + margin) / scale) + 1, geo.height)
        image = image.crop((left, top, right, bottom))
    canvas = geometry(*image.size, geo.mode, geo.size, geo.ratio).padded_pixels
    if canvas > DIRECT_MAX_CANVAS:
        factor = int(np.ceil(np.sqrt(canvas / DIRECT_MAX_CANVAS)))
        image = image.reduce(factor)
    return image


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

    def crop(self, image: Image.Image) -> Image.Image:
        """The ``S`` x ``S`` RGB picture the model sees: padded, resized and centre-cropped."""
        image = _rgb(image)
        geo = self.geometry(*image.size)
        canvas = geo.padded_pixels if (geo.left or geo.top) else 0  # pad() copies only when it pads
        if canvas > DIRECT_MAX_CANVAS or geo.resized_pixels > DIRECT_MAX_RESIZED:  # far from a photo
            image = bounded(image, geo)
            geo = self.geometry(*image.size)
        image = pad(image, geo.left, geo.top)  # the paper's route: pad, bicubic resize, centre crop
        image = TF.resize(image, self.image_size, interpolation=TF.InterpolationMode.BICUBIC)
        return TF.center_crop(image, self.image_size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        tensor = TF.to_tensor(self.crop(image))  # (3, S, S) in [0, 1]
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

