"""Batch encoding of images and captions with a ``ClipModel`` (read -> preprocess -> encode).

Used by indexing, evaluation and training-time feature caches. Images are decoded and
preprocessed in DataLoader workers; encoding runs under ``no_grad`` with autocast on CUDA.

Bad input raises this library's errors only: :class:`ImageReadError` (a file or upload that is
not a usable image, naming it), its subclass :class:`ImageShapeError` (no pixels, or an absurd
aspect ratio) and :class:`EncodeError` (the model returned NaN / inf features). An image that
fails inside a DataLoader worker is reported with its own message, not torch's wrapped traceback.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Callable, Iterable, Optional, Sequence, Union

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from cir_demo.data.transforms import ImageReadError, ImageShapeError, check_size
from cir_demo.model.clip import ClipModel

log = logging.getLogger(__name__)

__all__ = ["EncodeError", "ImageFiles", "ImageReadError", "ImageShapeError", "encode_image_files",
           "encode_names", "encode_pil_images", "encode_texts", "open_image", "open_upload"]

# Pillow's default bomb limit (~89 Mpx) warns only; beyond twice that it raises. We refuse
# anything past the warning threshold: no product photo needs more.
Image.MAX_IMAGE_PIXELS = 89_478_485


class EncodeError(ValueError):
    """The model produced NaN or infinite features (its weights are broken, or fp16 overflowed)."""


def open_image(source: Union[str, Path, IO[bytes]], *, label: Optional[str] = None,
               draft: Optional[int] = None) -> Image.Image:
    """Open and fully decode an image file (a path or a binary file object).

    Every failure is an ``ImageReadError`` naming the file (or ``label``, e.g. "the uploaded file",
    where the path is nobody's business): not an image, truncated, an unknown format, a
    decompression bomb (refused from its header, before decoding), or a size that cannot be a
    photo (``ImageShapeError``, also from the header). Animated images give their first frame. The
    pixels are decoded once and not copied (an 89 Mpx image costs its ~360 MB once, not twice).
    ``draft``: decode a JPEG reduced by DCT scaling to no less than ``draft`` pixels a side.
    """
    name = label or (source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<image data>"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, don't just warn
            if isinstance(source, (str, os.PathLike)):
                with open(source, "rb") as handle:  # ours to close; the decoded pixels outlive it
                    return _decode(handle, draft)
            return _decode(source, draft)
    except ImageReadError as err:
        raise type(err)(f"cannot use image {name}: {err}") from None
    except UnidentifiedImageError:  # its message carries the file object's repr: say it plainly
        raise ImageReadError(f"cannot read image {name}: not an image in a format this server reads") from None
    except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, MemoryError, struct.error...
        raise ImageReadError(f"cannot read image {name}: {err or type(err).__name__}") from None


# Photos from strangers: the formats phones and browsers make, and costs bounded before decoding.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")  # the JPEG opener also reads MPO (multi-picture) files
MAX_UPLOAD_PIXELS = 40_000_000  # non-JPEG images decode whole: ~160 MB as RGBA at this size
MAX_JPEG_SCANS = 64             # a progressive photo has about 10; each extra scan is a pass over every block


def open_upload(data: bytes, *, min_side: int, label: str = "the uploaded file") -> Image.Image:
    """An uploaded photo's bytes as an upright RGB image, decoded at about the size the model needs.

    Refused with ``ImageReadError`` before any pixel is decoded: a format other than JPEG, PNG,
    WebP or GIF; a JPEG with more than ``MAX_JPEG_SCANS`` scans (each costs a pass over the whole
    image: a few bytes can cost minutes); a JPEG above Pillow's bomb limit (89.5 Mpx) or another
    format above ``MAX_UPLOAD_PIXELS``; an absurd aspect ratio. A JPEG is decoded reduced by DCT
    scaling to no less than ``2 * min_side`` on each side (the model sees ``min_side`` pixels).
    """
    if data[:2] == b"\xff\xd8" and data.count(b"\xff\xda") > MAX_JPEG_SCANS:  # SOS markers: 0xFF is stuffed in scans
        raise ImageReadError(f"cannot use image {label}: a JPEG with more than {MAX_JPEG_SCANS} scans is not a photo")
    Image.init()  # every format plugin registered (WebP is not by default)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
            check_size(*image.size)
            if image.format not in ("JPEG", "MPO") and image.size[0] * image.size[1] > MAX_UPLOAD_PIXELS:
                raise ImageShapeError(f"{image.size[0]} x {image.size[1]} pixels is more than a photo needs "
                                      f"(at most {MAX_UPLOAD_PIXELS // 1_000_000} Mpx unless it is a JPEG)")
            if image.format in ("JPEG", "MPO"):
                image.draft("RGB", (2 * min_side, 2 * min_side))
            image.load()
            if getattr(image, "is_animated", False):
                image.seek(0)
    except ImageReadError as err:
        raise type(err)(f"cannot use image {label}: {err}") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {label}: not a JPEG, PNG, WebP or GIF image") from None
    except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, MemoryError, struct.error...
        raise ImageReadError(f"cannot read image {label}: {err or type(err).__name__}") from None
    ImageOps.exif_transpose(image, in_place=True)  # in place: a copy would double a large photo's cost
    return image.convert("RGB") if image.mode != "RGB" else image


def _decode(handle: IO[bytes], draft: Optional[int] = None) -> Image.Image:
    image = Image.open(handle)
    check_size(*image.size)  # from the header: nothing decoded yet
    if draft and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (draft, draft))
    image.load()
    if getattr(image, "is_animated", False):
        image.seek(0)
        return image.convert("RGBA")
    return image


def check_finite(features: torch.Tensor, what: str) -> torch.Tensor:
    """``features`` unchanged if all finite, else an ``EncodeError`` saying how many rows are not."""
    bad = ~torch.isfinite(features).all(dim=-1) if features.numel() else torch.zeros(0, dtype=torch.bool)
    if bool(bad.any()):
        raise EncodeError(f"the model returned NaN or infinite features for {int(bad.sum())} of {len(bad)} "
                          f"{what}; its weights are broken (NaN / inf) or overflow in fp16")
    return features


class ImageFiles(Dataset):
    """(preprocessed tensor, row) for a list of image paths."""

    def __init__(self, paths: Sequence[Union[str, Path]], preprocess: Callable):
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        return self.preprocess(open_image(self.paths[row])), row


class _CheckedImageFiles(ImageFiles):
    """``ImageFiles`` that hands an unreadable image's error back as data, so that it reaches the
    main process as our own exception rather than torch's "Caught ... in DataLoader worker"."""

    def __getitem__(self, row: int):
        try:
            return super().__getitem__(row) + (None,)
        except ImageReadError as err:
            return None, row, err


def _collate_checked(items: list) -> tuple:
    errors = [error for _, _, error in items if error is not None]
    if errors:
        return None, None, errors[0]
    return torch.stack([pixels for pixels, _, _ in items]), torch.tensor([row for _, row, _ in items]), None


def autocast_for(device: torch.device):
    """fp16 autocast on CUDA (the paper's AMP); nothing on CPU, where fp32 is the fast path."""
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()


@torch.no_grad()
def encode_image_files(clip: ClipModel, paths: Sequence[Union[str, Path]], *, batch_size: int = 64,
                       num_workers: int = 0, progress: bool = False, desc: str = "images") -> torch.Tensor:
    """Raw image features (N, D) float32 on the CPU, row-aligned with ``paths``."""
    out = torch.empty(len(paths), clip.feature_dim)
    if not len(paths):
        return out
    loader = DataLoader(_CheckedImageFiles(paths, clip.preprocess), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate_checked,
                        pin_memory=clip.device.type == "cuda", persistent_workers=False)
    for images, rows, error in _maybe_tqdm(loader, progress, desc):
        if error is not None:
            raise error
        with autocast_for(clip.device):
            feats = clip.encode_image(images.to(clip.device, non_blocking=True))  # (B, D)
        out[rows] = check_finite(feats.float().cpu(), "images")
    return out


@torch.no_grad()
def encode_pil_images(clip: ClipModel, images: Iterable[Image.Image]) -> torch.Tensor:
    """Raw image features (B, D) float32 for in-memory PIL images (e.g. an upload).

    An image that is not usable raises ``ImageReadError`` / ``ImageShapeError``; none at all,
    ``ImageReadError`` too.
    """
    pixels = [clip.preprocess(image) for image in images]  # (3, S, S) each; refuses bad images
    if not pixels:
        raise ImageReadError("no image given")
    with autocast_for(clip.device):
        feats = clip.encode_image(torch.stack(pixels)).float()
    return check_finite(feats, "images")


@torch.no_grad()
def encode_texts(clip: ClipModel, texts: Sequence[str], *, batch_size: int = 256, progress: bool = False,
                 desc: str = "captions") -> torch.Tensor:
    """Raw text features (N, D) float32 on the CPU, row-aligned with ``texts``."""
    chunks = []
    starts = range(0, len(texts), batch_size)
    for start in _maybe_tqdm(starts, progress, desc):
        with autocast_for(clip.device):
            chunks.append(check_finite(clip.encode_text(list(texts[start:start + batch_size])).float().cpu(),
                                       "captions"))
    return torch.cat(chunks) if chunks else torch.empty(0, clip.feature_dim)


def _maybe_tqdm(iterable, progress: bool, desc: str):
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="batch", leave=False)


def encode_names(clip: ClipModel, names: Sequence[str], path_of: Callable[[str], Path], *,
                 batch_size: int = 64, num_workers: int = 0, progress: bool = False,
                 desc: Optional[str] = None) -> dict[str, torch.Tensor]:
    """{name: raw feature (D,)} for images named ``names`` (duplicates encoded once)."""
    unique = list(dict.fromkeys(names))
    feats = encode_image_files(clip, [path_of(n) for n in unique], batch_size=batch_size,
                               num_workers=num_workers, progress=progress, desc=desc or "images")
    return dict(zip(unique, feats))
