"""Files from clients: the one rule by which the app reads (and deletes) what a stranger sends.

Anyone can call any event of a public Gradio app, with any payload, by ``fn_index``; a payload
names a file by its server path. So a path is used only when all of this holds (``accept_upload``):

* it is absolute and names a regular file, not a symlink, a folder or a device;
* resolved, it lies inside Gradio's upload folder (where Gradio writes what ``/upload`` receives);
* when the app is running, Gradio recorded it as uploaded (``Blocks.upload_file_set``).

Anything else is refused with one message that names no path and says nothing about whether the
path exists; nothing is read or touched. An accepted file is read into memory (it is at most
``max_file_size``, see ``cir_demo.ui.limits``) and deleted at once, with its folder when empty:
the app keeps only the photo's features. A link is never fetched for a client. The image header
is checked (pixel count, aspect) before any pixel is decoded, by the library.

``UploadPhoto`` is ``gr.UploadButton`` whose preprocessing applies this rule and hands the handler
the upload's bytes (on a phone it offers the camera too).
"""

from __future__ import annotations

import copy
import logging
import os
import stat
from pathlib import Path
from typing import Optional

import gradio as gr
from gradio_client import utils as client_utils

from cir_demo.ui.limits import MAX_UPLOAD_BYTES

log = logging.getLogger(__name__)

REFUSED = "This image was not uploaded to this server; please upload it again."


class UploadRefused(ValueError):
    """A client named a file or URL the app does not read; the message names no path."""


def upload_folder() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def _recorded_uploads() -> Optional[set]:
    """The files Gradio's ``/upload`` route wrote for the running app (None outside a request)."""
    from gradio.context import LocalContext

    blocks = LocalContext.blocks.get(None)
    return getattr(blocks, "upload_file_set", None) if blocks is not None else None


def accept_upload(path) -> Path:
    """``path`` resolved, if it is a file Gradio wrote into its upload folder; else ``UploadRefused``."""
    if not isinstance(path, (str, os.PathLike)) or not str(path) or "\0" in str(path):
        raise UploadRefused(REFUSED)
    given = Path(path)
    if not given.is_absolute():
        raise UploadRefused(REFUSED)
    try:
        mode = os.lstat(given).st_mode  # lstat: a symlink is refused, wherever it points
        real = given.resolve(strict=True)  # a symlinked folder on the way is resolved, then judged
    except (OSError, RuntimeError, ValueError):
        raise UploadRefused(REFUSED) from None
    if not stat.S_ISREG(mode) or upload_folder() not in real.parents:
        raise UploadRefused(REFUSED)
    recorded = _recorded_uploads()
    if recorded is not None and str(given) not in recorded and str(real) not in recorded:
        raise UploadRefused(REFUSED)
    return real


def discard(path: Path) -> None:
    """Delete an accepted upload and, when it is empty, the folder Gradio made for it."""
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not delete an upload: %s", err.strerror)
        return
    parent, root = path.parent, upload_folder()
    if parent != root and root in parent.parents:
        try:
            parent.rmdir()  # only if empty: another upload of the same bytes may share it
        except OSError:
            pass


def take_upload(path) -> bytes:
    """The bytes of an accepted upload; the file is deleted before this returns (refused: untouched)."""
    real = accept_upload(path)
    try:
        if real.stat().st_size > MAX_UPLOAD_BYTES:
            raise UploadRefused(f"the image is larger than {MAX_UPLOAD_BYTES // 2 ** 20} MB")
        return real.read_bytes()
    except OSError:
        raise UploadRefused(REFUSED) from None
    finally:
        discard(real)


def payload_bytes(payload) -> Optional[bytes]:
    """The bytes of the file a client names in a ``FileData`` payload, by the rule above (None: no file)."""
    if payload is None:
        return None
    path = getattr(payload, "path", None)
    if isinstance(path, str) and client_utils.is_http_url_like(path):
        raise UploadRefused("images are accepted as uploaded files, not as links")
    return take_upload(path)


_API_INFO: dict = {}  # file_count -> the upload's API schema, made once


class UploadPhoto(gr.UploadButton):
    """``gr.UploadButton`` for one image, handing its handler the upload's bytes by the rule above."""

    def get_block_name(self) -> str:
        return "uploadbutton"

    def api_info(self) -> dict:
        # Gradio asks three times for every new session (its per-session copy of the page config),
        # and pydantic rebuilds the schema each time: half of a new session's set-up cost.
        if self.file_count not in _API_INFO:
            _API_INFO[self.file_count] = super().api_info()
        return copy.deepcopy(_API_INFO[self.file_count])

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        # Gradio would download a URL a client names into its cache before preprocessing.
        if isinstance(url_or_file_path, str) and client_utils.is_http_url_like(url_or_file_path):
            raise gr.Error("images are accepted as uploaded files, not as links", print_exception=False)
        return await super().async_move_resource_to_block_cache(url_or_file_path)

    def preprocess(self, payload) -> Optional[bytes]:
        if isinstance(payload, list) or type(payload).__name__ == "ListFiles":  # one photo at a time
            files = list(payload.root if hasattr(payload, "root") else payload)
            payload = files[0] if len(files) == 1 else None
            if payload is None:
                raise gr.Error("upload one photo at a time", print_exception=False)
        try:
            return payload_bytes(payload)
        except UploadRefused as err:
            raise gr.Error(str(err), print_exception=False) from None
