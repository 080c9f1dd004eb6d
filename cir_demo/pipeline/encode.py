"""Batch encoding of images and captions with a ``ClipModel`` (read -> preprocess -> encode).

Used by indexing, evaluation and training-time feature caches. Images are decoded and
preprocessed in DataLoader workers; encoding runs under ``no_grad`` with autocast on CUDA.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cir_demo.model.clip import ClipModel

log = logging.getLogger(__name__)

# Pillow's default bomb limit (~89 Mpx) warns only; beyond twice that it raises. We refuse
# anything past the warning threshold: no product photo needs more.
Image.MAX_IMAGE_PIXELS = 89_478_485


class ImageReadError(ValueError):
    """An image file could not be decoded; the message names it."""


def open_image(path: Union[str, Path]) -> Image.Image:
    """Open and fully decode an image, turning decoder errors into ``ImageReadError``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, don't just warn
            with Image.open(path) as image:
                image.load()
                return image.copy() if not getattr(image, "is_animated", False) else _first_frame(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from None


def _first_frame(image: Image.Image) -> Image.Image:
    image.seek(0)
    return image.convert("RGBA")


class ImageFiles(Dataset):
    """(preprocessed tensor, row) for a list of image paths."""

    def __init__(self, paths: Sequence[Union[str, Path]], preprocess: Callable):
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        return self.preprocess(open_image(self.paths[row])), row


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
    loader = DataLoader(ImageFiles(paths, clip.preprocess), batch_size=batch_size, num_workers=num_workers,
                        pin_memory=clip.device.type == "cuda", persistent_workers=False)
    for images, rows in _maybe_tqdm(loader, progress, desc):
        with autocast_for(clip.device):
            feats = clip.encode_image(images.to(clip.device, non_blocking=True))  # (B, D)
        out[rows] = feats.float().cpu()
    return out


@torch.no_grad()
def encode_pil_images(clip: ClipModel, images: Iterable[Image.Image]) -> torch.Tensor:
    """Raw image features (B, D) float32 for in-memory PIL images (e.g. an upload)."""
    batch = torch.stack([clip.preprocess(image) for image in images])
    with autocast_for(clip.device):
        return clip.encode_image(batch).float()


@torch.no_grad()
def encode_texts(clip: ClipModel, texts: Sequence[str], *, batch_size: int = 256, progress: bool = False,
                 desc: str = "captions") -> torch.Tensor:
    """Raw text features (N, D) float32 on the CPU, row-aligned with ``texts``."""
    chunks = []
    starts = range(0, len(texts), batch_size)
    for start in _maybe_tqdm(starts, progress, desc):
        with autocast_for(clip.device):
            chunks.append(clip.encode_text(list(texts[start:start + batch_size])).float().cpu())
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
