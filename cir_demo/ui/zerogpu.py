"""Hugging Face ZeroGPU support: a no-op anywhere else.

On ZeroGPU a GPU is attached only while a function decorated with ``spaces.GPU`` runs. Models and
galleries may be placed on CUDA at import (ZeroGPU defers the transfer); no other CUDA work may
happen then, which is why the text tower captures its CUDA graphs lazily, on first use.

Every model call goes through the catalog, so the app wraps the catalog's model-running methods
once (``gpu_catalog``): any handler or endpoint, present or future, is covered by construction.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable, Optional

# The catalog methods that run a model (text tower, Combiner, image tower, batch ranking).
MODEL_CALLS = ("search", "compare", "rank_split", "upload_features", "encode_upload", "curated", "explain",
               "warm_up")


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


class GpuCatalog:
    """The catalog with every model-running method wrapped by ``gpu``; everything else passes through."""

    def __init__(self, catalog):
        self._catalog = catalog
        for name in MODEL_CALLS:
            setattr(self, name, gpu(getattr(catalog, name)))

    def __getattr__(self, name: str):
        return getattr(self._catalog, name)


def gpu_catalog(catalog):
    """``catalog`` itself off ZeroGPU; on ZeroGPU a ``GpuCatalog`` over it."""
    return GpuCatalog(catalog) if on_zerogpu() else catalog
