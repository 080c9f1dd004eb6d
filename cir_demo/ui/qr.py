"""QR codes of the app's public URL, made in memory: nothing is written to disk, and only a few
distinct URLs are remembered (a client controls the Host header, so the key must be bounded)."""

from __future__ import annotations

import base64
import functools
import io

import qrcode
from qrcode.constants import ERROR_CORRECT_M


def qr_image(url: str, *, box_size: int = 12, border: int = 4):
    """A black-on-white PIL image encoding ``url`` (medium error correction survives print wear)."""
    code = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=box_size, border=border)
    code.add_data(url)
    code.make(fit=True)
    return code.make_image(fill_color="black", back_color="white").get_image().convert("RGB")


@functools.lru_cache(maxsize=16)
def qr_png(url: str) -> bytes:
    """The QR code of ``url`` as PNG bytes (the last 16 URLs are remembered)."""
    buffer = io.BytesIO()
    qr_image(url).save(buffer, "PNG")
    return buffer.getvalue()


def qr_data_url(url: str) -> str:
    return "data:image/png;base64," + base64.b64encode(qr_png(url)).decode("ascii")


def share_html(url: str | None) -> str:
    """The QR code of ``url`` inline (a data: URL) with a PNG download link; "" without a URL."""
    if not url:
        return ""
    src = qr_data_url(url)
    return (f'<img src="{src}" alt="QR code of this app" style="width:260px;max-width:100%;image-rendering:pixelated">'
            f'<p><a href="{src}" download="cir-demo-qr.png">QR code as a PNG, for posters</a></p>')
