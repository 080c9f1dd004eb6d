"""QR codes of the app's public URL, as PNG files for the page and for posters."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import qrcode
from qrcode.constants import ERROR_CORRECT_M

from cir_demo.config.files import atomic_write


def qr_image(url: str, *, box_size: int = 12, border: int = 4):
    """A black-on-white PIL image encoding ``url`` (medium error correction survives print wear)."""
    code = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=box_size, border=border)
    code.add_data(url)
    code.make(fit=True)
    return code.make_image(fill_color="black", back_color="white").get_image().convert("RGB")


def qr_png(url: str, folder: str | Path | None = None) -> Path:
    """Write the QR code of ``url`` to a PNG named by its hash (same URL, same file) and return it."""
    folder = Path(folder or Path(tempfile.gettempdir()) / "cir_demo_qr")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"qr-{hashlib.sha1(url.encode()).hexdigest()[:12]}.png"
    if not path.is_file():  # written aside, then renamed: concurrent first visits never see half a file
        atomic_write(path, lambda tmp: qr_image(url).save(tmp, "PNG"))
    return path
