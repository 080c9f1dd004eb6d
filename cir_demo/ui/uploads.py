"""Uploaded photos: read once, then deleted; the app keeps only their features, in memory.

Gradio writes every upload into its temp folder before a handler runs. ``read_upload`` decodes the
file with the library's checks (decompression bombs, broken files) and deletes it, and the folder
Gradio made for it, whatever happens; ``UploadImage`` hands the handler that path without opening
the file first (Gradio's own image preprocessing would decode it, unguarded, before we could).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import gradio as gr
from PIL import Image, ImageOps

from cir_demo.pipeline.encode import open_image

log = logging.getLogger(__name__)


def upload_folder() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def discard(path: str | os.PathLike) -> None:
    """Delete an uploaded file and, when it is inside Gradio's upload folder, its now-empty folder."""
    path = Path(path)
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not delete upload %s: %s", path, err)
        return
    parent, root = path.parent.resolve(), upload_folder()
    if parent != root and root in parent.parents:
        try:
            parent.rmdir()  # only if empty: another upload of the same bytes may share it
        except OSError:
            pass


def read_upload(path: str | os.PathLike) -> Image.Image:
    """The upload as an upright RGB image (EXIF orientation applied); the file is gone afterwards."""
    try:
        image = open_image(path)
        image = ImageOps.exif_transpose(image) or image
        return image.convert("RGB") if image.mode != "RGB" else image
    finally:
        discard(path)


class UploadImage(gr.Image):
    """``gr.Image(type="filepath")`` that passes the uploaded file's path on without decoding it."""

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.path:
            return str(payload.path)
        return super().preprocess(payload)  # a data: URL (pasted image) is written to a file first
