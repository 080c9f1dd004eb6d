"""Image preprocessing exactly as the paper: ``targetpad`` (default), ``squarepad`` and ``clip``.

All three end the same way: resize the shorter side to the model's input size (bicubic),
centre-crop, convert to a tensor and normalise with CLIP's mean/std. They differ in the
padding applied first, which keeps wide or tall garments from being cropped away.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from cir_demo.config import CLIP_MEAN, CLIP_STD, PREPROCESS_MODES, TARGETPAD_RATIO


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


def targetpad_amounts(width: int, height: int, ratio: float = TARGETPAD_RATIO) -> tuple[int, int]:
    """Horizontal and vertical padding (each side) that ``targetpad`` adds; (0, 0) if none.

    Mirrors the paper: leave the image when ``max/min < ratio``; otherwise pad towards
    aspect ``ratio`` with ``s = max(w, h) / ratio`` and ``int((s - side) / 2)`` per side.
    """
    if max(width, height) / min(width, height) < ratio:
        return 0, 0
    scaled = max(width, height) / ratio
    return max(int((scaled - width) / 2), 0), max(int((scaled - height) / 2), 0)


def squarepad_amounts(width: int, height: int) -> tuple[int, int]:
    """Horizontal and vertical padding (each side) that makes the image square."""
    side = max(width, height)
    return int((side - width) / 2), int((side - height) / 2)


def pad(image: Image.Image, horizontal: int, vertical: int) -> Image.Image:
    """Pad with black: ``horizontal`` pixels left and right, ``vertical`` top and bottom."""
    if horizontal == 0 and vertical == 0:
        return image
    return TF.pad(image, [horizontal, vertical, horizontal, vertical], fill=0, padding_mode="constant")


class Preprocess:
    """PIL image -> normalised (3, S, S) float tensor, for one mode and input size ``S``."""

    def __init__(self, mode: str = "targetpad", image_size: int = 224, ratio: float = TARGETPAD_RATIO):
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing {mode!r}; choose one of {', '.join(PREPROCESS_MODES)}")
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.mode, self.image_size, self.ratio = mode, int(image_size), float(ratio)

    def padded(self, image: Image.Image) -> Image.Image:
        """The RGB image after this mode's padding, before resizing."""
        image = to_rgb(image)
        w, h = image.size
        if self.mode == "targetpad":
            return pad(image, *targetpad_amounts(w, h, self.ratio))
        if self.mode == "squarepad":
            return pad(image, *squarepad_amounts(w, h))
        return image

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = self.padded(image)
        image = TF.resize(image, self.image_size, interpolation=TF.InterpolationMode.BICUBIC)
        image = TF.center_crop(image, self.image_size)
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


def make_preprocess(mode: str = "targetpad", image_size: int = 224, ratio: float = TARGETPAD_RATIO) -> Callable:
    """The preprocessing callable for ``mode`` at the model's input size."""
    return Preprocess(mode, image_size, ratio)
