"""What can be had without a network: the error raised when it cannot, and a quick reachability check.

Weights (``cir_demo.model.factory``) and tokenizers (``cir_demo.model.tokenizers``) both fail fast
and say what to do, rather than letting a download hang offline.
"""

from __future__ import annotations

import socket
from typing import Optional
from urllib.parse import urlparse


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights (or a tokenizer) cannot be had here: no network, not cached, unknown."""


def unreachable_reason(url: str, timeout: float = 3.0) -> Optional[str]:
    """None when ``url``'s host answers on port 443 within ``timeout`` s, else why not (fast fail)."""
    host = urlparse(url).hostname or url
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return None
    except OSError as err:
        return f"{host} is unreachable ({err})"
