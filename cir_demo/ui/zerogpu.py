"""Hugging Face ZeroGPU support: a no-op anywhere else.

On ZeroGPU a GPU is attached only while a function decorated with ``spaces.GPU`` runs. Models and
galleries may be placed on CUDA at import (ZeroGPU defers the transfer); no other CUDA work may
happen then, which is why the text tower captures its CUDA graphs lazily, on first use. Handlers
that touch the GPU are wrapped with :func:`gpu`.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable, Optional


def on_zerogpu() -> bool:
    """True on a ZeroGPU Space (the ``spaces`` package is installed and the Space says so)."""
    return importlib.util.find_spec("spaces") is not None and os.environ.get("SPACES_ZERO_GPU", "") != ""


def serving_device() -> Optional[str]:
    """"cuda" on ZeroGPU (where ``torch.cuda.is_available`` may be False at import); else the default."""
    return "cuda" if on_zerogpu() else None


def gpu(fn: Callable) -> Callable:
    """``spaces.GPU(fn)`` on ZeroGPU, ``fn`` itself elsewhere."""
    if not on_zerogpu():
        return fn
    import spaces

    return spaces.GPU(fn)
